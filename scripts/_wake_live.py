"""The live half of scripts/bench_wake_echo.py (``--live N``): the App on real devices in the loudspeaker room.

The App as a kiosk runs it: ``[wake] word``, ``echo_cancel = "on"`` (half duplex), speech output on, PortAudio
devices on a private PulseAudio server, the time-indexed room of tests/support/room.py (60 ms, RT60 0.45 s, the
echo as loud as the user) between the assistant's sink and the microphone, espeak-ng speaking the tiny
random-weight model's long replies (noise text). The visitor's wake word is mixed into the microphone by the
room's ``say`` (its DAC time is when it starts), in the renderings the detector hears alone in quiet.

- onset: a fresh App (a fresh canceller) per wake word, said 1 s into its first reply;
- first (``--first K``): a fresh App per wake word, said once the canceller reports "converged" and 3 s into its
  first reply (AEC3 suppressing hard by then, the linear branch still learning the room);
- converged: one App, a reply per wake word, said once the canceller reports "converged" and ≥ 3 s into the
  reply (3-6 s);
- self: the assistant's reply says the wake word 8 times (a FAKE backend: the tiny model cannot be made to
  say a chosen sentence; the rest is the App's real path), in the converged App: any stop is false.

A stop counts when the turn gets exactly one ``interrupted`` (reason "wake") after the wake word started and the
reply's sound has stopped within 2 s of it; the turn is the number the App gave the bench's typed question (its
``utterance`` event), never a count of the bench's own. Per wake word it also records each detector's highest
probability from the word's start to 1.5 s after its end (``WakeDetector.trace``) and the canceller's state then.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from _benchlib import pump_events
from support.pulse import PulseServer
from support.room import Room, RoomSpec
from support.speech import SR, silence

from voiceassist.backend import ReplyResult, UserTurn

SPEC = RoomSpec(delay_ms=60.0, rt60_s=0.45)
ASK = "Tell me a long story."


class ScriptedReply:
    """FAKE backend for the *self* case: streams a fixed reply (which says the wake word) word by word and
    honours cancel; the tiny random-weight model cannot be made to say a chosen sentence."""

    description = "fake backend saying a fixed reply"

    def __init__(self, text: str) -> None:
        self.text = text

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        out = []
        for w in self.text.split(" "):
            if cancel.is_set():
                break
            on_text(w + " ")
            out.append(w)
            time.sleep(0.01)
        return ReplyResult(" ".join(out), len(out), 0.01, 100.0, 10, interrupted=cancel.is_set())

    def truncate_last_reply(self, spoken_text: str) -> None: ...

    def reset(self) -> None: ...


class Live:
    """One App in the room, its events collected, both wake detectors traced."""

    def __init__(self, cfg: Any, backend: Any) -> None:
        from voiceassist.app import App
        from voiceassist.audio.sources import MicrophoneSource
        from voiceassist.speech import Speaker

        self.speaker = Speaker(cfg.tts, cfg.audio.output_device)
        assert self.speaker.wait_ready(15), "speech worker / output device did not come up"
        self.app = App(cfg, MicrophoneSource(None), backend, speaker=self.speaker)
        wake = self.app.capture.wake
        assert wake is not None and wake.linear is not None, "no linear wake branch (libspeexdsp?)"
        self.wake = wake
        wake.detector.trace, wake.linear.trace = [], []
        self.tap = next(p for p in self.app.capture.processors.processors if type(p).__name__ == "LinearWakeTap")
        self.events: list = []
        self._record()
        self.app.start()

    def _record(self) -> None:
        """Keep what both detectors heard, and the microphone and far end the linear canceller was handed (for
        replaying a run offline): blocks in capture order, each with its capture-clock time."""
        self.rec: dict[str, list] = {"mic": [], "far": [], "lin": [], "aec": []}
        tap, lin, wake = self.tap, self.tap._linear, self.wake
        tap_process, lin_process, wake_process = tap.process, lin.process, wake.process
        now = [0.0]

        def tap_rec(block: Any) -> Any:
            # The linear canceller is handed the tap's carried samples first (FrameCarry.whole): its data start
            # that much before the block's stamp.
            now[0] = float(block.t) - len(tap._frames.samples) / SR
            return tap_process(block)

        def lin_rec(near: np.ndarray, far: np.ndarray) -> np.ndarray:
            out = lin_process(near, far)
            self.rec["mic"].append((now[0], near[: len(out)].copy()))
            self.rec["far"].append((now[0], far[: len(out)].copy()))
            self.rec["lin"].append((now[0], out.copy()))
            return out

        def wake_rec(block: Any) -> Any:
            self.rec["aec"].append((float(block.t), np.asarray(block.samples, np.float32).copy()))
            return wake_process(block)

        tap.process, lin.process, wake.process = tap_rec, lin_rec, wake_rec  # type: ignore[method-assign]

    def save(self, path: Path, rows: list[dict]) -> None:
        """The recording as one array per stream from its first block's time (gaps as zeros), and the rows."""
        out: dict[str, Any] = {}
        for key, blocks in self.rec.items():
            if not blocks:
                continue
            t0 = blocks[0][0]
            n = round((blocks[-1][0] - t0) * SR) + len(blocks[-1][1]) + SR
            x = np.zeros(n, np.float32)
            for t, b in blocks:
                i = round((t - t0) * SR)
                x[i : i + len(b)] = b[: max(0, n - i)]
            out[key], out[key + "_t0"] = x, t0
        out["said"] = np.array([(r["t_said"], r["dur"]) for r in rows if "t_said" in r])
        np.savez_compressed(path, **out)

    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        pump_events(self.app, self.events, seconds, until)

    def ask(self, text: str = ASK) -> int | None:
        """Submit a typed turn; its number as the App gave it (its ``utterance`` event), None if none came in
        10 s. The App numbers every turn it takes, a spoken one after a wake word too, so a bench that counted
        its own submissions lost step with it once such a turn came in between."""
        seen = len(self.of("utterance"))
        self.app.submit_text(text)

        def mine() -> list:
            return [e for e in self.of("utterance")[seen:] if e.text == text]

        self.pump(10, lambda: bool(mine()))
        others = [e for e in self.of("utterance")[seen:] if e.text != text]
        for e in others:  # not the bench's: say so (what came in, how long) rather than lose count silently
            print(f"turn {e.turn}: not the bench's (audio {e.durations} s, text {e.text!r})", flush=True)
        return mine()[0].turn if mine() else None

    def of(self, kind: str, turn: int | None = None) -> list:
        return [e for e in self.events if e.kind == kind and (turn is None or getattr(e, "turn", None) == turn)]

    def heard_for(self, turn: int, seconds: float, converged: bool = False, timeout: float = 60) -> float | None:
        """Pump until ``turn`` has been heard for ``seconds`` (and the canceller converged); its first sound."""

        def ready() -> bool:
            first = self.speaker.first_heard(turn)
            if first is None or not self.speaker.speaking() or time.monotonic() - first < seconds:
                return False
            return not converged or (self.app.echo_state() or {}).get("convergence") == "converged"

        def over() -> bool:  # the tiny model ended this reply sooner
            return bool(self.of("reply_done", turn)) and not self.speaker.speaking()

        self.pump(timeout, lambda: ready() or over())
        return self.speaker.first_heard(turn) if ready() else None

    def peaks(self, start: float, end: float) -> tuple[float, float]:
        """Each detector's highest score over [start, end] (capture clock)."""
        assert self.wake.detector.trace is not None and self.wake.linear is not None
        assert self.wake.linear.trace is not None

        def peak(trace: list[tuple[float, float]]) -> float:
            return max((p for t, p in trace if start <= t <= end), default=0.0)

        return round(peak(self.wake.detector.trace), 3), round(peak(self.wake.linear.trace), 3)

    def close(self) -> None:
        self.app.stop()
        self.speaker.close()


