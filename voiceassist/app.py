"""The assistant: the capture, model and speech stages wired together, with ordered start and stop.

Stages, queues and messages (one direction of flow; the data queues bounded; one stop event, ``_stop``; the
whole picture with writers and readers in docs/architecture.md)::

    source.read ─► CaptureStage ──(TurnQueue)──► ModelStage ──(EventStream)──► front end (TUI / plain / kiosk)
        levels, processors, VAD,   (speculation slot)   owns Backend, history,      │
        push-to-talk, echo policy, ◄──(ReplyEnded)───   retries, turn numbers       └─ App commands
        turn gate                  ──StopSpeaking──► SpeechStage ◄──SpeakText/EndOfReply── ModelStage
                                                     owns the Speaker; TruncateReply ──► ModelStage.control

The App owns only the wiring and the UI's settings (mode, mute, the push-to-talk key); its command methods
(``submit_text``, ``cancel``, ``ptt_press``, ...) never block: they put a message on a stage's queue or inbox.
The status ladder is ``voiceassist.pipeline.state``: each stage reports its part to one StatusBoard.

Capture clock and latency. Every event's ``t`` is on the capture clock (``events.now()``). For a microphone or
a real-time file, the clock is the wall clock, and ``latency_s`` = first token − end of speech: it includes the
hang-over the segmenter waits before it declares the utterance, as a user experiences it. For a fast file
(``FileSource(realtime=False)``) audio is read as fast as possible, so the block clock is the audio's own time
and runs ahead of (or behind) the wall clock; the hang-over audio arrives at once. There the latency is defined
as (audio time from the end of speech to the block that completed the utterance: the hang-over, exactly what
real time would wait) + (wall time from that moment to the first token: the real processing). Concretely, each
turn carries ``skew`` = block clock − wall clock at the moment the utterance was declared, and the model
stage's events of that turn are stamped ``now() + skew``. A fast file is also run in lock step: the capture
stage waits for each turn's reply before it reads on, so no turn waits in a queue behind another (which would
measure queueing, not the pipeline), and the conversation is the same one a person would have had.

Speculative prefill (``model.speculative_prefill``, when the backend is ``Speculating``): on the segmenter's
SpeechPaused the capture stage puts the utterance-so-far in the speculation slot, the idle model stage
prefills it; SpeechResumed sets that request's cancel event (the session rolls it back), and the committed
utterance, identical to the one speculated on, finds its prefill done. With a fast file the audio is paced in
real time from the pause until the turn is decided, so the prefill overlaps the hang-over as with a microphone.

Failed turns: a backend failure marked ``retryable`` keeps the turn and sends it again with backoff (see
``voiceassist.pipeline.model``), one ErrorEvent and one Status line per retry; nothing the user said is lost.

Speech output: reply text is fed as it streams. A microphone utterance that overlapped the assistant's voice
(or ``tts.echo_tail_ms`` after it) is dropped (the capture stage's EchoPolicy), unless it barged in: with
``tts.barge_in``, ``tts.barge_in_ms`` of speech over playback stops the speaker and the generation, the
model's history is cut back to what was heard (``truncate_last_reply``), Interrupted(reason="barge_in") is
emitted and the speech becomes the next turn. The push-to-talk key over playback does the same (reason "ptt").
A stop by the wake word or the key while the reply is still pending (queued, thinking, not yet heard) cancels
it and the turns waiting behind it, nothing of them spoken: see ``voiceassist.pipeline.model``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voiceassist.audio.echo import EchoCanceller
from voiceassist.audio.echo import from_config as echo_from_config
from voiceassist.audio.farend import FarEndReference
from voiceassist.audio.sources import AudioSource
from voiceassist.backend import Backend, reply_speculator, speculator, status_reporter
from voiceassist.config import Config
from voiceassist.errors import ConfigError, one_line, quietly
from voiceassist.events import AssistantState, ErrorEvent, Event, Status, now
from voiceassist.pipeline.capture import CaptureStage
from voiceassist.pipeline.duplex import FullDuplexPolicy
from voiceassist.pipeline.frontend import EchoPolicy, ProcessorChain, TurnGate
from voiceassist.pipeline.messages import (
    MODES,
    CaptureControl,
    CaptureReport,
    ModelControl,
    ResetConversation,
    SetMode,
    SetMuted,
    SetSpeculation,
    SetSpeculativeSentence,
    SetSpeechOutput,
    SettingsReport,
    SpeculationRequest,
    StopSpeaking,
    TurnRequest,
    WakeKey,
)
from voiceassist.pipeline.model import ModelStage
from voiceassist.pipeline.queues import EventStream, TurnQueue
from voiceassist.pipeline.speech import Speaker, SpeechStage
from voiceassist.pipeline.state import StatusBoard
from voiceassist.vad import VoiceDetector

if TYPE_CHECKING:
    from voiceassist.wake.linear import LinearWakeTap


class App:
    """The running assistant. Construct, ``start()``, consume ``events``, ``stop()``.

    ``done`` is set when the input has ended (end of a file) and the last reply is done, unless ``stay``.
    ``processors``, ``gate``, ``detector``: the capture stage's front-end chain, utterance gate and VAD engine
    factory (docs/architecture.md).
    """

    def __init__(
        self,
        config: Config,
        source: AudioSource,
        backend: Backend,
        *,
        speaker: Speaker | None = None,
        stay: bool = False,
        processors: ProcessorChain | None = None,
        gate: TurnGate | None = None,
        detector: Callable[[], VoiceDetector] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.backend = backend
        self.stay = stay
        self._stop = threading.Event()  # the one stop event: every thread returns soon after it is set
        self.done = threading.Event()
        self._stream = EventStream(self._stop)
        self.events: queue.Queue[Event] = self._stream.queue
        self.sinks: list[Callable[[Event], None]] = self._stream.sinks
        self._turns = TurnQueue(self._stop)
        # The speculation slot. Writer: the capture stage (on SpeechPaused). Reader: the model stage, when idle.
        self._speculation: queue.Queue[SpeculationRequest] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
        self._started = False
        # The UI's settings (the App owns them; the capture stage gets each change as a message).
        self._mode = config.ui.mode
        self._muted = False
        self._ptt_key = threading.Event()  # the push-to-talk key: set by the UI, cleared by the UI or capture
        prefiller = speculator(backend)  # None: the backend offers no speculative prefill

        self.speech: SpeechStage
        self.model: ModelStage
        self.capture: CaptureStage
        self.status = StatusBoard(
            self._stream_nowait,
            self.clock,
            self._turns.pending,
            lambda: self.speech.output_on() and self.speech.speaking(),
        )
        # Control inboxes, read by their stage between blocks / between turns. Unbounded but tiny: one item
        # per user command or reply. capture_control writers: the App (mode, mute), the model stage
        # (ReplyEnded). model_control writers: the App (reset), the speech stage (TruncateReply).
        capture_control: queue.SimpleQueue[CaptureControl] = queue.SimpleQueue()
        model_control: queue.SimpleQueue[ModelControl] = queue.SimpleQueue()
        self.speech = SpeechStage(
            config,
            speaker,
            emit=self._stream_nowait,
            clock=self.clock,
            model_control=model_control,
            cancel_reply=lambda reason: self.model.cancel(reason),
            on_change=self.status.report,
            stop=self._stop,
        )
        self.model = ModelStage(
            config,
            backend,
            speculator=prefiller,
            control=model_control,
            turns=self._turns,
            speculation=self._speculation,
            speech=self.speech.send,
            capture_control=capture_control,
            report=self.status.report,
            emit=self._stream.put,
            clock=self.clock,
            stop=self._stop,
            on_idle=self._check_done,
            reply_speculator=reply_speculator(backend),
            spoken=self.speech,
        )
        # Echo cancellation (#12): for a device, unless the caller built the chain. The player writes the far
        # end into `far_end` (its output callback); the canceller reads it on the capture thread.
        self.echo_canceller: EchoCanceller | None = None
        notices: list[str] = []
        if processors is None and source.is_device:
            far_end = FarEndReference()
            self.echo_canceller, notices = echo_from_config(
                config.audio,
                speech_output=config.tts.enabled,
                reference=far_end,
                mic_timed=lambda: bool(getattr(source, "timing_reported", True)),
                mic_echo=getattr(source, "observe_echo", None),
            )
            if self.echo_canceller is not None:
                processors = ProcessorChain([self.echo_canceller])
                if self.echo_canceller.reference is not None:
                    self.speech.attach_far_end(far_end)
        # The wake word (issue 13): its detector runs last in the processor chain (after an echo canceller, so the
        # assistant's own voice cannot wake it); the capture stage puts its gate behind the segmenter.
        wake = None
        self._wake_tap: LinearWakeTap | None = None  # the wake word's linear branch (wake/linear.py), when it runs
        if config.wake.word:
            from voiceassist.wake import check_config
            from voiceassist.wake.live import WakeListener

            check_config(config)
            wake = WakeListener.from_config(config, playback=self.speech)
            chain = [*(processors.processors if processors else []), wake]
            ec = self.echo_canceller
            if ec is not None and ec.reference is not None:
                wake.lower_over_reply(config.wake.over_reply_drop)
                # AEC3's suppressor also takes down the user's voice over the reply: the wake word gets a second
                # detector on the linear canceller's output (wake/linear.py, measured in bench_wake_echo.py).
                from voiceassist.wake import linear

                if linear.available():
                    wake.add_linear_branch()
                    self._wake_tap = linear.LinearWakeTap(ec, wake)
                    chain.insert(chain.index(ec), self._wake_tap)
                else:
                    notices.append(
                        "wake word: libspeexdsp is not installed, so the wake word is heard only through the echo "
                        "canceller, which may miss it over a spoken reply (Debian: apt-get install libspeexdsp1)"
                    )
            processors = ProcessorChain(chain)
        for notice in notices:
            self._stream_nowait(ErrorEvent(notice, "audio", t=self.clock()))
        self._wake_on = wake is not None
        canceller = self.echo_canceller
        echo: EchoPolicy
        if config.audio.full_duplex and canceller is not None and canceller.reference is not None:
            # Full duplex while the canceller has converged; the half-duplex gate until then, and for "off".
            echo = FullDuplexPolicy(
                self.speech,
                lambda: canceller.state().convergence == "converged",
                enabled=source.is_device,
                tail_s=config.tts.echo_tail_ms / 1000,
                barge_in=config.tts.barge_in,
                barge_in_s=config.tts.barge_in_ms / 1000,
            )
        else:
            echo = EchoPolicy(
                self.speech,
                enabled=source.is_device,
                tail_s=config.tts.echo_tail_ms / 1000,
                barge_in=config.tts.barge_in,
                barge_in_s=config.tts.barge_in_ms / 1000,
            )
        self.capture = CaptureStage(
            config,
            source,
            control=capture_control,
            turns=self._turns,
            speculation=self._speculation if prefiller is not None else None,
            speculate=config.model.speculative_prefill,
            speech=self.speech.send,
            echo=echo,
            report=self.status.report,
            emit=self._stream_nowait,
            ptt_key=self._ptt_key,
            stop=self._stop,
            on_input_ended=self._check_done,
            processors=processors,
            gate=gate,
            detector=detector,
            wake=wake,
            cancel_reply=lambda reason: self.model.cancel(reason, waiting=True),
        )
        # A backend that reports its own retries (RemoteBackend.on_status, however deeply wrapped) shows them
        # in the status line of every front end.
        reporter = status_reporter(backend)
        if reporter is not None and reporter.on_status is None:
            reporter.on_status = self._backend_status

    # ---- public surface: lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Open the source (raises DeviceError / AudioFileError) and start the stages' threads."""
        if self._started:
            return
        self.source.start()
        self._started = True
        for name, target in (
            ("va-model", self.model.run),
            ("va-capture", self.capture.run),
            ("va-speech", self.speech.run),
        ):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        # With a wake word the assistant starts waiting for it (the capture stage reports every change after).
        self.status.report(CaptureReport(waiting_for_wake=True) if self._wake_on else None)

    def stop(self, timeout: float = 2.0) -> None:
        """Ordered shutdown within ``timeout`` s: input (capture, source), then model (cancel, worker), then
        output (speaker). Idempotent."""
        if self._stop.is_set():
            return
        deadline = now() + timeout
        self._stop.set()
        by_name = {t.name: t for t in self._threads}
        if "va-capture" in by_name:
            by_name["va-capture"].join(max(0.0, deadline - now() - 0.5))
        quietly(self.source.close)
        self.model.cancel("stop")
        self._drop_speculation()
        if "va-model" in by_name:
            by_name["va-model"].join(max(0.0, deadline - now() - 0.2))
        self.speech.close()
        if "va-speech" in by_name:
            by_name["va-speech"].join(max(0.0, deadline - now()))
        self._stream.put(Status(AssistantState.STOPPED, t=self.clock()), wait=False)

    def _drop_speculation(self) -> None:
        try:
            self._speculation.get_nowait().cancel.set()
        except queue.Empty:
            pass

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # ---- public surface: commands from the UI (never block) ---------------------------------------------------
    def submit_text(self, text: str) -> None:
        """A typed turn."""
        text = text.strip()
        if text:
            self._submit(TurnRequest("text", text=text, skew=self.capture.skew))

    def submit_file(self, path: str, question: str = "") -> None:
        """Audio analysis of a file (read and cut into ≤ 30 s audios by the model stage), with a question."""
        self._submit(TurnRequest("file", path=str(path), text=question.strip(), skew=self.capture.skew))

    def cancel(self) -> None:
        """Cancel the reply in progress (Ctrl-C), and stop speaking it."""
        self.speech.send(StopSpeaking("cancel", truncate=False))
        self.model.cancel("cancel")

    def reset(self) -> None:
        """A new conversation: the reply in progress and waiting turns are dropped, the history cleared."""
        self._turns.drain()
        self.cancel()
        self.reset_after_reply()

    def reset_after_reply(self) -> None:
        """A new conversation as soon as the reply in progress is done; turns already waiting are kept and
        open the new conversation (the kiosk's max_turns: the next visitor's question is not lost)."""
        self.model.control.put(ResetConversation())

    def set_mode(self, mode: str) -> None:
        """ "handsfree" (VAD segments) or "ptt" (push-to-talk: the key records)."""
        if mode != "handsfree" and mode != "ptt":
            raise ConfigError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
        if mode == "ptt" and self._wake_on:
            raise ConfigError(
                "push-to-talk is off while a wake word is set: the key stops a reply and stands in for it"
            )
        self._mode = mode
        self._ptt_key.clear()
        self.capture.control.put(SetMode("ptt" if mode == "ptt" else "handsfree"))
        self.status.report(detail=f"mode {mode}", force=True)

    def set_muted(self, muted: bool) -> None:
        """Muted: the microphone's audio is ignored (the level meter still moves)."""
        self._muted = bool(muted)
        self._ptt_key.clear()
        self.capture.control.put(SetMuted(self._muted))
        self.status.report(SettingsReport(muted=self._muted))

    def set_speculative_prefill(self, on: bool) -> None:
        """Speculative prefill during the hang-over from the next pause on, or not (a backend that offers none
        stays without)."""
        self.capture.control.put(SetSpeculation(bool(on)))

    def set_speculative_first_sentence(self, on: bool) -> None:
        """Decode and synthesise each reply's first sentence during the hang-over (after the speculative
        prefill), or not, from the next speculation on (``tts.speculative_first_sentence``)."""
        self.model.control.put(SetSpeculativeSentence(bool(on)))

    def set_tts(self, on: bool) -> None:
        """Speak replies (from the next reply on) or not; the speaker is created on first use."""
        self.speech.send(SetSpeechOutput(on))

    def ptt_press(self) -> None:
        """Push-to-talk key down: start recording (repeated presses while recording change nothing). A press
        while the assistant speaks interrupts it."""
        if self._wake_on and self._mode == "handsfree" and not self._muted:
            # With a wake word the key stands in for it: it stops a reply (thinking or speaking; the capture
            # stage does the stopping, as for the wake word) and listens.
            self.capture.control.put(WakeKey(self.clock()))
            return
        if self._mode != "ptt" or self._muted:
            return
        speaking = self.speech.output_on() and self.speech.speaking()
        if speaking or self._turns.pending():
            # A stop, as the wake word's: the reply being spoken is cut back to what was heard; one not yet
            # heard (queued, thinking) is cancelled with nothing spoken, and so are the turns waiting behind it.
            self.speech.send(StopSpeaking("ptt", truncate=speaking))
            self.model.cancel("ptt", waiting=True)
        self._ptt_key.set()

    def ptt_release(self) -> None:
        """Push-to-talk key up: the recording becomes a turn (silence trimmed at the ends)."""
        self._ptt_key.clear()

    def history(self) -> list[dict[str, Any]]:
        """The conversation so far, for /save: per turn ``turn``, ``kind``, ``text``, ``audios`` (16 kHz float32
        arrays), ``durations``, ``file``, ``reply``, ``interrupted``, figures and ``error``."""
        return self.model.history()

    # ---- public surface: what the UI may show ---------------------------------------------------------------
    @property
    def speaker(self) -> Speaker | None:
        return self.speech.speaker

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
        return self._ptt_key.is_set()

    @property
    def tts_on(self) -> bool:
        return self.speech.output_on()

    @property
    def busy(self) -> bool:
        """A reply is being generated (Ctrl-C cancels it rather than quitting)."""
        return self.model.busy

    @property
    def pending(self) -> int:
        """Turns submitted and not yet answered (waiting or in progress)."""
        return self._turns.pending()

    def echo_state(self) -> dict[str, Any] | None:
        """The echo canceller's delay, ERLE and convergence (for status and the kiosk's health), and with a wake
        word the ERLE of its linear branch (``wake_linear``); None without a canceller."""
        ec = self.echo_canceller
        if ec is None:
            return None
        state = ec.state().as_dict()
        if self._wake_tap is not None:
            state["wake_linear"] = self._wake_tap.state()
        return state

    @property
    def turns_queued(self) -> int:
        """Turns waiting in the queue to the model stage (a health figure: it must not grow)."""
        return self._turns.waiting()

    @property
    def input_ended(self) -> bool:
        """The source has no more audio (the end of a file); the capture thread has ended."""
        return self.capture.input_ended.is_set()

    @property
    def state(self) -> AssistantState | None:
        return self.status.state

    @property
    def description(self) -> str:
        return f"{self.backend.description} · {self.source.name}"

    # figures for tests and benchmarks
    @property
    def echo_ignored(self) -> int:
        """Microphone utterances dropped as the assistant's own voice."""
        return self.capture.echo_ignored

    @property
    def speculations_started(self) -> int:
        return self.model.speculations_started

    @property
    def first_sentences_prepared(self) -> int:
        """Speculative first sentences the model stage had synthesised during the hang-over (issue 15)."""
        return self.model.first_sentences_prepared

    @property
    def retry_first_s(self) -> float:
        """First pause before a failed (retryable) turn is sent again, s (doubling up to ``retry_max_s``)."""
        return self.model.retry_first_s

    @retry_first_s.setter
    def retry_first_s(self, value: float) -> None:
        self.model.retry_first_s = value

    @property
    def retry_max_s(self) -> float:
        return self.model.retry_max_s

    @retry_max_s.setter
    def retry_max_s(self, value: float) -> None:
        self.model.retry_max_s = value

    # ---- wiring helpers -------------------------------------------------------------------------------------
    def clock(self) -> float:
        """The capture clock now (see the module docstring for a fast file's clock)."""
        return now() + self.capture.skew

    def _stream_nowait(self, event: Event) -> None:
        self._stream.put(event, wait=False)

    def _submit(self, turn: TurnRequest) -> None:
        if not self._turns.put(turn, wait=False):
            self._stream_nowait(
                ErrorEvent(
                    f"{self._turns.maxsize} turns are already waiting for the model; this one was dropped",
                    "app",
                    t=self.clock(),
                    dropped=True,
                )
            )
            return
        if self.model.busy:
            self.status.report(detail=f"{self._turns.waiting()} turn(s) waiting", force=True)

    def _backend_status(self, line: str) -> None:
        """The backend's one-line note (e.g. "cannot reach the server …; retry 1/5 in 0.5 s"), as a Status."""
        self.status.report(detail=one_line(line), force=True)

    def _check_done(self) -> None:
        if self.capture.input_ended.is_set() and self._turns.pending() == 0 and not self.stay:
            self.done.set()
