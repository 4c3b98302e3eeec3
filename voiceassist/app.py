"""The assistant: capture → segmenter → model worker → one event stream, with ordered start and stop.

Threads and queues (one direction of flow; the data queues bounded; one stop event, ``_stop``)::

    source.read ─► capture thread ──(_turns)──► model worker ──(events)──► front end (TUI / plain / kiosk)
                   levels, VAD, push-to-talk,     owns the Backend,          │
                   echo suppression, barge-in     streams Token events       └─ speaker.feed (TTS)

The UI's command methods (``submit_text``, ``cancel``, ``ptt_press``, ...) never block: they set flags, put on
a queue without waiting, or hand work to the worker through ``_control``.

Capture clock and latency. Every event's ``t`` is on the capture clock (``events.now()``). For a microphone or
a real-time file, the clock is the wall clock, and ``latency_s`` = first token − end of speech: it includes the
hang-over the segmenter waits before it declares the utterance, as a user experiences it. For a fast file
(``FileSource(realtime=False)``) audio is read as fast as possible, so the block clock is the audio's own time
and runs ahead of (or behind) the wall clock; the hang-over audio arrives at once. There the latency is defined
as (audio time from the end of speech to the block that completed the utterance: the hang-over, exactly what
real time would wait) + (wall time from that moment to the first token: the real processing). Concretely, each
turn carries ``skew`` = block clock − wall clock at the moment the utterance was declared, and the worker's
events of that turn are stamped ``now() + skew``. A fast file is also run in lock step: the capture thread
waits for each turn's reply before it reads on, so no turn waits in a queue behind another (which would measure
queueing, not the pipeline), and the conversation is the same one a person would have had.

Speculative prefill (``model.speculative_prefill``, when the backend has ``speculate(turn, cancel)``): on the
segmenter's SpeechPaused the capture thread hands the utterance-so-far to the idle worker, which prefills it;
SpeechResumed sets that speculation's cancel event (the session rolls it back), and the committed utterance,
identical to the one speculated on, finds its prefill done. With a fast file the audio is paced in real time
from the pause until the turn is decided, so the prefill overlaps the hang-over as it would with a microphone.

Failed turns: a backend failure marked ``retryable`` (see ``voiceassist.model_worker``) keeps the turn and sends
it again with backoff, one ErrorEvent and one Status line per retry; nothing the user said is lost.

Speech output (``speaker``): reply text is fed as it streams. A microphone utterance that overlapped the
assistant's voice (or ``tts.echo_tail_ms`` after it) is dropped, unless it barged in: with ``tts.barge_in``,
``tts.barge_in_ms`` of speech over playback stops the speaker and the generation, the model's history is cut
back to what was heard (``truncate_last_reply``), Interrupted(reason="barge_in") is emitted and the speech
becomes the next turn. The push-to-talk key over playback does the same (reason "ptt").
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

from voiceassist.appbase import (
    EVENTS_MAX,
    MAX_SPEECH_WAIT_S,
    MODES,
    POLL_S,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    TURNS_MAX,
    PendingTurn,
    one_line,
    put_nowait,
    quietly,
    speaking,
)
from voiceassist.backend import Backend
from voiceassist.capture import CaptureThread
from voiceassist.config import Config
from voiceassist.errors import ConfigError
from voiceassist.events import ErrorEvent, Event, Level, Status, Utterance, now
from voiceassist.model_worker import ModelWorker


class App(CaptureThread, ModelWorker):
    """The running assistant. Construct, ``start()``, consume ``events``, ``stop()``.

    ``done`` is set when the input has ended (end of a file) and the last reply is done, unless ``stay``.
    """

    def __init__(
        self, config: Config, source: Any, backend: Backend, *, speaker: Any = None, stay: bool = False
    ) -> None:
        self.config = config
        self.source = source
        self.backend = backend
        self.speaker = speaker
        self.stay = stay
        # Producers: the capture thread (never waits: drops when full), the model worker (waits while full,
        # until stop), the UI's command methods (never wait). Consumer: the front end. Level events are only
        # put while the queue is less than half full, so they are dropped first.
        self.events: queue.Queue[Event] = queue.Queue(maxsize=EVENTS_MAX)
        # Producers: the capture thread (utterances; waits only for a fast file), submit_text / submit_file
        # (UI thread, never waits). Consumer: the model worker.
        self._turns: queue.Queue[PendingTurn] = queue.Queue(maxsize=TURNS_MAX)
        # Producers: UI commands and the capture thread (reset, truncate after barge-in). Consumer: the model
        # worker, between turns. Unbounded but tiny: one item per user command.
        self._control: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()  # the one stop event: every thread returns soon after it is set
        self.done = threading.Event()
        # Called with every event but Level, on the thread that produces it, before it is queued (the
        # --events JSON writer, the kiosk's log): must be quick and thread-safe.
        self.sinks: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()  # guards the counters and the history that several threads change
        self._state_lock = threading.Lock()  # orders Status events (see _refresh_state)
        self._threads: list[threading.Thread] = []
        self._started = False
        self._fast = getattr(source, "realtime", True) is False
        # A file cannot hear the assistant speak: echo suppression and the dead-microphone warning are for devices.
        self._is_mic = not hasattr(source, "path") and not hasattr(source, "files")
        self._mode = config.ui.mode
        self._muted = False
        self._tts_on = speaker is not None and config.tts.enabled
        self._pending = 0  # turns submitted and not yet finished
        self._input_ended = False
        self._turn_numbers = itertools.count(1)
        self._current: tuple[int, threading.Event, list[str]] | None = None  # (turn, cancel, [reason])
        self._history: list[dict[str, Any]] = []
        self._spec: tuple[Utterance, threading.Event] | None = None  # speculative prefill asked for
        self._spec_running: threading.Event | None = None  # cancel of the speculative prefill in progress
        # state flags, combined into one Status by _refresh_state
        self._state: tuple[str, str] = ("", "")
        self._skew = 0.0  # capture clock − wall clock, s: 0 but for a fast file (set at each of its turns)
        self._device_lost = False
        self._hearing = False
        self._busy = False
        self._recording_s: float | None = None
        self._ptt_want = False  # the UI holds the push-to-talk key (read by the capture thread)
        self._speaking_turn = 0  # the turn whose reply the speaker was last fed
        self.echo_ignored = 0  # microphone utterances dropped as the assistant's own voice (a figure for tests)
        self.speculations_started = 0  # speculative prefills the worker began (a figure for tests)
        self.first_sentences_prepared = 0  # speculative first sentences handed to the speaker (tests, benchmarks)
        # A turn whose backend failure is retryable is sent again after these pauses, s (doubling).
        self.retry_first_s = RETRY_FIRST_S
        self.retry_max_s = RETRY_MAX_S
        # A backend that reports its own retries (RemoteBackend.on_status: one line before each pause) shows
        # them in the status line of every front end.
        for b in (backend, getattr(backend, "inner", None)):
            if b is not None and hasattr(b, "on_status") and b.on_status is None:
                b.on_status = self._backend_status
                break

    # ---- public surface: lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Open the source (raises DeviceError / AudioFileError) and start the capture and model threads."""
        if self._started:
            return
        self.source.start()
        self._started = True
        for name, target in (("va-model", self._worker_loop), ("va-capture", self._capture_loop)):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        self._refresh_state()

    def stop(self, timeout: float = 2.0) -> None:
        """Ordered shutdown within ``timeout`` s: input (capture, source), then model (cancel, worker), then
        output (speaker). Idempotent."""
        if self._stop.is_set():
            return
        deadline = now() + timeout
        self._stop.set()
        capture = [t for t in self._threads if t.name == "va-capture"]
        worker = [t for t in self._threads if t.name == "va-model"]
        for th in capture:
            th.join(max(0.0, deadline - now() - 0.5))
        quietly(self.source.close)
        self._cancel_current("stop")
        spec = self._spec
        if spec is not None:
            spec[1].set()
        for th in worker:
            th.join(max(0.0, deadline - now() - 0.2))
        if self.speaker is not None:
            quietly(self.speaker.stop)
            quietly(self.speaker.close)
        self._put(Status("stopped", t=self.clock()), wait=False)

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # ---- public surface: commands from the UI (never block) ---------------------------------------------------
    def submit_text(self, text: str) -> None:
        """A typed turn."""
        text = text.strip()
        if text:
            self._submit(PendingTurn("text", text=text, skew=self._skew), wait=False)

    def submit_file(self, path: str, question: str = "") -> None:
        """Audio analysis of a file (read and cut into ≤ 30 s audios by the worker), with an optional question."""
        self._submit(PendingTurn("file", path=str(path), text=question.strip(), skew=self._skew), wait=False)

    def cancel(self) -> None:
        """Cancel the reply in progress (Ctrl-C), and stop speaking it."""
        if self.speaker is not None and self._tts_on:
            quietly(self.speaker.stop)
        self._cancel_current("cancel")

    def reset(self) -> None:
        """A new conversation: the reply in progress and waiting turns are dropped, the history cleared."""
        self._drain_turns()
        self.cancel()
        self.reset_after_reply()

    def reset_after_reply(self) -> None:
        """A new conversation as soon as the reply in progress is done; turns already waiting are kept and
        open the new conversation (the kiosk's max_turns: the next visitor's question is not lost)."""
        self._control.put(("reset", None))

    def set_mode(self, mode: str) -> None:
        """ "handsfree" (VAD segments) or "ptt" (push-to-talk: the key records)."""
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
        self._mode = mode
        self._ptt_want = False
        self._refresh_state(detail=f"mode {mode}", force=True)

    def set_muted(self, muted: bool) -> None:
        """Muted: the microphone's audio is ignored (the level meter still moves)."""
        self._muted = bool(muted)
        self._ptt_want = False
        self._refresh_state()

    def set_tts(self, on: bool) -> None:
        """Speak replies (from the next text on) or not; the speaker is created on first use."""
        if not on:
            self._tts_on = False
            if self.speaker is not None:
                quietly(self.speaker.stop)
            return
        if self.speaker is not None:
            self._tts_on = True
            return
        threading.Thread(target=self._open_speaker, name="va-tts-open", daemon=True).start()

    def ptt_press(self) -> None:
        """Push-to-talk key down: start recording (repeated presses while recording change nothing). A press
        while the assistant speaks interrupts it."""
        if self._mode != "ptt" or self._muted:
            return
        if self.speaker is not None and self._tts_on and speaking(self.speaker):
            self._interrupt_speech("ptt")
        self._ptt_want = True

    def ptt_release(self) -> None:
        """Push-to-talk key up: the recording becomes a turn (silence trimmed at the ends)."""
        self._ptt_want = False

    def history(self) -> list[dict[str, Any]]:
        """The conversation so far, for /save: per turn ``turn``, ``kind``, ``text``, ``audios`` (16 kHz float32
        arrays), ``durations``, ``file``, ``reply``, ``interrupted``, figures and ``error``."""
        with self._lock:
            return [dict(h) for h in self._history]

    # ---- public surface: what the UI may show ---------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def muted(self) -> bool:
        return self._muted

    @property
    def ptt_held(self) -> bool:
        """The push-to-talk recording is wanted: pressed and not yet released, nor ended by the app itself
        (the length limit, a mode change or mute end it without a release)."""
        return self._ptt_want

    @property
    def tts_on(self) -> bool:
        return self._tts_on

    @property
    def busy(self) -> bool:
        """A reply is being generated (Ctrl-C cancels it rather than quitting)."""
        return self._current is not None

    @property
    def pending(self) -> int:
        """Turns submitted and not yet answered (waiting or in progress)."""
        return self._pending

    @property
    def turns_queued(self) -> int:
        """Turns waiting in the queue to the model worker (a health figure: it must not grow)."""
        return self._turns.qsize()

    @property
    def input_ended(self) -> bool:
        """The source has no more audio (the end of a file); the capture thread has ended."""
        return self._input_ended

    @property
    def state(self) -> str:
        return self._state[0]

    @property
    def description(self) -> str:
        return f"{getattr(self.backend, 'description', 'model')} · {getattr(self.source, 'name', 'input')}"

    # ---- events ---------------------------------------------------------------------------------------------
    def _put(self, event: Event, wait: bool = True) -> None:
        for sink in self.sinks:
            if not isinstance(event, Level):
                try:
                    sink(event)
                except Exception:  # noqa: BLE001 - a failing log must not stop the assistant
                    pass
        if isinstance(event, Level):
            if self.events.qsize() < EVENTS_MAX // 2:
                put_nowait(self.events, event)
            return
        if not wait:
            put_nowait(self.events, event)
            return
        while True:
            try:
                self.events.put(event, timeout=POLL_S)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    def _refresh_state(self, t: float | None = None, detail: str = "", force: bool = False) -> None:
        """Emit Status when the combined state changes (first match wins). Several threads call this: the
        state is computed and emitted under one lock, so the last Status is always the current state."""
        with self._state_lock:
            if self._muted:
                state = "muted"
            elif self._device_lost:
                state = "device_lost"
            elif self._recording_s is not None:
                state, detail = "recording", f"{self._recording_s:.1f} s"
            elif self._hearing:
                state = "hearing"
            elif self._busy or self._pending:
                state = "thinking"  # also a turn handed over and not yet taken (e.g. behind a speculation)
            elif self.speaker is not None and self._tts_on and speaking(self.speaker):
                state = "speaking"
            else:
                state = "listening"
            if not force and (state, detail) == self._state or (state == self._state[0] and not detail and not force):
                return
            self._state = (state, detail)
            self._put(Status(state, detail, t=self.clock() if t is None else t), wait=False)

    def _backend_status(self, line: str) -> None:
        """The backend's one-line note (e.g. "cannot reach the server …; retry 1/5 in 0.5 s"), as a Status."""
        self._refresh_state(detail=one_line(line), force=True)

    def _error(self, message: str, source: str, t: float | None = None) -> None:
        self._put(ErrorEvent(message, source, t=self.clock() if t is None else t), wait=False)

    def clock(self) -> float:
        """The capture clock now (see the module docstring for a fast file's clock)."""
        return now() + self._skew

    # ---- turns ----------------------------------------------------------------------------------------------
    def _submit(self, turn: PendingTurn, wait: bool) -> bool:
        with self._lock:
            self._pending += 1
        while True:
            try:
                self._turns.put(turn, timeout=POLL_S) if wait else self._turns.put_nowait(turn)
                break
            except queue.Full:
                if wait and not self._stop.is_set():
                    continue
                with self._lock:
                    self._pending -= 1
                self._error(f"{TURNS_MAX} turns are already waiting for the model; this one was dropped", "app")
                return False
        if self._busy:
            self._refresh_state(detail=f"{self._turns.qsize()} turn(s) waiting", force=True)
        return True

    def _drain_turns(self) -> None:
        while True:
            try:
                self._turns.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self._pending -= 1

    def _cancel_current(self, reason: str) -> None:
        current = self._current
        if current is not None and not current[1].is_set():
            current[2][0] = reason
            current[1].set()

    def _check_done(self) -> None:
        with self._lock:
            finished = self._input_ended and self._pending == 0
        if finished and not self.stay:
            self.done.set()

    def _wait_idle(self) -> None:
        """Fast files run in lock step: wait until every submitted turn has its reply (and, with speech output
        on, until it has been spoken: the next question follows the answer, as in a conversation)."""
        spoken_by: float | None = None  # give up waiting for speech then (a stuck speaker must not hang us)
        while not self._stop.is_set():
            with self._lock:
                idle = self._pending == 0
            if idle:
                spoken_by = spoken_by or now() + MAX_SPEECH_WAIT_S
                if now() > spoken_by or not (self.speaker is not None and self._tts_on and speaking(self.speaker)):
                    return
            self._stop.wait(0.005)

    # ---- speech output ----------------------------------------------------------------------------------------
    def _open_speaker(self) -> None:
        try:
            from voiceassist.speech import Speaker

            self.speaker = Speaker(self.config.tts, self.config.audio.output_device)
            self._tts_on = True
        except Exception as err:  # noqa: BLE001 - any failure of the optional TTS is one status line
            self._error(f"speech output unavailable: {one_line(err)}; replies stay text only", "tts")

    def _interrupt_speech(self, reason: str) -> None:
        """Barge-in or the ptt key over playback: stop it now; the worker cuts the history to what was heard."""
        spoken = ""
        try:
            spoken = self.speaker.stop()
        except Exception as err:  # noqa: BLE001
            self._error(f"speech output failed: {one_line(err)}", "tts")
        # The truncation is queued before the cancel, so the worker finds it as soon as the reply returns.
        self._control.put(("truncate", (self._speaking_turn, spoken or "", reason)))
        self._cancel_current(reason)

    def _poll_speaker(self) -> None:
        sp = self.speaker
        if sp is None:
            return
        errors = getattr(sp, "errors", None)
        if errors is not None and hasattr(errors, "get_nowait"):
            while True:
                try:
                    self._error(one_line(errors.get_nowait()), "tts")
                except queue.Empty:
                    break
        self._refresh_state()

    def _echo_window(self, t: float) -> bool:
        """True while the assistant speaks and for ``tts.echo_tail_ms`` after (its voice may be in the mic)."""
        sp = self.speaker
        if sp is None or not self._is_mic:
            return False
        if speaking(sp):
            return True
        try:
            quiet = sp.quiet_since()
        except Exception:  # noqa: BLE001
            return False
        return quiet is not None and t - quiet < self.config.tts.echo_tail_ms / 1000