def stop_trial(live: Live, room: Room, turn: int, wav: Path, dur: float, first: float | None) -> dict:
    """Say the wake word over ``turn``'s reply (first heard at ``first``); what came of it."""
    n_wake = len(live.of("wake"))
    state = live.app.echo_state() or {}
    before = room.stats()
    mic = live.app.source.stats
    mic_before = (mic.overflows, mic.dropped_blocks)
    t0 = room.say(wav)
    live.pump(dur + 3.0, lambda: bool(live.of("interrupted", turn)))
    quiet_by = time.monotonic() + 2.0
    live.pump(2.0, lambda: time.monotonic() >= quiet_by or not live.speaker.speaking())
    still = live.speaker.speaking()
    live.pump(1.0)
    after = room.stats()
    # What the room and the microphone lost over the trial (a stall chops the wake word too, not just the echo).
    lost = {k: after[k] - before[k] for k in ("underflows", "missing", "out_reanchors", "in_reanchors")}
    lost["mic_overflows"] = mic.overflows - mic_before[0]
    lost["mic_dropped"] = mic.dropped_blocks - mic_before[1]
    inter = [e for e in live.of("interrupted", turn) if e.t >= t0]
    wakes = live.of("wake")[n_wake:]
    ok = len(inter) == 1 and inter[0].reason == "wake" and not still and len(live.of("interrupted", turn)) == 1
    aec, lin = live.peaks(t0, t0 + dur + 1.5)
    return {
        "turn": turn,
        "ok": ok,
        "after_s": None if first is None else round(t0 - first, 1),
        "wakes": [(round(w.t - t0, 2), w.action) for w in wakes],
        "interrupted": [(round(e.t - t0, 2), e.reason) for e in live.of("interrupted", turn)],
        "still_speaking": still,
        "p_aec": aec,
        "p_linear": lin,
        "echo": {k: state.get(k) for k in ("convergence", "erle_db", "delay_ms", "realigned", "wake_linear")},
        "tap_realigned": live.tap.realigned,
        "lost": lost,
        "t_said": t0,
        "dur": dur,
    }


