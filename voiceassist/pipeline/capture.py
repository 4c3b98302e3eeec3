"""The capture stage: source → level meter → front-end processors → (muted | push-to-talk | segmenter) → turns.

Runs on the capture thread ("va-capture") and owns everything it touches: the source, the processor chain, the
segmenter, the push-to-talk recording, the echo policy and the turn gate, and the capture clock's skew.

In: ``control`` (SetMode, SetMuted, ReplyEnded; drained before each block) and the push-to-talk key (a
``threading.Event`` the UI sets and clears; this stage clears it when it ends a recording itself). Out: the
turn queue (TurnRequest), the speculation slot (SpeculationRequest), StopSpeaking to the speech stage
(barge-in), CaptureReport to the status board, and events (Level, ErrorEvent) to the front end.

It never blocks on the front end and, for a microphone, never on the model (a turn that finds the turn queue
full is dropped with an error). Only a fast file waits: it runs in lock step with the model (see
``voiceassist.app``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from voiceassist.audio.sources import AudioSource, EndOfInput
from voiceassist.config import Config
from voiceassist.errors import AudioFileError, one_line, quietly
from voiceassist.events import (
    SAMPLE_RATE,
    AudioBlock,
    ErrorEvent,
    Event,
    Level,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    Utterance,
    Wake,
    now,
)
from voiceassist.pipeline.duplex import EchoSensing
from voiceassist.pipeline.frontend import EchoPolicy, PassAllGate, ProcessorChain, TurnGate
from voiceassist.pipeline.messages import (
    CaptureControl,
    CaptureReport,
    InterruptReason,
    Mode,
    ReplyEnded,
    SetMode,
    SetMuted,
    SetSpeculation,
    SpeculationRequest,
    SpeechMessage,
    StatusReport,
    StopSpeaking,
    TurnRequest,
    WakeKey,
)
from voiceassist.pipeline.queues import POLL_S, TurnQueue, take_waiting
from voiceassist.pipeline.recording import Recording, recording_turn
from voiceassist.vad import Segmenter, VadState, VoiceDetector
from voiceassist.wake.gate import GateMessage, SpeechDiscarded, StateChanged, StopReply, WakeState, WakeTurn
from voiceassist.wake.live import WakeListener

LEVEL_EVERY_S = 0.05  # at most one Level event per this much capture time, s
DIGITAL_SILENCE = 1.0 / 32768  # peak below one 16-bit step: the input is digitally silent
RETRY_DEVICE_S = 1.0  # wait between attempts to reopen a lost input device, s
SPEC_PICKUP_WAIT_S = 5.0  # a fast file waits at most this long for the model stage to take a speculation, s
EARLY_BARGE_WAIT_S = 2.0  # a double-talk barge-in waits this long for the segmenter to start its utterance, s
MAX_SPEECH_WAIT_S = 120.0  # a fast file waits at most this long for a reply to be spoken, s


class CaptureStage:
    """See the module docstring. ``run()`` is the capture thread's body."""

    def __init__(
        self,
        config: Config,
        source: AudioSource,
        *,
        control: queue.SimpleQueue[CaptureControl],
        turns: TurnQueue,
        speculation: queue.Queue[SpeculationRequest] | None,
        speculate: bool,
        speech: Callable[[SpeechMessage], None],
        echo: EchoPolicy,
        report: Callable[..., None],
        emit: Callable[[Event], None],
        ptt_key: threading.Event,
        stop: threading.Event,
        on_input_ended: Callable[[], None],
        processors: ProcessorChain | None = None,
        gate: TurnGate | None = None,
        detector: Callable[[], VoiceDetector] | None = None,
        wake: WakeListener | None = None,
        cancel_reply: Callable[[InterruptReason], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.control = control  # App, model stage → here
        self._turns = turns  # this stage writes; the model stage reads
        self._speculation = speculation  # this stage writes (None: the backend offers none); the model stage reads
        self._speculate = speculate and speculation is not None
        self._speech = speech
        self._echo = echo
        self._report_to = report
        self._emit = emit
        self._ptt_key = ptt_key
        self._stop = stop
        self._on_input_ended = on_input_ended
        self.processors = processors or ProcessorChain()
        self.gate: TurnGate = gate or PassAllGate()
        self._detector = detector  # a fresh VAD engine for each new segmenter (None: webrtcvad)
        # The wake word (issue 13): its detector is the last of `processors` (it hears every block the echo
        # canceller cleaned); its gate sits between the segmenter and the echo policy. None: no wake word.
        self.wake = wake
        # ModelStage.cancel(reason, waiting=True): a stop cancels the reply in progress and the turns waiting
        self._cancel_reply = cancel_reply
        self._fast = source.realtime is False
        # A file cannot hear the assistant speak: the dead-microphone warning is for devices.
        self._is_mic = source.is_device
        self._mode: Mode = "ptt" if config.ui.mode == "ptt" else "handsfree"  # validated by the config
        self._muted = False
        self.skew = 0.0  # capture clock − wall clock, s: 0 but for a fast file (set at each of its turns)
        self.echo_ignored = 0  # microphone utterances dropped as the assistant's own voice (a figure for tests)
        self.input_ended = threading.Event()
        # capture-thread state (reset when the segmenter or recording is dropped)
        self._seg: Segmenter | None = None  # None = build a fresh one before the next block it gets
        self._level_next_t = float("-inf")
        self._silent_s = 0.0  # digital silence so far, s
        self._silence_warned = False
        self._rec: Recording | None = None  # push-to-talk recording in progress
        self._hearing = False
        self._device_lost = False
        self._utt_echo = False  # the current speech overlapped the assistant's playback (or its echo tail)
        self._barged = False  # ... and barged in, so it is a real turn after all
        self._speech_start_t: float | None = None
        # Full duplex: a barge-in decided on double talk before the segmenter started the utterance (capture
        # clock of the decision, s): the SpeechStarted that follows is the barged-in speech
        self._early_barge_t: float | None = None
        self._pace: tuple[float, float] | None = None  # (wall, block clock) while pacing a fast hang-over
        self._spec: SpeculationRequest | None = None  # the last speculation asked for
        self._last_end_t = now()

    def clock(self) -> float:
        """The capture clock now (see ``voiceassist.app`` for a fast file's clock)."""
        return now() + self.skew

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        last_error = ""
        while not self._stop.is_set():
            self._read_control()
            try:
                block = self.source.read(2 * POLL_S)
            except EndOfInput:
                self._end_of_input()
                return
            except AudioFileError as err:
                self._error(one_line(err))
                self._end_of_input()
                return
            except Exception as err:  # noqa: BLE001 - DeviceError and anything else: retry the device
                if not self._recover(err):
                    return
                continue
            try:
                self._ptt_step()
                if block is not None:
                    self._on_block(block)
                elif self.wake is not None:
                    self._wake_messages(self._wake_detections(self.clock()))  # no audio: windows still close
            except Exception as err:  # noqa: BLE001 - a bug on one block must not end listening
                message = f"audio processing failed: {one_line(err)}"
                if message != last_error:  # once, not once per block
                    self._error(message, source="app")
                last_error = message
                self._seg, self._rec, self._hearing = None, None, False

    def _read_control(self) -> None:
        for msg in take_waiting(self.control):
            match msg:
                case SetMode(mode=mode):
                    self._mode = mode
                case SetMuted(muted=muted):
                    self._muted = muted
                case SetSpeculation(on=on):
                    self._speculate = on and self._speculation is not None
                case ReplyEnded():
                    self.gate.on_reply_ended(msg)
                    if self.wake is not None and not msg.stopped:
                        self._wake_messages(self.wake.reply_ended(msg.t))
                case WakeKey(t=t):
                    if self.wake is not None:
                        msgs = self.wake.press(t)
                        self._wake_messages(msgs, key=True)
                        if self._reply_in_progress() and not any(isinstance(m, StopReply) for m in msgs):
                            self._stop_reply("ptt")  # a typed turn's reply: the gate did not know of it

    def _report(self, t: float | None = None, detail: str = "", force: bool = False) -> None:
        waiting = self.wake is not None and self.wake.state is WakeState.WAITING
        recording_s = None if self._rec is None else self._rec.shown_s  # as the indicator last showed it
        msg: StatusReport = CaptureReport(self._device_lost, self._hearing, recording_s, waiting)
        self._report_to(msg, t=t, detail=detail, force=force)

    def _error(self, message: str, t: float | None = None, source: str = "audio", dropped: bool = False) -> None:
        self._emit(ErrorEvent(message, source, t=self.clock() if t is None else t, dropped=dropped))

    # ---- per block ------------------------------------------------------------------------------------------
    def _on_block(self, block: AudioBlock) -> None:
        dur = len(block.samples) / SAMPLE_RATE
        t_end = block.t + dur
        if self._pace is not None:
            # A fast file inside a hang-over, with speculation on: deliver in real time, so that the model
            # stage's speculative prefill overlaps the hang-over as it would with a microphone.
            wall0, t0 = self._pace
            wait = wall0 + (t_end - t0) - now()
            if wait > 0:
                time.sleep(wait)
        self._last_end_t = t_end
        self._level(block, dur)
        block = self.processors.process(block)
        echo_active = self._echo_sensing(block.t)
        wake_msgs = self._wake_detections(t_end)
        if self._muted:
            self._seg = None
            self._hearing = False
            return
        if self._mode == "ptt":
            self._seg = None
            self._hearing = False
            if self._rec is not None:
                self._record(block, t_end)
            return
        self._wake_messages(wake_msgs)
        self._handsfree(block, t_end, echo_active)

    def _echo_sensing(self, t: float) -> bool:
        """Ask the chain's echo cancellers (``EchoSensing``) whether their far end is playing, and show their
        one-line notices (a device without latency, a re-alignment) as errors of source "audio"."""
        active = False
        for p in self.processors.processors:
            if isinstance(p, EchoSensing):
                active = active or p.echo_active
                for notice in p.notices():
                    self._error(notice, t)
        return active

    def _record(self, block: AudioBlock, t_end: float) -> None:
        assert self._rec is not None
        if self._rec.add(block):
            self._report(t_end)
        if self._rec.full:
            limit = self._rec.limit_s
            self._error(f"recording stopped at {limit:.0f} s (vad.max_chunk_s × max_chunks_per_turn)", t_end)
            self._ptt_key.clear()
            self._ptt_step()

    def _level(self, block: AudioBlock, dur: float) -> None:
        samples = block.samples
        peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
        if peak < DIGITAL_SILENCE:
            self._silent_s += dur
        else:
            self._silent_s = 0.0
            self._silence_warned = False
        silent = self._silent_s if self._is_mic else 0.0  # a file's digital silence is no fault
        if silent >= self.config.audio.silence_warning_s and not self._silence_warned and not self._muted:
            self._silence_warned = True
            self._error(
                f"no signal at all from {self.source.name!r} for {silent:.0f} s: is the microphone muted, "
                "unplugged or the wrong device? (see `voiceassist devices`)",
                block.t,
            )
        if block.t >= self._level_next_t:
            self._level_next_t = block.t + LEVEL_EVERY_S
            power = float(np.mean(samples.astype(np.float64) ** 2)) if len(samples) else 0.0
            dbfs = max(-100.0, 10 * float(np.log10(power + 1e-12)))
            self._emit(Level(round(dbfs, 1), round(silent, 2), t=block.t))

    # ---- hands-free: the segmenter ----------------------------------------------------------------------------
    def _handsfree(self, block: AudioBlock, t_end: float, echo_active: bool = False) -> None:
        if self._seg is None:
            self._seg = Segmenter(self.config.vad, detector=self._detector() if self._detector else None)
            self._utt_echo = self._barged = False
            self._early_barge_t = None
        self._seg.set_echo_active(echo_active)
        echo = self._echo.audible(block.t)
        got_utterance = False
        events: list = self._seg.feed(block)
        if self.wake is not None:
            events = self._wake_messages(self.wake.route(events))
        for ev in events:
            match ev:
                case WakeTurn(utterance=utt, via=via):
                    got_utterance = True
                    # The wake word in the utterance makes it a turn even over the assistant's voice (half
                    # duplex: the wake word is the way to interrupt), as a barge-in does.
                    self._barged = self._barged or via == "wake"
                    self._on_utterance(utt, t_end)
                case SpeechDiscarded():
                    got_utterance = True  # the wake word alone: no turn, back to listening
                    self._speech_start_t = None
                    self._hearing = False
                    self._utt_echo = self._barged = False
                    self._drop_speculation()
                    self._report(t_end)
                case Utterance():
                    got_utterance = True
                    self._on_utterance(ev, t_end)
                case SpeechStarted(t=t):
                    self._speech_start_t = t
                    self._utt_echo = echo
                    self._barged = self._early_barge_t is not None
                    self._early_barge_t = None
                    if not echo:
                        self._hearing = True
                        self._report(t)
                case SpeechPaused(utterance=utt):
                    if not self._utt_echo or self._barged:
                        self._ask_speculation(utt, t_end)
                case SpeechResumed():
                    self._drop_speculation()
        state = self._seg.state
        if self._early_barge_t is not None and t_end - self._early_barge_t > EARLY_BARGE_WAIT_S:
            self._early_barge_t = None  # the speech never made an utterance (too short once the reply stopped)
        if echo and self.wake is None and not self._barged and self._early_barge_t is None:
            frame_s = self.config.vad.frame_ms / 1000
            # A list, not a generator: every frame must reach the policy (it keeps the double talk's state).
            if any([self._echo.double_talk(t, sp, frame_s) for t, sp in self._seg.frames]):
                self._speech(StopSpeaking("barge_in"))
                if self._speech_start_t is not None:
                    self._utt_echo = self._barged = self._hearing = True
                else:
                    self._early_barge_t = t_end
                self._report(t_end)
        if state is not VadState.QUIET and echo and not got_utterance:
            self._utt_echo = True  # playback started during the speech: it may contain the assistant's voice
        if (
            self._utt_echo
            and self.wake is None  # with a wake word, only the wake word (or the key) interrupts
            and not self._barged
            and state is VadState.SPEAKING
            and self._speech_start_t is not None
            and self._echo.barges_in(t_end - self._speech_start_t)
        ):
            self._barged = True
            self._hearing = True
            self._speech(StopSpeaking("barge_in"))
            self._report(t_end)
        if state is VadState.QUIET and not got_utterance and (self._hearing or self._speech_start_t is not None):
            # A burst too short to be an utterance (cough, click): back to listening.
            self._speech_start_t = None
            self._hearing = False
            self._utt_echo = self._barged = False
            self._drop_speculation()
            self._report(t_end)

    def _on_utterance(self, utt: Utterance, t_end: float) -> None:
        ignored = (self._utt_echo or self._echo.overlapped(utt)) and not self._barged
        self._hearing = False
        self._speech_start_t = None
        self._utt_echo = self._barged = False
        self._pace = None
        if self._spec is not None:
            self._spec.withdraw()  # a speculation already claimed stays valid: the turn's audio is the same
            self._spec = None
        if ignored:
            self.echo_ignored += 1
            self._report(t_end)  # the assistant's own voice (or speech over it): not a turn
            return
        decision = self.gate.decide(utt)
        if decision.stop_speaking is not None:
            self._speech(decision.stop_speaking)
        if not decision.accept:
            self._report(t_end, detail=decision.reason, force=bool(decision.reason))
            return
        if self._fast:
            self.skew = t_end - now()
        turn = TurnRequest(
            "audio",
            audios=tuple(utt.chunks),
            speech_end_t=utt.end_t,
            skew=self.skew,
            capped=utt.capped,
            reasons=tuple(utt.reasons),
        )
        self._submit(turn, t_end)

    def _submit(self, turn: TurnRequest, t_end: float) -> None:
        submitted = self._turns.put(turn, wait=self._fast)
        if not submitted:
            self._error(
                f"{self._turns.maxsize} turns are already waiting for the model; this one was dropped",
                source="app",
                dropped=True,
            )
        elif self._turns.pending() > self._turns.waiting():  # a turn is being answered: this one waits
            self._report(detail=f"{self._turns.waiting()} turn(s) waiting", force=True)
        self._report(t_end)  # "thinking" once the turn is handed over
        if submitted and self._fast:
            self._wait_idle()

    def _wait_idle(self) -> None:
        """Fast files run in lock step: wait until every submitted turn has its reply (and, with speech output
        on, until it has been spoken: the next question follows the answer, as in a conversation)."""
        if not self._turns.wait_idle():
            return
        spoken_by = now() + MAX_SPEECH_WAIT_S  # a stuck speaker must not hang us
        playback = self._echo.playback
        while not self._stop.is_set() and now() < spoken_by and playback.output_on() and playback.speaking():
            self._stop.wait(0.005)

    # ---- the wake word (issue 13; voiceassist.wake.live) -----------------------------------------------------
    def _wake_detections(self, t_end: float) -> list[GateMessage]:
        """The detections of this block (the detector heard it in the processor chain) through the gate, each
        also a Wake event; muted or in push-to-talk mode they are dropped unheard."""
        if self.wake is None:
            return []
        found, msgs = self.wake.detections(t_end, hear=not self._muted and self._mode == "handsfree")
        for d in found:
            stop = any(isinstance(m, StopReply) and m.detection is d for m in msgs)
            if not stop and self._reply_in_progress():
                # A typed turn's reply: the gate did not know of it (as for the key, see WakeKey), still a stop.
                msgs.insert(0, StopReply(d))
                stop = True
            self._emit(Wake(d.word, d.probability, "stop" if stop else "listen", t=d.t))
        return msgs

    def _reply_in_progress(self) -> bool:
        """A turn is queued or being answered, or its reply is being spoken."""
        playback = self._echo.playback
        return bool(self._turns.pending()) or (playback.output_on() and playback.speaking())

    def _wake_messages(self, msgs: list[GateMessage], key: bool = False) -> list:
        """Act on the gate's own messages (stop, state changes); return the speech events for the segmenter
        path (SpeechStarted / SpeechPaused / SpeechResumed / WakeTurn / SpeechDiscarded), in order."""
        speech: list = []
        for m in msgs:
            match m:
                case StopReply():
                    self._stop_reply("ptt" if key else "wake")
                case StateChanged(t=t, reason=reason):
                    self._report(t, detail="wake word" if reason == "wake" and not key else "", force=False)
                case _:
                    speech.append(m)
        return speech

    def _stop_reply(self, reason: InterruptReason) -> None:
        """Stop the reply in progress and every turn waiting behind it (the wake word, the key): being spoken,
        its history is cut back to what was heard (the speech stage's TruncateReply, as a barge-in); not yet
        heard (queued, thinking, its first sentence being synthesised), nothing of it is spoken and the model
        stage cuts it back to nothing (HEARD_STOPS). The speech after the stop is the next turn."""
        playback = self._echo.playback
        self._speech(StopSpeaking(reason, truncate=playback.output_on() and playback.speaking()))
        if self._cancel_reply is not None:
            self._cancel_reply(reason)

    # ---- speculative prefill: the model stage does it when the backend offers it ----------------------------
    def _ask_speculation(self, utt: Utterance, t_end: float) -> None:
        if self._speculation is None or not self._speculate or self._turns.pending():
            return  # the model has real work: a speculation would only delay it
        spec = SpeculationRequest(utt)
        self._drop_speculation()
        self._spec = spec
        try:
            self._speculation.get_nowait()  # a stale request of ours the model stage never looked at
        except queue.Empty:
            pass
        self._speculation.put_nowait(spec)  # the only writer, the slot just emptied: never full
        if self._fast:
            # A fast file stands in for a microphone: wait (bounded) until the model stage has taken the
            # request, then pace the hang-over in real time from there. Without this wait, a loaded machine
            # could let the whole (fast) hang-over pass before the model looked, and whether the prefill
            # overlapped the hang-over would depend on CPU load rather than on the audio.
            deadline = now() + SPEC_PICKUP_WAIT_S
            while not spec.claimed.is_set() and not spec.cancel.is_set() and now() < deadline:
                if self._stop.wait(0.001):
                    break
            self._pace = (now(), t_end)

    def _drop_speculation(self) -> None:
        spec, self._spec = self._spec, None
        self._pace = None
        if spec is not None:
            spec.cancel.set()  # not started: never; in progress: rolled back (it must never delay a real one)

    # ---- push-to-talk ---------------------------------------------------------------------------------------
    def _ptt_step(self) -> None:
        """Follow the key: start a recording, or turn the finished one into a turn."""
        if self._mode != "ptt" or self._muted:
            if self._rec is not None:
                self._rec = None
                self._report()
            return
        if self._ptt_key.is_set() and self._rec is None:
            vad = self.config.vad
            self._rec = Recording(vad.max_chunk_s * vad.max_chunks_per_turn)
            self._report(self._last_end_t)
        elif not self._ptt_key.is_set() and self._rec is not None:
            rec, self._rec = self._rec, None
            self._finish_recording(rec)

    def _finish_recording(self, rec: Recording) -> None:
        made = recording_turn(rec, self.config.vad)
        if isinstance(made, str):
            self._report(rec.end_t, detail=made, force=True)
            return
        if self._fast:
            self.skew = made.end_t - now()
        turn = TurnRequest(
            "audio",
            audios=made.chunks,
            speech_end_t=made.speech_end_t,
            skew=self.skew,
            capped=made.capped,
            reasons=tuple("ptt" for _ in made.chunks),
        )
        self._submit(turn, made.end_t)

    # ---- end of input, lost devices -------------------------------------------------------------------------
    def _end_of_input(self) -> None:
        self._read_control()
        if self._seg is not None and self._mode == "handsfree" and not self._muted:
            events: list = self._seg.flush()
            if self.wake is not None:
                events = self._wake_messages(self.wake.route(events))
            for ev in events:
                if isinstance(ev, WakeTurn):
                    self._barged = self._barged or ev.via == "wake"
                    self._on_utterance(ev.utterance, self._last_end_t)
                elif isinstance(ev, Utterance):
                    self._on_utterance(ev, self._last_end_t)
        if self._rec is not None:
            rec, self._rec = self._rec, None
            self._finish_recording(rec)
        self._hearing = False
        if self.wake is not None:
            # No more input: no window can be used, and nothing will tick this clock any more.
            self._wake_messages(self.wake.gate.stopped(self._last_end_t))
        self.input_ended.set()
        self._report(self._last_end_t, detail="end of input", force=True)
        self._on_input_ended()

    def _recover(self, err: Exception) -> bool:
        """The device failed: report it once, then reopen it every RETRY_DEVICE_S until it is back or stop."""
        self._device_lost = True
        self._hearing = False
        self._seg = None
        self._rec = None
        self._error(one_line(err))
        self._report(detail=self.source.name)
        while not self._stop.is_set():
            quietly(self.source.close)
            if self._stop.wait(RETRY_DEVICE_S):
                return False
            try:
                self.source.start()
            except Exception:  # noqa: BLE001 - still gone; try again
                continue
            self._device_lost = False
            self.processors.reset()
            self._report(detail=f"input back: {self.source.name}", force=True)
            return True
        return False
