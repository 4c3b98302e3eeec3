"""The model stage: the only caller of the Backend; owns the history, the turn numbers and the retries.

Runs on the model thread ("va-model"). In: the turn queue (TurnRequest, one at a time), ``control``
(ResetConversation, TruncateReply; handled between turns), the speculation slot (SpeculationRequest, taken
while idle), and ``cancel(reason, waiting)`` (the one synchronous entry: it sets the cancel event of the reply
in progress and, for a stop, marks the turns already waiting as cancelled too). Out: events (UtteranceEvent,
ReplyStart, Token, ReplyDone, Interrupted, ErrorEvent) to the front end, SpeechMessages to the speech stage,
ReplyEnded to the capture stage, ModelReport to the status board.

Each reply streams as display-safe Token events (control sequences stripped, see ``voiceassist.replytext``). A
failing turn becomes an ErrorEvent and the stage goes on with the next one, except a failure the backend marks
``retryable`` (a server that could not be reached, timed out or failed: ``BackendError.retryable``): that turn
is kept and sent again after a doubling pause (``retry.backoff_pause``) until it goes through or is cancelled;
turns that arrive meanwhile wait behind it. Ctrl-C, /reset or the App's stop in that pause gives the turn up (it
stays out of the conversation); the wake word or the key stops it as any pending reply (below). Either way the
turn's events end as every stopped reply's: reply_start, interrupted (not at the App's stop), reply_done. A
local model's failure (e.g. out of memory) is not retryable: it would only fail again.

A stop by the user (the wake word, the push-to-talk key: ``cancel(reason, waiting=True)``) while a reply is
pending — its turn still waiting in the queue, or the prefill, the generation, or the first sentence's synthesis
running, nothing of it heard yet — cancels that reply and every turn submitted before the stop: each such turn
is still added to the conversation (the backend's cancel path: the user's turn with an empty reply marked
interrupted, exactly what a barge-in before the first sound leaves), and gets its events (utterance, one
``interrupted``, ``reply_done``); nothing of it is spoken. Turns submitted after the stop (the question after the
wake word) are answered as usual.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceassist.audio.cutting import level_profile, split_chunks
from voiceassist.backend import (
    Backend,
    ReplyResult,
    Speculating,
    SpeculatingReply,
    UserTurn,
    reply_truncator,
)
from voiceassist.config import Config
from voiceassist.errors import BackendError, VoiceAssistError, one_line
from voiceassist.events import (
    SAMPLE_RATE,
    ErrorEvent,
    Event,
    Interrupted,
    ReplyDone,
    ReplyStart,
    Token,
    UtteranceEvent,
    now,
)
from voiceassist.pipeline.messages import (
    HEARD_STOPS,
    BeginReply,
    CaptureControl,
    DiscardPrepared,
    EndOfReply,
    InterruptReason,
    ModelControl,
    ModelReport,
    PrepareSentence,
    ReplyEnded,
    ResetConversation,
    SetSpeculativeSentence,
    SpeakText,
    SpeculationRequest,
    SpeechMessage,
    TruncateReply,
    TurnRequest,
)
from voiceassist.pipeline.queues import TurnQueue, take_waiting
from voiceassist.replytext import StreamStripper
from voiceassist.retry import backoff_pause
from voiceassist.speech.sentences import first_sentence

if TYPE_CHECKING:
    from voiceassist.pipeline.speech import SpokenReplies

IDLE_POLL_S = 0.01  # s between looks at the control queue and speculation requests while idle
RETRY_FIRST_S = 1.0  # first pause before a failed (retryable) turn is sent again, s; doubles each retry
RETRY_MAX_S = 30.0  # longest pause between two sends of a failed turn, s
# After a reply ends, ReplyDone waits this long at most for the speech stage's report of the reply's first sound
# (voice_latency_s). Usually the sound came long before; a short reply ends before its one sentence is
# synthesised (~20-60 ms with espeak). One event with every figure beats a later correction event for whoever
# logs turns (kiosk log, --events); the bound keeps a stuck speech engine from holding up the next turn (the
# figure is then null).
VOICE_WAIT_S = 2.0


@dataclass
class _Reply:
    """The reply in progress (model thread only, but for ``cancel``, which sets ``cancel`` and ``reason``)."""

    turn: int
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: InterruptReason = "cancel"


class ModelStage:
    """See the module docstring. ``run()`` is the model thread's body."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        *,
        speculator: Speculating | None,
        control: queue.SimpleQueue[ModelControl],
        turns: TurnQueue,
        speculation: queue.Queue[SpeculationRequest],
        speech: Callable[[SpeechMessage], None],
        capture_control: queue.SimpleQueue[CaptureControl],
        report: Callable[..., None],
        emit: Callable[[Event], None],
        clock: Callable[[], float],
        stop: threading.Event,
        on_idle: Callable[[], None],
        reply_speculator: SpeculatingReply | None = None,
        spoken: SpokenReplies | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self._speculator = speculator  # the backend's speculative prefill (None: not offered)
        self._reply_speculator = reply_speculator  # ... and its speculative first sentence (None: not offered)
        self._spoken = spoken  # the speech stage's read-only view: is speech on, when did a reply sound
        self.control = control  # App, speech stage → here
        self._turns = turns
        self._speculation = speculation
        self._speech = speech
        self._capture_control = capture_control  # this stage writes ReplyEnded; the capture stage reads
        self._report_to = report
        self._emit_to = emit
        self._clock = clock
        self._stop = stop
        self._on_idle = on_idle
        self._numbers = 0  # the last turn number given
        self._current: _Reply | None = None
        self._cancel_lock = threading.Lock()  # orders cancel() against the start and end of a reply
        # A stop cancelled every turn up to this submission number (TurnQueue numbering), with this reason: the
        # ones still waiting are cancelled when taken. Written by cancel() under the lock, read at a turn's start.
        self._cancelled_through = 0
        self._cancelled_reason: InterruptReason = "cancel"
        self._history: list[dict[str, Any]] = []
        self._history_lock = threading.Lock()  # history() is read from the UI thread
        self.speculations_started = 0  # speculative prefills begun (a figure for tests)
        self.first_sentences_prepared = 0  # speculative first sentences sent to the speech stage (tests, benchmarks)
        self._first_sentence_on = config.tts.speculative_first_sentence  # SetSpeculativeSentence changes it
        self.retry_first_s = RETRY_FIRST_S
        self.retry_max_s = RETRY_MAX_S

    # ---- what other threads may call ------------------------------------------------------------------------
    def cancel(self, reason: InterruptReason, waiting: bool = False) -> None:
        """Cancel the reply in progress (any thread). ``waiting``: a stop (the wake word, the key) — also every
        turn submitted before now and not yet taken; each is still added to the conversation with an empty,
        interrupted reply (see the module docstring)."""
        with self._cancel_lock:
            if waiting:
                self._cancelled_through = self._turns.last_submitted()
                self._cancelled_reason = reason
            current = self._current
            if current is not None and not current.cancel.is_set():
                current.reason = reason
                current.cancel.set()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def history(self) -> list[dict[str, Any]]:
        with self._history_lock:
            return [dict(h) for h in self._history]

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stop.is_set():
            self._do_control()
            try:
                # A short wait: a speculative prefill asked for by the capture stage starts within 10 ms
                # (a turn itself wakes the stage at once).
                seq, turn = self._turns.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                self._maybe_speculate()
                self._on_idle()
                continue
            try:
                self._run_turn(turn, seq)
            except Exception as err:  # noqa: BLE001 - a bug in one turn must not end the assistant
                self._error(f"turn failed: {one_line(err)}", "app")
            finally:
                self._set_current(None)
                self._turns.done()
                self._report(ModelReport(busy=False))
                self._on_idle()

    def _set_current(self, reply: _Reply | None, seq: int = 0) -> None:
        """``reply`` is in progress (None: none); ``seq``: its turn's submission number — a turn a stop
        cancelled while it waited starts cancelled, with the stop's reason."""
        with self._cancel_lock:
            self._current = reply
            if reply is not None and seq and seq <= self._cancelled_through:
                reply.reason = self._cancelled_reason
                reply.cancel.set()

    def _emit(self, event: Event) -> None:
        self._emit_to(event)

    def _report(self, msg: ModelReport | None = None, t: float | None = None, detail: str = "", force: bool = False):
        self._report_to(msg, t=t, detail=detail, force=force)

    def _error(self, message: str, source: str, t: float | None = None, **about: Any) -> None:
        self._emit_to(ErrorEvent(message, source, t=self._clock() if t is None else t, **about))

    # ---- control work between turns ---------------------------------------------------------------------------
    def _do_control(self) -> set[int]:
        """Handle the control messages waiting; return the turns an Interrupted event was emitted for."""
        marked: set[int] = set()
        for msg in take_waiting(self.control):
            match msg:
                case ResetConversation():
                    try:
                        self.backend.reset()
                    except Exception as err:  # noqa: BLE001
                        self._error(f"reset failed: {one_line(err)}", "model")
                        continue
                    with self._history_lock:
                        self._history.clear()
                    self._report(detail="new conversation", force=True)
                case TruncateReply():
                    if self._truncate(msg):
                        marked.add(msg.turn)
                case SetSpeculativeSentence(on=on):
                    self._first_sentence_on = on
        return marked

    def _truncate(self, msg: TruncateReply) -> bool:
        """Barge-in / ptt / wake word over playback: the history keeps only what was heard, marked as
        interrupted. True if it did (and emitted Interrupted)."""
        with self._history_lock:
            at = next((i for i in range(len(self._history) - 1, -1, -1) if self._history[i]["turn"] == msg.turn), -1)
            entry = self._history[at] if at >= 0 else None
            # The backend holds a turn for each reply that finished (_finish_reply put its figures in the entry);
            # an errored or given-up turn left none. Those after this one name it to the backend.
            later = sum(1 for e in self._history[at + 1 :] if "n_tokens" in e)
        if entry is None or "n_tokens" not in entry:
            return False  # not this conversation's (a reset since), or a turn the backend never took (given up)
        try:
            if later == 0:
                self.backend.truncate_last_reply(msg.spoken)
            elif (earlier := reply_truncator(self.backend)) is not None:
                earlier.truncate_reply(msg.spoken, later)
            else:
                return False  # a backend that can cut only its last reply: this one stays whole
        except Exception as err:  # noqa: BLE001
            self._error(f"could not cut the reply back to what was spoken: {one_line(err)}", "model")
            return False
        with self._history_lock:
            entry["reply"] = msg.spoken
            entry["interrupted"] = True
        self._emit(Interrupted(msg.turn, msg.reason, msg.spoken))
        return True

    # ---- speculative prefill ------------------------------------------------------------------------------------
    def _maybe_speculate(self) -> None:
        try:
            spec = self._speculation.get_nowait()
        except queue.Empty:
            return
        if self._speculator is None or not spec.claim():
            return
        self.speculations_started += 1
        try:
            if self._speculator.speculate(UserTurn(audios=tuple(spec.utterance.chunks)), spec.cancel):
                self._speculate_first_sentence(spec.cancel)
        except Exception as err:  # noqa: BLE001 - a failed speculation costs nothing but the time
            self._error(f"speculative prefill failed: {one_line(err)}", "model")

    def _speculate_first_sentence(self, cancel: threading.Event) -> None:
        """After the speculative prefill, still inside the hang-over (issue 15): decode the reply up to its first
        sentence and have the speech stage synthesise it without playing (PrepareSentence). When the turn
        comes, the backend hands that text out at once and the held sound plays. Speech resuming (``cancel``)
        rolls the decode back in the backend (ids, cache, sampler state) and the held sound is discarded. The
        real turn arriving stops the decode where it is: nothing is lost, the reply goes on from there."""
        ahead = self._reply_speculator
        if (
            ahead is None
            or not self._first_sentence_on
            or self._spoken is None
            or not self._spoken.output_on()
            or cancel.is_set()
        ):
            return

        def speakable_start(text: str, final: bool) -> str | None:
            stripper = StreamStripper()  # what the speech stage will be fed: display-safe text, as in _attempt
            clean = stripper.feed(text) + (stripper.finish() if final else "")
            return first_sentence(clean, final)

        def enough(text: str) -> bool:
            return self._turns.waiting() > 0 or self._stop.is_set() or speakable_start(text, False) is not None

        text = ahead.speculate_reply(enough, cancel)
        if text is None or cancel.is_set():
            return  # rolled back (speech resumed), or it failed: the real turn does the work
        sentence = speakable_start(text, ahead.speculation_complete)
        if sentence:
            self.first_sentences_prepared += 1
            self._speech(PrepareSentence(sentence))
            if cancel.is_set():  # speech resumed meanwhile: the backend rolls back at the next call; drop the sound
                self._speech(DiscardPrepared())

    # ---- one turn -----------------------------------------------------------------------------------------------
    def _read_file(self, turn: TurnRequest, number: int) -> tuple[tuple[Any, ...], bool] | None:
        from voiceassist.audio.files import read_audio_16k

        name = Path(turn.path).name
        try:
            audio = read_audio_16k(turn.path)
        except VoiceAssistError as err:
            self._error(one_line(err), "audio", turn=number, dropped=True, file=name)
            return None
        vad = self.config.vad
        audios, capped = split_chunks(audio, vad.max_chunk_s, vad.max_chunks_per_turn, vad.cut_search_s)
        if capped:
            kept_s = sum(len(a) for a in audios) / SAMPLE_RATE
            self._error(
                f"{name}: only the first {kept_s:.0f} s of {len(audio) / SAMPLE_RATE:.0f} s are analysed "
                f"({vad.max_chunks_per_turn} audios of ≤ {vad.max_chunk_s:.0f} s: "
                "vad.max_chunks_per_turn)",
                "audio",
                turn=number,
            )
        return tuple(audios), capped

    def _run_turn(self, turn: TurnRequest, seq: int = 0) -> None:
        self._numbers += 1
        number = self._numbers
        audios, capped, file_name = turn.audios, turn.capped, ""
        if turn.kind == "file":
            read = self._read_file(turn, number)
            if read is None:
                return
            audios, capped = read
            file_name = Path(turn.path).name
        skew = turn.skew

        def clock() -> float:
            return now() + skew

        entry: dict[str, Any] = {
            "turn": number,
            "kind": turn.kind,
            "text": turn.text,
            "file": turn.path,
            "audios": list(audios),
            "durations": [round(len(a) / SAMPLE_RATE, 3) for a in audios],
            "capped": capped,
            "reply": "",
            "interrupted": False,
            "speech_end_t": turn.speech_end_t,
        }
        with self._history_lock:
            self._history.append(entry)
        self._emit(
            UtteranceEvent(
                turn=number,
                durations=tuple(len(a) / SAMPLE_RATE for a in audios),
                text=turn.text,
                capped=capped,
                levels=level_profile(tuple(audios)),
                speech_end_t=turn.speech_end_t,
                t=clock(),
                file=file_name,
            )
        )
        reply = _Reply(number)
        self._set_current(reply, seq)
        self._report(ModelReport(busy=True), clock())
        self._speech(BeginReply(number))
        attempt, last_pass = 0, False
        while True:  # one pass per attempt: a retryable failure keeps the turn and sends it again
            stripper = StreamStripper()
            picked = now()
            first: list[float] = []  # wall time of the first text piece
            failure, result = self._attempt(number, turn, audios, reply.cancel, stripper, picked, first)
            if failure is None and result is not None:
                break
            msg = (
                one_line(failure)
                if isinstance(failure, BackendError)
                else (f"the model failed ({type(failure).__name__}: {one_line(failure)})")
            )
            entry["error"] = msg
            if first:
                self._emit(ReplyDone(number, stripper.text, 0, 0.0, first[0] - picked, interrupted=True, t=clock()))
            retry = isinstance(failure, BackendError) and failure.retryable and not self._stop.is_set()
            if retry and reply.cancel.is_set() and not last_pass:
                # A stop that came as the send failed (after the backend's last look at the cancel): one more
                # pass, with the cancel set, takes the backend's cancel path; the turn ends interrupted and kept.
                last_pass = True
                continue
            if not retry or reply.cancel.is_set():
                self._set_current(None)
                self._error(
                    f"turn {number}: {msg}; the conversation is as before this turn", "model", clock(), turn=number
                )
                return
            # No turn is lost: the turn (its audio in hand) waits here and is sent again; the capture stage
            # goes on listening and new turns queue behind it. Ctrl-C (cancel), /reset or stop ends the wait.
            attempt += 1
            pause = backoff_pause(attempt, self.retry_first_s, self.retry_max_s)
            self._error(
                f"turn {number}: {msg}; the turn is kept and sent again in {pause:g} s (retry {attempt})",
                "model",
                clock(),
                turn=number,
            )
            self._report(detail=f"turn {number} waits to be sent again ({pause:g} s)", force=True)
            if reply.cancel.wait(pause) or self._stop.is_set():
                if reply.cancel.is_set() and reply.reason in HEARD_STOPS and not self._stop.is_set():
                    # The wake word or the key: a stop of a reply still pending (the module docstring). One
                    # more pass, with the cancel set, takes the backend's cancel path (nothing is sent: the
                    # turn joins the conversation with an empty reply marked interrupted), and the turn ends
                    # as every stop does: interrupted, reply_done, ReplyEnded(stopped).
                    self._report(detail=f"turn {number} stopped ({reply.reason}) before it was sent again", force=True)
                    continue
                self._give_up(number, reply, turn, picked, clock())
                return
            self._report(detail=f"sending turn {number} again (retry {attempt})", force=True)
        self._set_current(None)
        entry.pop("error", None)
        if attempt:
            entry["retries"] = attempt
        if not result.interrupted:
            # Before ReplyDone: whoever sees the reply done must find its last words already queued (the
            # speaker "speaking"), not a gap in which the echo window looks closed.
            self._speech(EndOfReply(number))
        voice_t = None
        if self._spoken is not None:
            voice_t = self._spoken.first_sound(number, 0.0 if result.interrupted else VOICE_WAIT_S, self._stop)
        self._finish_reply(number, result, reply.reason, stripper.text, first, picked, turn, entry, voice_t)

    def _give_up(self, number: int, reply: _Reply, turn: TurnRequest, picked: float, t: float) -> None:
        """A failed turn's wait to be sent again ended by Ctrl-C or the App's stop: the turn is not sent again
        and stays out of the conversation; its events end as every reply's do (reply_start, one interrupted
        but at the App's stop, reply_done), and the capture stage hears that the reply is over."""
        self._set_current(None)
        first: list[float] = []
        self._reply_start(number, turn, now(), picked, first)
        if reply.cancel.is_set() and reply.reason != "stop":
            self._emit(Interrupted(number, reply.reason, ""))
        self._emit(ReplyDone(number, "", 0, 0.0, first[0] - picked, interrupted=True, t=t))
        stopped = reply.cancel.is_set() and reply.reason in HEARD_STOPS
        self._capture_control.put(ReplyEnded(number, t, True, stopped))
        self._report(detail=f"turn {number} given up ({reply.reason}), not sent again", force=True)

    def _attempt(
        self,
        number: int,
        turn: TurnRequest,
        audios: tuple[Any, ...],
        cancel: threading.Event,
        stripper: StreamStripper,
        picked: float,
        first: list[float],
    ) -> tuple[Exception | None, ReplyResult | None]:
        """One call of the backend for the turn: (failure, None) or (None, ReplyResult). Streams Token events
        (and the speech stage) as text arrives; ``first`` gets the wall time of the first text piece."""
        skew = turn.skew

        def on_text(piece: str) -> None:
            if not first:
                self._reply_start(number, turn, now(), picked, first)
            emit(stripper.feed(piece))

        def emit(delta: str) -> None:
            if not delta:
                return
            self._emit(Token(number, delta, t=now() + skew))
            self._speech(SpeakText(number, delta))

        failure: Exception | None = None
        result = None
        try:
            result = self.backend.reply(UserTurn(audios=tuple(audios), text=turn.text), on_text, cancel)
        except Exception as err:  # noqa: BLE001 - BackendError, or a bug below it: the turn fails, not the app
            failure = err
        emit(stripper.finish())
        return failure, result

    def _reply_start(self, number: int, turn: TurnRequest, t: float, picked: float, first: list[float]) -> None:
        first.append(t)
        latency = None if turn.speech_end_t is None else t + turn.skew - turn.speech_end_t
        self._emit(ReplyStart(number, t - picked, latency, t=t + turn.skew))

    def _finish_reply(
        self,
        number: int,
        result: ReplyResult,
        reason: InterruptReason,
        text: str,
        first: list[float],
        picked: float,
        turn: TurnRequest,
        entry: dict[str, Any],
        voice_t: float | None = None,
    ) -> None:
        if not first:  # an empty reply: still one reply_start, so every turn's events have the same shape
            self._reply_start(number, turn, now(), picked, first)
        skew = turn.skew
        ttft = first[0] - picked
        latency = None if turn.speech_end_t is None else first[0] + skew - turn.speech_end_t
        # voice_t is on the monotonic clock like now(); + skew puts it on the capture clock (fast files).
        voice = None if turn.speech_end_t is None or voice_t is None else voice_t + skew - turn.speech_end_t
        speculator = self._speculator
        with self._history_lock:
            entry.update(
                reply=text,
                interrupted=bool(result.interrupted),
                n_tokens=result.n_tokens,
                tok_per_s=round(result.tok_per_s, 2),
                ttft_s=round(ttft, 4),
                latency_s=None if latency is None else round(latency, 4),
                voice_latency_s=None if voice is None else round(voice, 4),
                context_tokens=result.context_tokens,
                speculated=bool(speculator is not None and speculator.last_speculated),
            )
        if result.interrupted and reason != "stop":
            # Every stop of a reply is marked by one Interrupted, before its ReplyDone, whatever stopped it and
            # whether the turn was typed or spoken. A stop over playback (barge-in, the key, the wake word)
            # queued a truncation before the cancel: handled here, it emits Interrupted(kept = heard). A stop
            # before any of the reply was heard queued none: the key or the wake word (HEARD_STOPS) cut a reply
            # that was to be spoken back to what was heard of it, "" (as a barge-in before the first sound);
            # Ctrl-C, or any stop of a reply not spoken (speech output off), keeps what was shown.
            if number not in self._do_control():
                heard = self._spoken.heard(number) if self._spoken is not None and reason in HEARD_STOPS else None
                if heard is None or not self._truncate(TruncateReply(number, heard, reason)):
                    self._emit(Interrupted(number, reason, text))
        t_done = now() + skew
        self._emit(
            ReplyDone(
                number,
                text,
                result.n_tokens,
                result.tok_per_s,
                ttft,
                latency,
                result.context_tokens,
                bool(result.interrupted),
                voice_latency_s=voice,
                t=t_done,
            )
        )
        stopped = bool(result.interrupted) and reason in HEARD_STOPS
        self._capture_control.put(ReplyEnded(number, t_done, bool(result.interrupted), stopped))
        if result.dropped_turns:
            self._report(
                detail=f"the {result.dropped_turns} oldest turn(s) were dropped to fit the context", force=True
            )