def wake_wavs(wakes: list[np.ndarray], tmp: Path) -> list[tuple[Path, float]]:
    out = []
    for i, w in enumerate(wakes):
        path = tmp / f"live_wake{i}.wav"
        sf.write(path, np.concatenate([w, silence(0.2)]), SR)
        out.append((path, len(w) / SR))
    return out


def fresh_trial(
    cfg: Any, session: Any, room: Room, wav: tuple[Path, float], heard_s: float, converged: bool, save: Path
) -> dict:
    """A fresh App (a fresh canceller); the wake word ``heard_s`` into its first reply (and, if ``converged``,
    once the canceller says so); the trial's row, and the run's recording in ``save``."""
    session.reset()
    live = Live(cfg, session)
    row: dict = {"ok": False}
    try:
        first_turn = live.ask()
        if first_turn is None or live.heard_for(first_turn, heard_s, converged) is None:
            row = {"turn": first_turn, "ok": False, "why": "reply not heard, or not converged in 60 s"}
        else:
            row = stop_trial(live, room, first_turn, *wav, live.speaker.first_heard(first_turn))
    finally:
        live.close()
        live.save(save, [row])
    return row


def run_live(
    word: str,
    wakes: list[np.ndarray],
    names: list[str],
    own_text: str,
    n: int,
    n_onset: int,
    tmp: Path,
    n_first: int = 0,
) -> dict:
    """``n`` converged stops, ``n_onset`` onset stops, ``n_first`` stops 3 s into a fresh App's converged first
    reply, and the self case; rows of dicts."""
    import sounddevice as sd

    from voiceassist.config import Config, with_overrides
    from voiceassist.openers import open_backend

    cfg = with_overrides(
        Config(),
        {
            "model.name": "tiny",
            "generation.temperature": 0.0,
            "generation.max_new_tokens": 400,
            "tts.enabled": True,
            "tts.rate": 110,
            "audio.echo_cancel": "on",
            "wake.word": word,
            "wake.listen_s": 2.0,
            "wake.follow_up_s": 0.0,
        },
    )
    wavs = wake_wavs(wakes, tmp)
    rng = random.Random(13)
    res: dict = {"onset": [], "first": [], "converged": [], "self": {}, "room": {}}
    pulse = PulseServer().start()
    try:
        sd._terminate()
        sd._initialize()
        pulse.load_sink("va_mic")
        pulse._run("pactl", "set-default-source", "va_mic.monitor")  # before the room: it moves default streams
        room = Room(pulse, "va_sink", "va_mic", SPEC)
        try:
            session = open_backend(cfg)
            # A fresh App (canceller) each: the wake word 1 s into its first reply (onset), or 3 s in once
            # converged (first).
            for case, count, heard_s, converged in (("onset", n_onset, 1.0, False), ("first", n_first, 3.0, True)):
                for k in range(count):
                    wav, save = wavs[k % len(wavs)], tmp / f"live_{case}{k}.npz"  # one per trial, as before
                    row = fresh_trial(cfg, session, room, wav, heard_s, converged, save)
                    row["voice"] = names[k % len(wavs)]
                    print(f"{case} {k + 1}/{count}: {row}", flush=True)
                    res[case].append(row)
            session.reset()
            live = Live(cfg, session)
            try:
                asked, k = 0, 0
                while k < n and asked < 2 * n:
                    asked += 1
                    turn = live.ask()
                    if turn is None:
                        res["skipped"] = res.get("skipped", 0) + 1
                        print("a typed turn got no utterance event in 10 s: no trial", flush=True)
                        continue
                    first = live.heard_for(turn, rng.uniform(3.0, 6.0), converged=True)
                    if first is None:  # the reply was shorter (the tiny model ended it) or not converged: no trial
                        res["skipped"] = res.get("skipped", 0) + 1
                        live.app.cancel()
                        live.pump(60, lambda t=turn: bool(live.of("reply_done", t)) and not live.speaker.speaking())
                        # What the reply was (a run once went silent for 22 turns with nothing else said): its
                        # length, whether it was cut, and the last errors of this turn or of none.
                        done = live.of("reply_done", turn)
                        said = (
                            f"reply {done[-1].n_tokens} tokens, {len(done[-1].text)} chars"
                            f"{', interrupted' if done[-1].interrupted else ''}"
                            if done
                            else "no reply_done"
                        )
                        errors = [e.message for e in live.of("error") if getattr(e, "turn", None) in (None, turn)]
                        state = live.app.echo_state()
                        print(f"turn {turn}: no trial ({said}; errors {errors[-3:]}; {state})", flush=True)
                        continue
                    row = stop_trial(live, room, turn, *wavs[k % len(wavs)], first)
                    row["voice"] = names[k % len(wavs)]
                    k += 1
                    print(f"converged {k}/{n}: {row}", flush=True)
                    res["converged"].append(row)
                    if not row["ok"]:  # not stopped: end it (Ctrl-C) before the next reply
                        live.app.cancel()
                    live.pump(60, lambda t=turn: bool(live.of("reply_done", t)) and not live.speaker.speaking())
                    live.pump(0.5)
                res["converged_state"] = live.app.echo_state()
            finally:
                live.close()
                live.save(tmp / "live_converged.npz", res["converged"])
                print(f"recordings in {tmp}", flush=True)
            res["self"] = self_case(cfg, own_text, wavs)
            res["room"] = room.stats()
        finally:
            room.close()
    finally:
        pulse.stop()
    return res


