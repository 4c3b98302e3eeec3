"""Cutting a stream of audio into utterances: webrtcvad frames, an adaptive energy gate, a state machine.

A pure class, no threads: :class:`Segmenter` is fed :class:`~voiceassist.events.AudioBlock` s of any length and
returns events (``events.SegmenterEvent``). All lengths in the configuration are in ms or s; they become
frame or sample counts in :meth:`Segmenter.__init__` only.

A frame (``vad.frame_ms``) is *speech* as the engine (``vad.engine``, see ``vad_engines``) decides from:
- the level gate: its level is at least ``vad.min_level_dbfs`` and at least ``vad.snr_gate_db`` above the
  adaptive noise floor. Levels are taken after pre-emphasis (a gentle high-pass that removes hum and rumble),
  as the median of the frame's 10 ms sub-frame levels, so a keyboard click (one loud sub-frame) does not pass;
- webrtcvad (``vad.aggressiveness``);
- the Silero network's speech probability (engines ``silero`` and ``webrtc+silero``).
With engine ``webrtc`` (round 1) both the gate and webrtcvad must say speech.

The noise floor is the ``vad.noise_percentile`` th percentile of frame levels over the last
``vad.noise_window_s``. Real speech has gaps (stops, breaths, between words) where the floor shows through,
while steady noise (fan hum, pink noise) sits at the floor and never passes the gate, however webrtcvad
classifies it: so noise alone gives no utterance and cannot hold one open. When even the quietest frame of the
last ``vad.noise_rise_s`` is well above the floor (a noise that just started never dips; speech always does),
the window is re-learned from that stretch.

States (``VadState``)::

    QUIET ──speech frame──► STARTING ──speech ≥ max(start_ms, min_speech_ms)──► SPEAKING ◄──speech──┐
      ▲                        │ a gap of start_gap_ms                        │ non-speech          │
      └────────────────────────┘                                              ▼                     │
      └──────── silence ≥ hangover_ms: Utterance ────────────────────────── STOPPING ───────────────┘

- onset: the first speech frame of the run that fired the trigger, or of a burst that died less than
  ``onset_lookback_ms`` before it (a weak first syllable in noise); the audio starts ``pre_roll_ms`` earlier
  (never before the previous utterance's end), so the first syllable reaches the model. With engine silero
  such a burst's speech frames also count towards the trigger (a word broken into bursts by a noise
  that keeps Silero's threshold high — 16-talker babble — starts from its first burst, not its third);
- in STOPPING, ``resume_ms`` of consecutive speech is needed to go on (one noise peak does not);
- the utterance's audio ends ``tail_ms`` after its last speech frame, not at the end of the hang-over;
- ``SpeechPaused`` once the silence reaches max(``speculate_after_ms``, ``tail_ms``): its utterance is the very
  object emitted later if speech does not resume (the whole tail exists by then, so nothing can change it);
- each audio is at most ``max_chunk_s``: a longer stretch is cut at the quietest frame of its last
  ``cut_search_s``, and the chunks of one stretch make one turn, up to ``max_chunks_per_turn``; then the turn is
  emitted (last reason "cap") and the next turn starts at the cut with a new SpeechStarted. No audio is dropped.
- every SpeechStarted is followed by exactly one Utterance (utterances shorter than ``min_speech_ms`` of
  speech are never started), which keeps the consumers simple.
"""

from __future__ import annotations

import bisect
import collections
import enum
import math
from typing import Protocol

import numpy as np
import webrtcvad

from voiceassist.config import VadConfig
from voiceassist.events import (
    SAMPLE_RATE,
    AudioBlock,
    SegmenterEvent,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    Utterance,
)
from voiceassist.vad_engines import make_engine

WEBRTC_RATES = (8000, 16000, 32000, 48000)  # Hz that webrtcvad accepts
SUBFRAME_MS = 10  # level of a frame = median over sub-frames of this length
FLOOR_EVERY = 4  # frames between noise-floor updates (the percentile is the costly part)
PRE_EMPHASIS = 0.97  # y[n] = x[n] − 0.97·x[n−1] before measuring levels (a high-pass from ~100 Hz)
ONSET_BACK_FRAMES = 5  # neural engines: the onset may go back this many frames (150 ms) over rising level
ONSET_PROB = 0.15  # ... or over frames whose Silero probability already rose to this
ONSET_RISE_DB = 1.0  # ... or whose level (mean, not the gate's median) is this far above the floor, dB
EPS = 1e-10  # mean-square floor: digital silence is −100 dBFS, not −inf


