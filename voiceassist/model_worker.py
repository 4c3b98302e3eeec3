"""The App's model worker thread: the only caller of the Backend.

It takes turns from ``_turns`` one at a time, streams the reply as display-safe Token events (control
sequences stripped, see ``voiceassist.replytext``), feeds the speaker, and between turns does the UI's
control work (reset, truncating a reply that was cut by barge-in) and speculative prefills. A failing turn
becomes an ErrorEvent and the worker goes on with the next one, except a failure the backend marks
``retryable`` (a server that could not be reached, timed out or failed: ``BackendError.retryable``): that turn is
kept and sent again after a doubling pause (``retry_first_s`` … ``retry_max_s``) until it goes through or is
cancelled (Ctrl-C, /reset, stop); turns that arrive meanwhile wait behind it. A local model's failure (e.g. out
of memory) is not retryable: it would only fail again. Mixed into :class:`voiceassist.app.App`.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

from voiceassist.appbase import PendingTurn, one_line, quietly
from voiceassist.backend import UserTurn
from voiceassist.errors import BackendError, VoiceAssistError
from voiceassist.events import Interrupted, ReplyDone, ReplyStart, Token, UtteranceEvent, now
from voiceassist.recording import level_profile, split_chunks
from voiceassist.replytext import StreamStripper
from voiceassist.speech.sentences import first_sentence

IDLE_POLL_S = 0.01  # s between looks at the control queue and speculation requests while idle
# After a reply ends, ReplyDone waits this long at most for the speaker's report of the reply's first sound
# (voice_latency_s). Usually the sound came long before; a short reply ends before its one sentence is
# synthesised (~20-60 ms with espeak). One event with every figure beats a later correction event for whoever
# logs turns; the bound keeps a stuck speech engine from holding up the next turn (it then reads null).
VOICE_WAIT_S = 2.0


class ModelWorker:
    """Mixin of App: the worker loop and one turn's reply."""

    def _worker_loop(self: Any) -> None:
        while not self._stop.is_set():
            self._do_control()
            try:
                # A short wait: a speculative prefill asked for by the capture thread starts within 10 ms
                # (a turn itself wakes the worker at once).
                turn = self._turns.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                self._maybe_speculate()
                self._check_done()
                continue
            try:
                self._run_turn(turn)
            except Exception as err:  # noqa: BLE001 - a bug in one turn must not end the assistant
                self._error(f"turn failed: {one_line(err)}", "app")
            finally:
                self._current = None
                self._busy = False
                with self._lock:
                    self._pending -= 1
                self._refresh_state()
                self._check_done()

    # ---- control work between turns ---------------------------------------------------------------------------
    def _do_control(self: Any) -> None:
        while True:
            try:
                what, arg = self._control.get_nowait()
            except queue.Empty:
                return
            if what == "reset":
                try:
                    self.backend.reset()
                except Exception as err:  # noqa: BLE001
                    self._error(f"reset failed: {one_line(err)}", "model")
                    continue
                with self._lock:
                    self._history.clear()
                self._refresh_state(detail="new conversation", force=True)
            elif what == "truncate":
                self._truncate(*arg)

    def _truncate(self: Any, turn: int, spoken: str, reason: str) -> None:
        """Barge-in / ptt over playback: the history keeps only what was heard, marked as interrupted."""
        with self._lock:
            entry = self._history[-1] if self._history else None
        if entry is None or entry["turn"] != turn:
            return  # the speaker was on an older turn; the conversation has moved on
        try:
            self.backend.truncate_last_reply(spoken)
        except Exception as err:  # noqa: BLE001
            self._error(f"could not cut the reply back to what was spoken: {one_line(err)}", "model")
            return
        with self._lock:
            entry["reply"] = spoken
            entry["interrupted"] = True
        self._put(Interrupted(turn, reason, spoken))

    # ---- speculative prefill ------------------------------------------------------------------------------------
    def _maybe_speculate(self: Any) -> None:
        spec, self._spec = self._spec, None
        if spec is None or spec[1].is_set():
            return
        utt, cancel = spec
        self._spec_running = cancel
        self.speculations_started += 1
        try:
            if self.backend.speculate(UserTurn(audios=tuple(utt.chunks)), cancel) and not cancel.is_set():
                self._speculate_first_sentence(cancel)
        except Exception as err:  # noqa: BLE001 - a failed speculation costs nothing but the time
            self._error(f"speculative prefill failed: {one_line(err)}", "model")
        finally:
            self._spec_running = None

    def _speculate_first_sentence(self: Any, cancel: threading.Event) -> None:
        """After the speculative prefill, still inside the hang-over: decode the reply up to its first sentence
        and have the speaker synthesise it without playing (issue 15). When the turn comes, the session hands
        that text out at once and the speaker plays the prepared sound. Speech resuming (``cancel``) rolls the
        decode back inside the session; a prepared sentence that the real reply does not start with is dropped
        by the speaker. The real turn arriving stops the decode where it is (nothing is lost)."""
        speaker = self.speaker if self._tts_on else None
        speculate_reply = getattr(self.backend, "speculate_reply", None)
        if (
            not self.config.tts.speculative_first_sentence
            or speaker is None
            or speculate_reply is None
            or not callable(getattr(speaker, "prepare", None))
        ):
            return

        def speakable_start(text: str, final: bool) -> str | None:
            stripper = StreamStripper()  # what the speaker will be fed: display-safe text, as in _attempt
            clean = stripper.feed(text) + (stripper.finish() if final else "")
            return first_sentence(clean, final)

        def enough(text: str) -> bool:
            return not self._turns.empty() or self._stop.is_set() or speakable_start(text, False) is not None

        text = speculate_reply(enough, cancel)
        if text is None or cancel.is_set():
            return  # rolled back (speech resumed), or it failed: the real turn does the work
        sentence = speakable_start(text, bool(getattr(self.backend, "speculation_complete", False)))
        if sentence:
            self.first_sentences_prepared += 1
            speaker.prepare(sentence)

    # ---- one turn -----------------------------------------------------------------------------------------------
    def _run_turn(self: Any, turn: PendingTurn) -> None:
        number = next(self._turn_numbers)
        audios, capped, file_name = turn.audios, turn.capped, ""
        if turn.kind == "file":
            from voiceassist.audio.files import read_audio_16k

            file_name = Path(turn.path).name
            try:
                audio = read_audio_16k(turn.path)
            except VoiceAssistError as err:
                self._error(one_line(err), "audio")
                return
            vad = self.config.vad
            audios, capped = split_chunks(audio, vad.max_chunk_s, vad.max_chunks_per_turn, vad.cut_search_s)
            if capped:
                kept_s = sum(len(a) for a in audios) / 16000
                self._error(
                    f"{file_name}: only the first {kept_s:.0f} s of {len(audio) / 16000:.0f} s are analysed "
                    f"({vad.max_chunks_per_turn} audios of ≤ {vad.max_chunk_s:.0f} s: "
                    "vad.max_chunks_per_turn)",
                    "audio",
                )
        skew = turn.skew

        def clock() -> float:
            return now() + skew

        entry: dict[str, Any] = {
            "turn": number,
            "kind": turn.kind,
            "text": turn.text,
            "file": turn.path,
            "audios": list(audios),
            "durations": [round(len(a) / 16000, 3) for a in audios],
            "capped": capped,
            "reply": "",
            "interrupted": False,
            "speech_end_t": turn.speech_end_t,
        }
        with self._lock:
            self._history.append(entry)
        self._put(
            UtteranceEvent(
                turn=number,
                durations=tuple(len(a) / 16000 for a in audios),
                text=turn.text,
                capped=capped,
                levels=level_profile(tuple(audios)),
                speech_end_t=turn.speech_end_t,
                t=clock(),
                **_file_field(file_name),
            )
        )
        cancel, reason = threading.Event(), ["cancel"]
        self._current = (number, cancel, reason)
        self._busy = True
        self._refresh_state(clock())
        speaker = self.speaker if self._tts_on else None
        attempt = 0
        while True:  # one pass per attempt: a retryable failure keeps the turn and sends it again
            stripper = StreamStripper()
            picked = now()
            first: list[float] = []  # wall time of the first text piece
            failure, result = self._attempt(number, turn, audios, cancel, stripper, picked, first, speaker)
            if failure is None and result is not None:
                break
            msg = (
                one_line(failure)
                if isinstance(failure, BackendError)
                else (f"the model failed ({type(failure).__name__}: {one_line(failure)})")
            )
            entry["error"] = msg
            if first:
                self._put(ReplyDone(number, stripper.text, 0, 0.0, first[0] - picked, interrupted=True, t=clock()))
            retry = (
                isinstance(failure, BackendError)
                and getattr(failure, "retryable", False)
                and not cancel.is_set()
                and not self._stop.is_set()
            )
            if not retry:
                self._current = None
                self._error(f"turn {number}: {msg}; the conversation is as before this turn", "model", clock())
                return
            # No turn is lost: the turn (its audio in hand) waits here and is sent again; the capture thread
            # goes on listening and new turns queue behind it. Ctrl-C (cancel), /reset or stop ends the wait.
            attempt += 1
            pause = min(self.retry_first_s * 2 ** (attempt - 1), self.retry_max_s)
            self._error(
                f"turn {number}: {msg}; the turn is kept and sent again in {pause:g} s (retry {attempt})",
                "model",
                clock(),
            )
            self._refresh_state(detail=f"turn {number} waits to be sent again ({pause:g} s)", force=True)
            if cancel.wait(pause) or self._stop.is_set():
                self._current = None
                if reason[0] == "cancel":
                    self._put(Interrupted(number, "cancel", ""))
                self._refresh_state(detail=f"turn {number} given up ({reason[0]}), not sent again", force=True)
                return
            self._refresh_state(detail=f"sending turn {number} again (retry {attempt})", force=True)
        self._current = None
        entry.pop("error", None)
        if attempt:
            entry["retries"] = attempt
        if speaker is not None and self._tts_on and not result.interrupted:
            # Before ReplyDone: whoever sees the reply done must find its last words already queued (the
            # speaker "speaking"), not a gap in which the echo window looks closed.
            quietly(lambda: speaker.end_reply(number))
        voice_t = self._first_sound(speaker, number, bool(result.interrupted))
        self._finish_reply(number, result, reason[0], stripper.text, first, picked, skew, turn, entry, voice_t)

    def _first_sound(self: Any, speaker: Any, number: int, interrupted: bool) -> float | None:
        """Capture-clock time the reply's first sample reached the output device; None if not spoken."""
        first_sound = getattr(speaker, "first_sound", None)
        if first_sound is None:
            return None
        try:
            return first_sound(number, 0.0 if interrupted else VOICE_WAIT_S, self._stop)
        except Exception:  # noqa: BLE001 - a broken speaker: the reply simply has no voice figure
            return None

    def _attempt(
        self: Any,
        number: int,
        turn: PendingTurn,
        audios: Any,
        cancel: threading.Event,
        stripper: StreamStripper,
        picked: float,
        first: list[float],
        speaker: Any,
    ) -> tuple[Exception | None, Any]:
        """One call of the backend for the turn: (failure, None) or (None, ReplyResult). Streams Token events
        (and the speaker) as text arrives; ``first`` gets the wall time of the first text piece."""
        skew = turn.skew

        def start_reply(t: float) -> None:
            first.append(t)
            latency = None if turn.speech_end_t is None else t + skew - turn.speech_end_t
            self._put(ReplyStart(number, t - picked, latency, t=t + skew))

        def on_text(piece: str) -> None:
            if not first:
                start_reply(now())
            emit(stripper.feed(piece))

        def emit(delta: str) -> None:
            if not delta:
                return
            self._put(Token(number, delta, t=now() + skew))
            if speaker is not None and self._tts_on:
                self._speaking_turn = number
                try:
                    speaker.feed(number, delta)
                except Exception as err:  # noqa: BLE001 - speech is optional; the text goes on
                    self._error(f"speech output failed: {one_line(err)}", "tts")

        failure: Exception | None = None
        result = None
        try:
            result = self.backend.reply(UserTurn(audios=tuple(audios), text=turn.text), on_text, cancel)
        except Exception as err:  # noqa: BLE001 - BackendError, or a bug below it: the turn fails, not the app
            failure = err
        emit(stripper.finish())
        return failure, result

    def _finish_reply(
        self: Any,
        number: int,
        result: Any,
        reason: str,
        text: str,
        first: list[float],
        picked: float,
        skew: float,
        turn: PendingTurn,
        entry: dict[str, Any],
        voice_t: float | None = None,
    ) -> None:
        if not first:  # an empty reply: still one reply_start, so every turn's events have the same shape
            t = now()
            first.append(t)
            latency = None if turn.speech_end_t is None else t + skew - turn.speech_end_t
            self._put(ReplyStart(number, t - picked, latency, t=t + skew))
        ttft = first[0] - picked
        latency = None if turn.speech_end_t is None else first[0] + skew - turn.speech_end_t
        # voice_t is on the monotonic clock like now(); + skew puts it on the capture clock (fast files).
        voice = None if turn.speech_end_t is None or voice_t is None else voice_t + skew - turn.speech_end_t
        with self._lock:
            entry.update(
                reply=text,
                interrupted=bool(result.interrupted),
                n_tokens=result.n_tokens,
                tok_per_s=round(result.tok_per_s, 2),
                ttft_s=round(ttft, 4),
                latency_s=None if latency is None else round(latency, 4),
                voice_latency_s=None if voice is None else round(voice, 4),
                context_tokens=result.context_tokens,
                speculated=bool(getattr(self.backend, "last_speculated", False)),
            )
        if result.interrupted:
            if reason in ("barge_in", "ptt"):
                self._do_control()  # the truncation queued by the interrupt: emits Interrupted(kept = heard)
            elif reason == "cancel":
                self._put(Interrupted(number, "cancel", text))
        self._put(
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
                t=now() + skew,
            )
        )
        if getattr(result, "dropped_turns", 0):
            self._refresh_state(
                detail=f"the {result.dropped_turns} oldest turn(s) were dropped to fit the context", force=True
            )


def _file_field(name: str) -> dict[str, str]:
    """``file=`` for UtteranceEvent when events.py has that field (added for /file turns)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(UtteranceEvent)}
    return {"file": name} if name and "file" in fields else {}