def self_case(cfg: Any, own_text: str, wavs: list) -> dict:
    """The reply says the wake word: over one converged canceller (a story first), then the scripted reply."""
    fake = ScriptedReply(own_text)
    live = Live(cfg, fake)
    try:
        fake.text = " ".join(["Once upon a time there was a little village by the sea."] * 6)
        story = live.ask() or 1
        live.heard_for(story, 3.0, converged=True)
        live.pump(90, lambda: bool(live.of("reply_done", story)) and not live.speaker.speaking())
        state = live.app.echo_state()
        n_wake, n_stops = len(live.of("wake")), len(live.of("interrupted"))
        fake.text = own_text
        t0 = time.monotonic()
        own = live.ask() or story + 1
        live.pump(5, lambda: live.speaker.first_heard(own) is not None)
        live.pump(120, lambda: bool(live.of("reply_done", own)) and not live.speaker.speaking())
        live.pump(1.5)
        aec, lin = live.peaks(t0, time.monotonic())
        return {
            "n": 8,
            "wakes": len(live.of("wake")) - n_wake,
            "stops": len(live.of("interrupted")) - n_stops,  # of any turn: each one is false here
            "spoken": live.speaker.spoken_text(own)[:60],
            "p_aec": aec,
            "p_linear": lin,
            "echo_before": state,
        }
    finally:
        live.close()