class VadState(enum.Enum):
    QUIET = "quiet"  # no speech
    STARTING = "starting"  # speech frames seen, not yet enough to start an utterance
    SPEAKING = "speaking"  # inside an utterance, the last frame was speech
    STOPPING = "stopping"  # inside an utterance, silence is being timed against the hang-over


class VoiceDetector(Protocol):
    """The VAD engine behind the energy gate: is this one frame (``vad.frame_ms`` of 16 kHz mono float32 in
    [-1, 1]) speech? Called in order for the frames that passed the gate; may keep state (a neural model's)."""

    def is_speech(self, frame: np.ndarray, sample_rate: int) -> bool: ...


class WebrtcDetector:
    """webrtcvad at ``aggressiveness`` (0-3): the default engine."""

    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: np.ndarray, sample_rate: int) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        return bool(self._vad.is_speech(pcm, sample_rate))


class _Buffer:
    """A growable array indexed by absolute position; the part before ``base`` may be discarded."""

    def __init__(self, dtype: type, capacity: int) -> None:
        self.data: np.ndarray = np.zeros(capacity, dtype=dtype)
        self.base = 0  # absolute index of data[0]
        self.end = 0  # absolute index one past the last value

    def append(self, values: np.ndarray) -> None:
        used = self.end - self.base
        if used + len(values) > len(self.data):
            grown = np.zeros(max(2 * len(self.data), used + len(values)), dtype=self.data.dtype)
            grown[:used] = self.data[:used]
            self.data = grown
        self.data[used : used + len(values)] = values
        self.end += len(values)

    def trim(self, keep_from: int, slack: int) -> None:
        """Forget values before ``keep_from`` (only once more than ``slack`` can go: copying is amortised)."""
        keep_from = min(keep_from, self.end)
        if keep_from - self.base > slack:
            n = self.end - keep_from
            self.data[:n] = self.data[keep_from - self.base : self.end - self.base]
            self.base = keep_from

    def get(self, a: int, b: int) -> np.ndarray:
        return self.data[max(a, self.base) - self.base : b - self.base].copy()


