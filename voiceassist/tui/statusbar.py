"""The status bar: what it shows (``StatusModel``, updated from events and commands) and its two lines.

Line 1: mode, state or the push-to-talk recording timer, the input level meter (or the silence warning), the
last turn's latency and speed. Line 2: the tiny model's label, the model and the input device. Both fit any
width: shorter spellings first, then names shortened with an ellipsis, then cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prompt_toolkit.utils import get_cwidth

from voiceassist import events as ev
from voiceassist.events import AssistantState
from voiceassist.tui.view import Fragments, char_width, safe

METER_LO_DB, METER_HI_DB = -60.0, 0.0  # dBFS range of the live input meter
STATE_LABELS = {
    "starting": "starting",
    AssistantState.LISTENING: "listening",
    AssistantState.WAITING_FOR_WAKE: "waiting for wake word",
    AssistantState.HEARING: "hearing speech",
    AssistantState.RECORDING: "recording",
    AssistantState.THINKING: "thinking",
    AssistantState.SPEAKING: "speaking",
    AssistantState.MUTED: "muted",
    AssistantState.DEVICE_LOST: "device lost",
    "idle": "idle",
    AssistantState.STOPPED: "stopped",
    "ended": "input ended",
}


def level_bar(dbfs: float | None, cells: int = 10) -> str:
    """The live input meter: ``cells`` characters, filled in proportion to the level between -60 and 0 dBFS."""
    if dbfs is None or math.isnan(dbfs):
        return "·" * cells
    x = (min(max(dbfs, METER_LO_DB), METER_HI_DB) - METER_LO_DB) / (METER_HI_DB - METER_LO_DB)
    n = int(round(x * cells))
    return "█" * n + "░" * (cells - n)


@dataclass
class StatusModel:
    """What the status bar shows; updated from events and commands."""

    mode: str = "handsfree"
    state: str = "starting"
    detail: str = ""
    dbfs: float | None = None
    silent_s: float = 0.0
    silence_warning_s: float = 5.0
    model: str = ""
    device: str = ""
    tiny: bool = False
    latency_ms: float | None = None  # end of speech → first token, last turn
    voice_ms: float | None = None  # end of speech → first sound of the reply, last spoken turn
    ttft_ms: float | None = None  # turn submitted → first token (typed turns have no speech end)
    tok_per_s: float | None = None
    context_tokens: int = 0
    muted: bool = False
    tts: bool = False
    recording_since: float | None = None  # capture clock, s; PTT recording indicator
    busy: bool = False  # a reply is being generated
    hint: str = ""  # transient one-line hint under the conversation

    def apply(self, event: ev.Event) -> bool:
        if isinstance(event, ev.Level):
            self.dbfs, self.silent_s = event.dbfs, event.silent_s
        elif isinstance(event, ev.Status):
            self.state, self.detail = event.state, safe(event.detail)
            # The app explains changes in the detail ("end of input", "only silence recorded", "new
            # conversation", ...): shown on the hint line. Recording time and lost devices are in the bar.
            if (
                self.detail
                and event.state not in (AssistantState.RECORDING, AssistantState.DEVICE_LOST)
                and not (self.detail.startswith("mode "))
            ):
                self.hint = self.detail
            if event.state == AssistantState.MUTED:
                self.muted = True
            elif event.state in (
                AssistantState.LISTENING,
                AssistantState.WAITING_FOR_WAKE,
                AssistantState.HEARING,
                AssistantState.RECORDING,
            ):
                self.muted = False
        elif isinstance(event, ev.UtteranceEvent):
            self.busy = True
        elif isinstance(event, ev.ReplyStart):
            self.busy = True
            self.latency_ms = None if event.latency_s is None else event.latency_s * 1000
            self.ttft_ms = event.ttft_s * 1000
            self.tok_per_s = None
            self.voice_ms = None
        elif isinstance(event, ev.ReplyDone):
            self.busy = False
            self.tok_per_s = event.tok_per_s
            self.context_tokens = event.context_tokens or self.context_tokens
            if event.latency_s is not None:
                self.latency_ms = event.latency_s * 1000
            self.voice_ms = None if event.voice_latency_s is None else event.voice_latency_s * 1000
        else:
            return False
        return True

    def state_label(self) -> str:
        label = STATE_LABELS.get(self.state, self.state.replace("_", " "))
        return f"{label}: {self.detail}" if self.detail and self.state == AssistantState.DEVICE_LOST else label

    def line1(self, width: int, now: float) -> Fragments:
        """Mode, state, recording timer, input meter (or the silence warning), latency and speed; shorter
        spellings are used when the full line does not fit."""
        for compact in (0, 1, 2):
            out = self._line1(now, compact)
            if sum(get_cwidth(t) for _, t in out) <= width:
                break
        return _fit(out, width)

    def _line1(self, now: float, compact: int) -> Fragments:
        mode = "push-to-talk" if self.mode == "ptt" else "hands-free"
        out: Fragments = [("class:status.mode", f" {mode} ")]
        if self.recording_since is not None:
            out.append(("class:status.rec", f" ● REC {max(0.0, now - self.recording_since):4.1f} s "))
        elif self.state == AssistantState.RECORDING:
            out.append(("class:status.rec", f" ● REC {self.detail} "))
        else:
            st = (
                "class:status.warn"
                if self.state in (AssistantState.DEVICE_LOST, AssistantState.MUTED)
                else "class:status.state"
            )
            out.append((st, f" {self.state_label()} "))
        if self.silent_s >= self.silence_warning_s and not self.muted:
            warn = (
                f"no input signal for {self.silent_s:.0f} s: mic muted or dead?"
                if compact < 2
                else f"no input {self.silent_s:.0f} s: mic muted?"
            )
            out.append(("class:status.warn", f" {warn} "))
        else:
            db = "" if self.dbfs is None else f" {max(self.dbfs, -99):3.0f} dB"
            out.append(("class:status", f" mic {level_bar(self.dbfs, (10, 6, 4)[compact])}{db} "))
        figures = []
        if self.latency_ms is not None:
            figures.append(f"latency {self.latency_ms:.0f} ms" if compact < 2 else f"{self.latency_ms:.0f} ms")
        elif self.ttft_ms is not None:
            figures.append(f"first token {self.ttft_ms:.0f} ms" if compact < 2 else f"{self.ttft_ms:.0f} ms")
        if self.voice_ms is not None and compact < 2:
            figures.append(f"voice {self.voice_ms:.0f} ms")
        if self.tok_per_s:
            figures.append(f"{self.tok_per_s:.1f} tok/s" if compact < 2 else f"{self.tok_per_s:.0f} tok/s")
        if figures:
            out.append(("class:status.figures", " " + " · ".join(figures) + " "))
        return out

    def line2(self, width: int) -> Fragments:
        """Model and device, and the tiny model's warning label."""
        out: Fragments = []
        if self.tiny:
            out.append(("class:status.tiny", " tiny random-weight demo model: replies are noise "))
        room = width - sum(get_cwidth(t) for _, t in out) - 2
        # Most important first. When the line is too narrow: drop the tail flags, shorten the model to its
        # name, then shorten the model and device names with an ellipsis (both stay visible).
        model, device = self.model, f"in: {self.device}" if self.device else ""
        flags = ["tts on" if self.tts else "", f"context {self.context_tokens} tokens" if self.context_tokens else ""]

        def joined() -> str:
            return " · ".join(x for x in [model, device, *flags] if x)

        while get_cwidth(joined()) > room and any(flags):
            flags[max(i for i, f in enumerate(flags) if f)] = ""
        if get_cwidth(joined()) > room and " · " in model:
            model = model.split(" · ")[0]
        if get_cwidth(joined()) > room:
            both = max(12, room - 3)  # cells for the two names, " · " between them
            d_cells = min(get_cwidth(device), max(both // 2, both - get_cwidth(model)))
            model, device = _ellipsize(model, both - d_cells), _ellipsize(device, d_cells)
        text = " " + joined() + " "
        out.append(("class:status.info", text))
        return _fit(out, width)


def _ellipsize(text: str, cells: int) -> str:
    if get_cwidth(text) <= cells:
        return text
    out = ""
    for ch in text:
        if get_cwidth(out + ch) > cells - 1:
            break
        out += ch
    return out + "…"


def _fit(frags: Fragments, width: int) -> Fragments:
    """Cut fragments to ``width`` cells, pad with spaces so the bar's background spans the line."""
    out: Fragments = []
    used = 0
    for st, text in frags:
        piece = ""
        for ch in safe(text):  # the last gate: device and model names come from outside too
            w = char_width(ch)
            if used + w > width:
                break
            piece += ch
            used += w
        if piece:
            out.append((st, piece))
        if used >= width:
            break
    if used < width:
        out.append(("class:status", " " * (width - used)))
    return out
