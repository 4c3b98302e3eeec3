"""The App's capture thread: source → level meter → (muted | push-to-talk recorder | VAD segmenter) → turns.

It never blocks on the front end (events are put without waiting) and, for a microphone, never on the model
(a turn that finds the turn queue full is dropped with an error). Only a fast file waits: it runs in lock step
with the model worker (see ``voiceassist.app``). The methods here are mixed into :class:`voiceassist.app.App`
and run only on the capture thread, except where noted.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from voiceassist.appbase import (
    DIGITAL_SILENCE,
    LEVEL_EVERY_S,
    POLL_S,
    RECORDING_STATUS_EVERY_S,
    RETRY_DEVICE_S,
    PendingTurn,
    one_line,
    quietly,
    speaking,
)
from voiceassist.errors import AudioFileError
from voiceassist.events import AudioBlock, Level, Utterance, now
from voiceassist.recording import SAMPLE_RATE, sound_bounds, split_chunks, trim_silence

SPEC_PICKUP_WAIT_S = 5.0  # a fast file waits at most this long for the worker to take a speculation, s


class CaptureThread:
    """Mixin of App: the capture thread's loop and its per-block work."""

    def _capture_loop(self: Any) -> None:
        from voiceassist.audio.sources import EndOfInput

        self._seg = None  # the Segmenter; None = build a fresh one before the next block it gets
        self._level_next_t = float("-inf")
        self._silent_s = 0.0  # digital silence so far, s
        self._silence_warned = False
        self._rec: list[AudioBlock] | None = None  # push-to-talk recording in progress
        self._rec_status_s = 0.0
        self._utt_echo = False  # the current speech overlapped the assistant's playback (or its echo tail)
        self._barged = False  # ... and barged in, so it is a real turn after all
        self._speech_start_t: float | None = None
        self._pace: tuple[float, float] | None = None  # (wall, block clock) while pacing a fast hang-over
        self._last_end_t = now()
        last_error = ""
        while not self._stop.is_set():
            self._poll_speaker()
            try:
                block = self.source.read(2 * POLL_S)
            except EndOfInput:
                self._end_of_input()
                return
            except AudioFileError as err:
                self._error(one_line(err), "audio")
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
            except Exception as err:  # noqa: BLE001 - a bug on one block must not end listening
                message = f"audio processing failed: {one_line(err)}"
                if message != last_error:  # once, not once per block
                    self._error(message, "app")
                last_error = message
                self._seg, self._rec, self._recording_s, self._hearing = None, None, None, False

    # ---- per block ------------------------------------------------------------------------------------------
    def _on_block(self: Any, block: AudioBlock) -> None:
        dur = len(block.samples) / SAMPLE_RATE
        t_end = block.t + dur
        if self._pace is not None:
            # A fast file inside a hang-over, with speculation on: deliver in real time, so that the worker's
            # speculative prefill overlaps the hang-over as it would with a microphone.
            wall0, t0 = self._pace
            wait = wall0 + (t_end - t0) - now()
            if wait > 0:
                time.sleep(wait)
        self._last_end_t = t_end
        self._level(block, dur)
        if self._muted:
            self._seg = None
            self._hearing = False
            return
        if self._mode == "ptt":
            self._seg = None
            self._hearing = False
            if self._rec is not None:
                self._rec.append(block)
                held = sum(len(b.samples) for b in self._rec) / SAMPLE_RATE
                if held - self._rec_status_s >= RECORDING_STATUS_EVERY_S:
                    self._rec_status_s = held
                    self._recording_s = held
                    self._refresh_state(t_end)
                limit = self.config.vad.max_chunk_s * self.config.vad.max_chunks_per_turn
                if held >= limit:
                    self._error(
                        f"recording stopped at {limit:.0f} s (vad.max_chunk_s × max_chunks_per_turn)", "audio", t_end
                    )
                    self._ptt_want = False
                    self._ptt_step()
            return
        self._handsfree(block, t_end)

    def _level(self: Any, block: AudioBlock, dur: float) -> None:
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
                "audio",
                block.t,
            )
        if block.t >= self._level_next_t:
            self._level_next_t = block.t + LEVEL_EVERY_S
            power = float(np.mean(samples.astype(np.float64) ** 2)) if len(samples) else 0.0
            dbfs = max(-100.0, 10 * float(np.log10(power + 1e-12)))
            self._put(Level(round(dbfs, 1), round(silent, 2), t=block.t))

    # ---- hands-free: the segmenter ----------------------------------------------------------------------------
    def _handsfree(self: Any, block: AudioBlock, t_end: float) -> None:
        if self._seg is None:
            from voiceassist.vad import Segmenter

            self._seg = Segmenter(self.config.vad)
            self._utt_echo = self._barged = False
        echo = self._echo_window(block.t)
        got_utterance = False
        for ev in self._seg.feed(block):
            kind = type(ev).__name__
            if isinstance(ev, Utterance):
                got_utterance = True
                self._on_utterance(ev, t_end)
            elif kind == "SpeechStarted":
                self._speech_start_t = ev.t
                self._utt_echo = echo
                self._barged = False
                if not echo:
                    self._hearing = True
                    self._refresh_state(ev.t)
            elif kind == "SpeechPaused":
                if not self._utt_echo or self._barged:
                    self._ask_speculation(ev.utterance, t_end)
            elif kind == "SpeechResumed":
                self._drop_speculation()
        state = self._seg.state.name
        if state != "QUIET" and echo and not got_utterance:
            self._utt_echo = True  # playback started during the speech: it may contain the assistant's voice
        tts = self.config.tts
        if (
            self._utt_echo
            and not self._barged
            and tts.barge_in
            and self._tts_on
            and state == "SPEAKING"
            and self._speech_start_t is not None
            and self.speaker is not None
            and t_end - self._speech_start_t >= tts.barge_in_ms / 1000
            and speaking(self.speaker)
        ):
            self._barged = True
            self._hearing = True
            self._interrupt_speech("barge_in")
            self._refresh_state(t_end)
        if state == "QUIET" and not got_utterance and (self._hearing or self._speech_start_t is not None):
            # A burst too short to be an utterance (cough, click): back to listening.
            self._speech_start_t = None
            self._hearing = False
            self._utt_echo = self._barged = False
            self._drop_speculation()
            self._refresh_state(t_end)

    def _on_utterance(self: Any, utt: Utterance, t_end: float) -> None:
        ignored = (self._utt_echo or self._echo_overlaps(utt)) and not self._barged
        self._hearing = False
        self._speech_start_t = None
        self._utt_echo = self._barged = False
        self._pace = None
        self._spec = None  # a speculation already running stays valid: the turn's audio is the same
        if ignored:
            self.echo_ignored += 1
            self._refresh_state(t_end)  # the assistant's own voice (or speech over it): not a turn
            return
        if self._fast:
            self._skew = t_end - now()
        turn = PendingTurn(
            "audio",
            audios=tuple(utt.chunks),
            speech_end_t=utt.end_t,
            skew=self._skew,
            capped=utt.capped,
            reasons=tuple(utt.reasons),
        )
        submitted = self._submit(turn, wait=self._fast)
        self._refresh_state(t_end)  # "thinking" once the turn is handed over
        if submitted and self._fast:
            self._wait_idle()

    def _echo_overlaps(self: Any, utt: Utterance) -> bool:
        """Did the assistant's voice (plus its echo tail) overlap the utterance? (the Speaker keeps the times)"""
        overlaps = getattr(self.speaker, "echo_overlaps", None)
        if overlaps is None or not self._is_mic:
            return False
        try:
            return bool(overlaps(utt.start_t, utt.end_t))
        except Exception:  # noqa: BLE001 - a broken speaker: fall back on the live checks
            return False

    # ---- speculative prefill (issue 7): the worker does it when the backend offers it -------------------------
    def _speculation_supported(self: Any) -> bool:
        return bool(self.config.model.speculative_prefill) and callable(getattr(self.backend, "speculate", None))

    def _ask_speculation(self: Any, utt: Utterance, t_end: float) -> None:
        if not self._speculation_supported() or self._busy or self._pending:
            return  # the worker has real work: a speculation would only delay it
        import threading

        spec = (utt, threading.Event())
        self._spec = spec
        if self._fast:
            # A fast file stands in for a microphone: wait (bounded) until the worker has taken the request,
            # then pace the hang-over in real time from there. Without this wait, a loaded machine could let
            # the whole (fast) hang-over pass before the worker looked, and whether the prefill overlapped the
            # hang-over would depend on CPU load rather than on the audio.
            deadline = now() + SPEC_PICKUP_WAIT_S
            while self._spec is spec and now() < deadline and not self._stop.is_set():
                time.sleep(0.001)
            self._pace = (now(), t_end)

    def _drop_speculation(self: Any) -> None:
        spec, self._spec = self._spec, None
        self._pace = None
        if spec is not None:
            spec[1].set()
        running = self._spec_running
        if running is not None:
            running.set()  # cancel a speculative prefill in progress: it must never delay a real one

    # ---- push-to-talk ---------------------------------------------------------------------------------------
    def _ptt_step(self: Any) -> None:
        """Follow the key: start a recording, or turn the finished one into a turn."""
        if self._mode != "ptt" or self._muted:
            if self._rec is not None:
                self._rec, self._recording_s = None, None
                self._refresh_state()
            return
        if self._ptt_want and self._rec is None:
            self._rec, self._rec_status_s, self._recording_s = [], 0.0, 0.0
            self._refresh_state(self._last_end_t)
        elif not self._ptt_want and self._rec is not None:
            blocks, self._rec, self._recording_s = self._rec, None, None
            self._finish_recording(blocks)

    def _finish_recording(self: Any, blocks: list[AudioBlock]) -> None:
        if not blocks:
            self._refresh_state(detail="nothing recorded", force=True)
            return
        audio = np.concatenate([b.samples for b in blocks])
        t0 = blocks[0].t
        t_end = blocks[-1].t + len(blocks[-1].samples) / SAMPLE_RATE
        bounds = sound_bounds(audio)
        if bounds is None:
            self._refresh_state(t_end, detail="only silence recorded", force=True)
            return
        vad = self.config.vad
        chunks, capped = split_chunks(trim_silence(audio), vad.max_chunk_s, vad.max_chunks_per_turn, vad.cut_search_s)
        if self._fast:
            self._skew = t_end - now()
        turn = PendingTurn(
            "audio",
            audios=chunks,
            speech_end_t=t0 + bounds[1] / SAMPLE_RATE,
            skew=self._skew,
            capped=capped,
            reasons=tuple("ptt" for _ in chunks),
        )
        submitted = self._submit(turn, wait=self._fast)
        self._refresh_state(t_end)  # "thinking" once the turn is handed over
        if submitted and self._fast:
            self._wait_idle()

    # ---- end of input, lost devices -------------------------------------------------------------------------
    def _end_of_input(self: Any) -> None:
        if self._seg is not None and self._mode == "handsfree" and not self._muted:
            for ev in self._seg.flush():
                if isinstance(ev, Utterance):
                    self._on_utterance(ev, self._last_end_t)
        if self._rec is not None:
            blocks, self._rec, self._recording_s = self._rec, None, None
            self._finish_recording(blocks)
        self._hearing = False
        with self._lock:
            self._input_ended = True
        self._refresh_state(self._last_end_t, detail="end of input", force=True)
        self._check_done()

    def _recover(self: Any, err: Exception) -> bool:
        """The device failed: report it once, then reopen it every RETRY_DEVICE_S until it is back or stop."""
        self._device_lost = True
        self._hearing = False
        self._seg = None
        self._rec = None
        self._recording_s = None
        self._error(one_line(err), "audio")
        self._refresh_state(detail=getattr(self.source, "name", ""))
        while not self._stop.is_set():
            quietly(self.source.close)
            if self._stop.wait(RETRY_DEVICE_S):
                return False
            try:
                self.source.start()
            except Exception:  # noqa: BLE001 - still gone; try again
                continue
            self._device_lost = False
            self._refresh_state(detail=f"input back: {self.source.name}", force=True)
            return True
        return False