class Segmenter:
    """Feed blocks, get SpeechStarted / SpeechPaused / SpeechResumed / Utterance events, in order."""

    def __init__(self, vad: VadConfig, sample_rate: int = SAMPLE_RATE, detector: VoiceDetector | None = None) -> None:
        if sample_rate not in WEBRTC_RATES:
            raise ValueError(f"webrtcvad needs one of {WEBRTC_RATES} Hz, not {sample_rate}")
        self.config = vad
        self.sample_rate = sample_rate
        ms = sample_rate // 1000  # samples per ms
        self._frame = vad.frame_ms * ms  # samples per frame
        self._sub = SUBFRAME_MS * ms  # samples per sub-frame
        fms = vad.frame_ms

        def frames(duration_ms: float) -> int:  # ms → whole frames, at least 1
            return max(1, math.ceil(duration_ms / fms))

        self._confirm_frames = frames(max(vad.start_ms, vad.min_speech_ms))
        self._start_gap_frames = frames(vad.start_gap_ms)
        self._hangover_frames = frames(vad.hangover_ms)
        self._resume_frames = frames(vad.resume_ms)
        self._lookback_frames = round(vad.onset_lookback_ms / fms)
        self._pause_frames = frames(max(vad.speculate_after_ms, vad.tail_ms))
        self._pre_roll = vad.pre_roll_ms * ms  # samples
        self._tail = vad.tail_ms * ms  # samples
        self._max_chunk = int(vad.max_chunk_s * sample_rate)  # samples
        self._cut_search = int(vad.cut_search_s * sample_rate)  # samples
        self._floor_window = max(8, round(vad.noise_window_s * 1000 / fms))  # frames
        self._rise_frames = min(self._floor_window, round(vad.noise_rise_s * 1000 / fms))  # frames; 0 = off
        self._vad = detector or WebrtcDetector(vad.aggressiveness)  # webrtcvad's verdict (or the caller's)
        self._engine = make_engine(vad.engine, vad.silero_threshold, vad.silero_max_gain_db)
        self._rising: collections.deque[bool] = collections.deque(maxlen=ONSET_BACK_FRAMES)  # recent frames
        self._rise_now = False  # this frame is above floor + snr_gate_db/2 (neural engines' onset walk-back)
        self._echo_active = False  # the input is an echo canceller's output while the far end plays
        # (capture-clock start of the frame, s; is speech) of each frame the last feed() classified: the
        # full-duplex barge-in reads the verdicts of double talk, which the state machine may not start on
        self.frames: list[tuple[float, bool]] = []

        self.state = VadState.QUIET
        self.noise_floor_db = -100.0  # dBFS, the adaptive floor (for meters and tests)
        self._carry = np.zeros(0, np.float32)  # samples not yet making a whole frame
        self.nonfinite_samples = 0  # NaN/inf input samples, taken as silence
        self._last_sample = 0.0  # the sample before the next frame (pre-emphasis memory)
        self._received = 0  # samples received so far (absolute position of the next block)
        self._audio = _Buffer(np.float32, 1 << 18)  # by absolute sample: every framed sample
        self._levels = _Buffer(np.float32, 4096)  # by absolute frame: frame level, dBFS (for the cut search)
        self._recent = np.full(self._floor_window, np.nan, np.float32)  # ring of levels for the floor
        self._anchors: list[tuple[int, float]] = []  # (absolute sample, capture-clock t) of each block
        self._k = 0  # absolute index of the next frame
        self._reset_utterance()
        self._prev_end = 0  # absolute sample where the last utterance's audio ended
        self._burst_onset = self._burst_last = -(10**9)  # onset and last speech frame of the last dead burst
        self._burst_speech = 0  # its speech frames (with those of the bursts it continued; engine silero)

    # ---- helpers ----------------------------------------------------------------------------------------
    def _reset_utterance(self) -> None:
        self._run_start = 0  # first speech frame of the STARTING run
        self._onset = 0  # first speech frame of the utterance (the run, or a burst just before it)
        self._run_speech = 0  # speech frames in the STARTING run
        self._gap = 0  # consecutive non-speech frames in STARTING
        self._resume_run = 0  # consecutive speech frames inside an utterance
        self._last_speech = 0  # last speech frame of the utterance
        self._turn_start = 0  # absolute sample where the current turn's audio starts
        self._chunk_start = 0  # absolute sample where the current chunk starts
        self._chunks: list[np.ndarray] = []
        self._reasons: list[str] = []
        self._candidate: Utterance | None = None  # the paused utterance, emitted as is if speech stays away

    def time_of(self, sample: int) -> float:
        """Capture-clock time of an absolute sample position, from the nearest earlier block's ``t``."""
        if not self._anchors:
            return sample / self.sample_rate
        i = max(0, bisect.bisect_right(self._anchors, (sample, math.inf)) - 1)
        s0, t0 = self._anchors[i]
        return t0 + (sample - s0) / self.sample_rate

    def _classify(self, frame: np.ndarray) -> tuple[bool, float]:
        """(is speech, frame level in dBFS) for one frame."""
        # Levels are measured after pre-emphasis (a gentle high-pass, +6 dB/octave): hum and the rumble of pink
        # or fan noise (most of their energy, and most of its frame-to-frame wobble) drop out, speech stays.
        # (Written for speed: this runs 33 times a second, and numpy's mean/median carry a fixed overhead that
        # was most of the VAD's own cost.)
        x = frame.astype(np.float64)
        emphasised = np.empty_like(x)
        emphasised[0] = x[0] - PRE_EMPHASIS * self._last_sample
        np.subtract(x[1:], PRE_EMPHASIS * x[:-1], out=emphasised[1:])
        self._last_sample = float(x[-1])
        power = emphasised * emphasised
        level = 10.0 * math.log10(float(power.sum()) / len(power) + EPS)
        subs = sorted((power[: len(power) // self._sub * self._sub].reshape(-1, self._sub).sum(axis=1)).tolist())
        mid = len(subs) // 2  # the median sub-frame (the mean of the middle two for an even count)
        median = subs[mid] if len(subs) % 2 else (subs[mid - 1] + subs[mid]) / 2
        gate_level = 10.0 * math.log10(median / self._sub + EPS)
        self._recent[self._k % self._floor_window] = level
        if self._k % FLOOR_EVERY == 0:
            percentile = np.percentile if self._k >= self._floor_window else np.nanpercentile  # NaN until filled
            floor = float(percentile(self._recent, self.config.noise_percentile))
            if self._rise_frames:
                # A new steady noise (a fan switched on) never dips: once even the quietest frame of the last
                # noise_rise_s is well above the floor, the noise has changed. Speech always has quieter moments.
                idx = np.arange(self._k - self._rise_frames + 1, self._k + 1) % self._floor_window
                quietest = float(np.nanmin(self._recent[idx]))
                if quietest > floor + self.config.snr_gate_db / 2:  # a smaller rise cannot pass the gate
                    # Forget the quieter past: the whole window now holds the new noise's levels, so the
                    # percentile describes it (not the quietest frame alone, which wanders).
                    recent = self._recent[idx].copy()
                    self._recent[:] = np.resize(recent, self._floor_window)
                    floor = float(np.nanpercentile(self._recent, self.config.noise_percentile))
            self.noise_floor_db = floor
        cfg = self.config
        audible = gate_level >= cfg.min_level_dbfs
        gate = audible and gate_level >= self.noise_floor_db + cfg.snr_gate_db

        def webrtc() -> bool:  # only computed when the engine asks (it is the costlier test)
            return bool(self._vad.is_speech(frame, self.sample_rate))

        in_utterance = self.state in (VadState.SPEAKING, VadState.STOPPING)
        if self._echo_active:
            # Over the echo canceller's residual, webrtcvad and the gate decide: AEC3 reshapes the spectrum of
            # speech in double talk and Silero misses it (measured: "Stop." over a reply, tests/
            # test_segment_reference.py). Silero still sees the frame, to keep its context.
            self._engine.is_speech(frame, gate, False, audible, lambda: False, in_utterance)
            self._rise_now = False
            return gate and webrtc(), level
        # Half the SNR gate: enough to tell a word's soft start (and speech under loud noise) from the floor.
        # _rising holds the frames before this one (this frame is appended after the step).
        self._rise_now = audible and gate_level >= self.noise_floor_db + cfg.snr_gate_db / 2
        speech = self._engine.is_speech(frame, gate, self._rise_now, audible, webrtc, in_utterance)
        for i in range(min(self._engine.lead, len(self._rising))):
            self._rising[-1 - i] = True  # Silero woke and its replay of the frames before found them speech-like
        # Onset evidence for the walk-back: the level rose (by less than the rise that wakes Silero: a fricative
        # under noise lifts it by 1–2 dB), or Silero's probability began to rise.
        self._rise_now = level >= self.noise_floor_db + ONSET_RISE_DB or self._engine.prob >= ONSET_PROB
        return speech, level

    def _utterance(self, reason: str, available: int) -> Utterance:
        """The turn so far, ending ``tail_ms`` after the last speech frame (or where the audio ends)."""
        speech_end = (self._last_speech + 1) * self._frame
        end = min(speech_end + self._tail, available)
        chunks, reasons = list(self._chunks), list(self._reasons)
        if end > self._chunk_start:
            chunks.append(self._audio.get(self._chunk_start, end))
            reasons.append(reason)
        return Utterance(
            chunks=tuple(chunks),
            start_t=self.time_of(self._turn_start),
            end_t=self.time_of(min(speech_end, available)),
            reasons=tuple(reasons),
        )

    def _finish(self, utterance: Utterance, end: int) -> None:
        self._prev_end = end
        self.state = VadState.QUIET
        self._reset_utterance()

    def _cut(self, events: list) -> None:
        """The current chunk reached max_chunk_s: cut it at the quietest frame of its last cut_search_s."""
        limit = self._chunk_start + self._max_chunk
        cut = limit
        first = -(-(limit - self._cut_search) // self._frame)  # first whole frame inside the search window
        last = limit // self._frame  # one past the last whole frame ending by the limit
        first = max(first, -(-self._chunk_start // self._frame) + 1)
        if self._cut_search > 0 and last > first:
            levels = self._levels.data[first - self._levels.base : last - self._levels.base]
            quietest = first + int(np.argmin(levels))
            cut = quietest * self._frame + self._frame // 2  # the middle of the quietest frame
        self._chunks.append(self._audio.get(self._chunk_start, cut))
        self._reasons.append("cap")
        self._chunk_start = cut
        if len(self._chunks) >= self.config.max_chunks_per_turn:
            # The turn is full: hand it over, and go on with a new turn from the cut (nothing is dropped).
            events.append(
                Utterance(
                    chunks=tuple(self._chunks),
                    start_t=self.time_of(self._turn_start),
                    end_t=self.time_of(cut),
                    reasons=tuple(self._reasons),
                )
            )
            self._chunks, self._reasons = [], []
            self._turn_start = cut
            events.append(SpeechStarted(self.time_of(cut)))

    # ---- the state machine, one frame at a time ---------------------------------------------------------
    def _step(self, speech: bool, events: list) -> None:
        k, st = self._k, self.state
        if st is VadState.QUIET:
            if speech:
                self.state, self._run_start, self._run_speech, self._gap = VadState.STARTING, k, 1, 0
                # A weak first syllable often makes a short burst that dies before the trigger: if one ended
                # just before, the utterance's onset is that burst's (bounded, so noise cannot chain far back).
                if k - self._burst_last <= self._lookback_frames:
                    self._onset = max(self._burst_onset, k - 2 * self._lookback_frames)
                    if self._engine.chains_bursts and self._onset == self._burst_onset:
                        # The burst and this run are one would-be utterance: its speech counts (measured, babble
                        # at 5 dB: "Thank you." made bursts of 5 and 8 frames, each one short of the trigger, and
                        # started 1.49 s late with its onset clamped 198 ms late; counted, 0.63 s and −12 ms).
                        # Only while the chain is within the onset's bound: noise cannot add up for longer.
                        # Engine silero only (see vad_engines: the others measured one more false turn).
                        self._run_speech += self._burst_speech
                else:
                    self._onset = k
                    # The neural engines call a word's first 2–3 frames late (Silero needs context): the onset
                    # goes back over the frames just before that already rose above the floor.
                    # One frame that did not rise may lie between (a fricative's level wobbles under noise).
                    j = back = 0
                    missed = False
                    while j < len(self._rising):
                        if self._rising[-1 - j]:
                            back = j + 1
                        elif missed or j + 1 >= len(self._rising) or not self._rising[-2 - j]:
                            break
                        else:
                            missed = True
                        j += 1
                    self._onset = k - back
        elif st is VadState.STARTING:
            if speech:
                self._run_speech += 1
                self._gap = 0
            else:
                self._gap += 1
                if self._gap >= self._start_gap_frames:
                    self.state = VadState.QUIET
                    self._burst_onset, self._burst_last = self._onset, k - self._gap
                    self._burst_speech = self._run_speech
        else:  # SPEAKING or STOPPING
            self._resume_run = self._resume_run + 1 if speech else 0
            if speech and (st is VadState.SPEAKING or self._resume_run >= self._resume_frames):
                # In STOPPING, one stray frame (a noise peak) does not count: resume_ms of speech does.
                if self._candidate is not None:
                    events.append(SpeechResumed(self.time_of((k + 1 - self._resume_run) * self._frame)))
                    self._candidate = None
                self.state, self._last_speech = VadState.SPEAKING, k
            else:
                self.state = VadState.STOPPING
                silent = k - self._last_speech
                # A chunk that reached max_chunk_s is cut first: a paused candidate must be the final audio.
                self._cap(events)
                if self._candidate is None and silent >= self._pause_frames:
                    self._candidate = self._utterance("silence", self._audio.end)
                    events.append(SpeechPaused(self._candidate))
                if silent >= self._hangover_frames:
                    utterance = self._candidate or self._utterance("silence", self._audio.end)
                    events.append(utterance)
                    self._finish(utterance, (self._last_speech + 1) * self._frame + self._tail)
                    return
        if self.state is VadState.STARTING and self._run_speech >= self._confirm_frames:
            self.state, self._last_speech = VadState.SPEAKING, k
            start = max(self._onset * self._frame - self._pre_roll, self._prev_end, self._audio.base)
            self._turn_start = self._chunk_start = start
            events.append(SpeechStarted(self.time_of(max(self._onset * self._frame, start))))
        self._cap(events)

    def _cap(self, events: list) -> None:
        """Cut the open chunk if the audio it needs (up to the tail, or to this frame) reached max_chunk_s."""
        if self.state in (VadState.SPEAKING, VadState.STOPPING):
            needed = min((self._last_speech + 1) * self._frame + self._tail, (self._k + 1) * self._frame)
            if needed - self._chunk_start >= self._max_chunk:
                self._cut(events)

    def _trim(self) -> None:
        """Forget audio no future utterance can need (kept: pre-roll, the open chunk)."""
        if self.state is VadState.QUIET:
            keep = (self._k - 3 * self._lookback_frames) * self._frame - self._pre_roll
        elif self.state is VadState.STARTING:
            keep = self._onset * self._frame - self._pre_roll
        else:
            keep = self._chunk_start
        keep = max(0, keep)
        self._audio.trim(keep, slack=self.sample_rate * 4)
        self._levels.trim(keep // self._frame, slack=2048)
        if len(self._anchors) > 256:
            i = max(0, bisect.bisect_right(self._anchors, (self._audio.base, math.inf)) - 1)
            del self._anchors[:i]

    # ---- public -----------------------------------------------------------------------------------------
    def set_echo_active(self, active: bool) -> None:
        """The next blocks come from an echo canceller while the loudspeaker plays (``EchoCanceller.echo_active``):
        frames are then judged by webrtcvad and the level gate, whatever the engine."""
        self._echo_active = active

    def feed(self, block: AudioBlock) -> list[SegmenterEvent]:
        """Process one block (16 kHz mono float32, any length); returns the events it caused, in order."""
        samples = np.asarray(block.samples, dtype=np.float32).reshape(-1)
        finite = np.isfinite(samples)
        if not finite.all():
            # NaN/inf from a broken driver or file (#16): heard as silence, counted, never passed on to the
            # levels (numpy RuntimeWarnings) or to the model (NaN audio features).
            self.nonfinite_samples += int(len(samples) - np.count_nonzero(finite))
            samples = np.where(finite, samples, np.float32(0.0))
        if len(samples):
            self._anchors.append((self._received, float(block.t)))
            self._received += len(samples)
        data = np.concatenate((self._carry, samples)) if len(self._carry) else samples
        n = len(data) // self._frame
        events: list[SegmenterEvent] = []
        self.frames = []
        for i in range(n):
            frame = data[i * self._frame : (i + 1) * self._frame]
            self._audio.append(frame)
            speech, level = self._classify(frame)
            self.frames.append((self.time_of(self._k * self._frame), speech))
            self._levels.append(np.array([level], np.float32))
            self._step(speech, events)
            if self._engine.walks_back:
                self._rising.append(self._rise_now)
            self._k += 1
        self._carry = data[n * self._frame :].copy()
        self._trim()
        return events

    def flush(self) -> list[SegmenterEvent]:
        """End of input: emit the open utterance (reason "end_of_input" unless its whole tail was heard)."""
        events: list[SegmenterEvent] = []
        if len(self._carry):  # the last partial frame is audio too (it may be part of the tail)
            self._audio.append(self._carry)
            self._carry = np.zeros(0, np.float32)
        if self.state in (VadState.SPEAKING, VadState.STOPPING):
            available = self._audio.end
            complete = (self._last_speech + 1) * self._frame + self._tail <= available
            utterance = self._candidate or self._utterance("silence" if complete else "end_of_input", available)
            events.append(utterance)
            self._finish(utterance, available)
        self.state = VadState.QUIET
        self._reset_utterance()
        # Frames restart on a whole-frame boundary after the partial frame that was appended above.
        self._k = -(-self._audio.end // self._frame)
        pad = self._k * self._frame - self._audio.end
        if pad:
            self._audio.append(np.zeros(pad, np.float32))
            self._received += pad
        while self._levels.end < self._k:
            self._levels.append(np.array([-100.0], np.float32))
        return events
