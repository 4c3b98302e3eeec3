"""The Speaker: reply text in as it streams, speech out sentence by sentence, stoppable within 100 ms.

::

    feed()/end_reply() ──► SentenceSplitter ──► jobs queue ──► speech thread ──► SynthWorker (process)
       (model worker thread)                                     │  sound, resampled to the device rate
                                                                 ▼
                                            Player (sounddevice callback, 20 ms blocks) ──► output device

- The first sentence is synthesised (~10-20 ms with espeak) and playing while the model still generates the
  rest. Later sentences are synthesised while earlier ones play.
- :meth:`Speaker.stop` bumps an epoch: queued sentences are dropped, a synthesis in flight is thrown away when
  it returns, and the player fades out at its next block. It returns the text actually heard (see
  :mod:`voiceassist.speech.player` for how that is counted).
- Failures (no engine, a crash, a hang, no output device) become one message on :attr:`Speaker.errors`
  (repeated only after speech has worked again); the sentence is skipped and the reply goes on in text. A
  crashed worker is replaced at once; a hung one is killed after its deadline and replaced.

The Speaker speaks whatever it is fed; whether replies are spoken at all (``tts.enabled``, ``/tts``) is the
App's decision.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voiceassist.config import TtsConfig
from voiceassist.errors import DeviceError, SpeechError
from voiceassist.speech.language import VoiceChoice, VoicePicker
from voiceassist.speech.player import Player, Segment
from voiceassist.speech.sentences import SentenceSplitter, speakable
from voiceassist.speech.synth_client import SENTENCE_TIMEOUT_S, EngineUnavailable, SynthWorker, VoiceMissing

IDLE_CLOSE_S = 60.0  # release the output device after this long with nothing to say
MAX_AHEAD_S = 30.0  # synthesis waits while this much audio is already queued (bounds memory)
RETRY_BROKEN_S = 30.0  # after "no speech engine at all", try again this much later
RETRY_DEVICE_S = 1.0  # after an output device failure, try to open it again this much later, s
HOUSEKEEPING_S = 0.25  # how often the speech thread checks the worker and the device
FIRST_SOUND_POLL_S = 0.005  # first_sound() looks this often; the figure itself is the callback's DAC time


@dataclass(frozen=True)
class _Job:
    epoch: int  # Speaker._epoch when queued; stale after stop()
    turn: int
    text: str  # exact slice of the reply
    # "say": synthesise and play; "prepare": synthesise and hold (a speculative first sentence, see prepare());
    # "discard": drop what is held. Only "say" jobs count as pending speech.
    kind: str = "say"


@dataclass
class _Prepared:
    """A sentence synthesised ahead of its reply (speech thread only)."""

    epoch: int  # stop() drops it: a later epoch never uses it
    text: str
    samples: np.ndarray  # at the player's rate
    choice: VoiceChoice
    prior: str | None  # the voice picker's running language before it: restored if the sentence is dropped


class Speaker:
    """Speaks streaming reply text; see the module docstring. All public methods are thread-safe and return
    quickly (none waits for synthesis or playback)."""

    def __init__(
        self,
        tts: TtsConfig,
        output_device: str = "",
        *,
        sentence_timeout_s: float = SENTENCE_TIMEOUT_S,
        on_error: Callable[[str], None] | None = None,
        detect_languages: bool = False,
    ) -> None:
        """``detect_languages``: record each sentence's language also when an explicit voice reads it
        (``voiceassist say --json``); with ``tts.voice = "auto"`` it is always detected."""
        self.tts = tts
        # producer: the speech thread (and feed() when overloaded); consumer: the App / UI status bar.
        self.errors: queue.Queue[str] = queue.Queue(maxsize=32)
        self.on_error = on_error
        # producer: feed()/end_reply() (the model worker thread); consumer: the speech thread. None = quit.
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=1024)
        self._player = Player(output_device if output_device != "" else None)
        auto = tts.voice.strip().lower() == "auto"
        self._worker = SynthWorker("" if auto else tts.voice, tts.rate, tts.volume, sentence_timeout_s)
        # The language → voice policy (speech thread only); None: the configured voice, nothing detected.
        self._picker: VoicePicker | None = None
        if auto or detect_languages:
            self._picker = VoicePicker(auto, _codes(tts.languages), _codes(tts.auto_voices), report=self._note)
        self._picker_starts = 0  # the worker start the picker's voice list comes from
        self._choices: dict[int, list[tuple[str, VoiceChoice]]] = {}  # turn → (sentence, its voice), recent turns
        # Messages about the choice of voice (also on `errors`): speech goes on, with the default voice.
        self.notes: set[str] = set()
        self._prepared: _Prepared | None = None  # see prepare(); speech thread only
        self.prepared_count = 0  # sentences synthesised ahead (prepare) / played from that (tests, benchmarks)
        self.prepared_used = 0
        self._lock = threading.Lock()  # guards everything below; taken before the player's lock, never after
        self._turn: int | None = None
        self._synthesising: int | None = None  # the turn of the "say" job the speech thread is on
        self._splitter = SentenceSplitter()
        self._stopped: set[int] = set()  # turns stop() ended: later text for them is ignored
        self._epoch = 0
        self._pending = 0  # jobs of the current epoch queued or being synthesised
        self._reported: set[str] = set()  # failures already on `errors` (digits masked); cleared on success
        self._voice_reported = False
        self._engine_broken_until = 0.0
        self._device_broken_until = 0.0
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speech", daemon=True)
        self._thread.start()

    # ---- the contract --------------------------------------------------------------------------------------

    def feed(self, turn: int, text: str) -> None:
        """Reply text as it streams; complete sentences are queued for speech at once."""
        with self._lock:
            if self._closed.is_set():
                return
            if turn != self._turn:
                self._flush_locked()  # a new reply: the previous one's last words are still said
                self._turn, self._splitter = turn, SentenceSplitter()
            if turn in self._stopped:
                return
            for sentence in self._splitter.feed(text):
                self._put_locked(turn, sentence)

    def prepare(self, sentence: str) -> None:
        """Synthesise ``sentence`` now and hold it without playing (the speculative first sentence of a reply
        not yet given): if the next sentence fed is exactly ``sentence``, it plays at once instead of being
        synthesised then. Anything else fed first, :meth:`discard_prepared` or :meth:`stop` drops it (and the
        voice picker's running language is put back). Not "speaking": the microphone is not muted for it."""
        with self._lock:
            if not self._closed.is_set():
                self._put_control(_Job(self._epoch, -1, sentence, "prepare"))

    def discard_prepared(self) -> None:
        """Drop a sentence held by :meth:`prepare` (the speculation was rolled back: speech resumed)."""
        with self._lock:
            self._put_control(_Job(self._epoch, -1, "", "discard"))

    def end_reply(self, turn: int) -> None:
        """The reply is complete: speak its last partial sentence too."""
        with self._lock:
            if turn == self._turn:
                self._flush_locked()

    def stop(self) -> str:
        """Stop speaking (sound ends within one 20 ms block plus the device latency); drop everything queued;
        return the current turn's reply text actually spoken so far (a prefix of the reply)."""
        heard = self.stop_turns()
        return heard[max(heard)] if heard else ""  # the last fed turn is the newest

    def stop_turns(self) -> dict[int, str]:
        """Stop as :meth:`stop` does; return what was heard of each reply not yet heard to its end (turn → the
        spoken prefix, "" for one not reached), the last fed turn always among them. Two replies can be
        queued (a turn typed while the last reply still plays): a stop must cut each back to what was heard,
        not only the last one."""
        with self._lock:
            self._epoch += 1
            self._pending = 0
            unheard = set(self._player.unfinished_turns())
            if self._synthesising is not None:
                unheard.add(self._synthesising)
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # close() is waiting for it
                    self._jobs.put_nowait(None)
                    break
                if job.kind == "say":
                    unheard.add(job.turn)
            self._splitter = SentenceSplitter()
            if self._turn is None:
                return {}
            unheard.add(self._turn)
            self._stopped.add(self._turn)
            if len(self._stopped) > 64:
                self._stopped = {t for t in self._stopped if t >= self._turn - 32}
            last = self._player.stop(self._turn)
            out = {t: self._player.spoken_text(t) for t in sorted(unheard) if t != self._turn}
            out[self._turn] = last
            return out

    def speaking(self) -> bool:
        """Sentences are waiting, being synthesised, playing, or still on their way out of the device."""
        with self._lock:
            pending = self._pending > 0
        return pending or self._player.busy()

    def quiet_since(self) -> float | None:
        """Capture-clock time playback really ended (the last sample left the device); None while speaking;
        ``-inf`` if nothing was ever played."""
        if self.speaking():
            return None
        return self._player.last_audio_end()

    def set_far_end(self, reference: object) -> None:
        """Publish every block the player writes into ``reference`` (an ``audio.farend.FarEndReference``, #12)."""
        self._player.set_reference(reference)

    def close(self) -> None:
        """Stop, end the speech thread and the worker process, release the device. Idempotent."""
        if self._closed.is_set():
            return
        self.stop()
        self._closed.set()
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass
        self._worker.close()  # first: it also ends a synthesis in flight, so the join below is quick
        self._thread.join(timeout=1)
        self._player.close()

    # ---- extras for the App, the UI, tests and benchmarks --------------------------------------------------

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The speaker's own threads (the kiosk's watchdog checks they are alive)."""
        return (self._thread,)

    def spoken_text(self, turn: int) -> str:
        """What has been heard of ``turn`` so far."""
        return self._player.spoken_text(turn)

    def echo_overlaps(self, start_t: float, end_t: float) -> bool:
        """Did the assistant's own voice (plus ``tts.echo_tail_ms``) overlap ``[start_t, end_t]`` (capture
        clock)? True also while speech is queued or playing: the App drops such a microphone segment."""
        tail = self.tts.echo_tail_ms / 1000
        if self.speaking() and end_t >= time.monotonic() - tail:
            return True
        return any(a <= end_t and start_t <= b + tail for a, b in self._player.intervals())

    def first_heard(self, turn: int) -> float | None:
        """Capture-clock time the first sample of ``turn`` was heard (None before)."""
        return self._player.first_heard(turn)

    def first_sound(self, turn: int, timeout: float, cancel: threading.Event | None = None) -> float | None:
        """Capture-clock time the first sample of ``turn`` reaches the listener (PortAudio's DAC time of the
        block that carries it), waiting up to ``timeout`` s for it; None at once when no sound of ``turn`` is to
        come (stopped, nothing speakable, synthesis failed, no device), or at the timeout or ``cancel``.

        Known as soon as the callback hands that block to the device (the DAC time is then ~one device latency
        ahead), so the wait is the first sentence's synthesis at most, not its playback."""
        deadline = time.monotonic() + timeout
        while True:
            t = self._player.first_heard(turn)
            if t is not None:
                return t
            with self._lock:
                gone = turn in self._stopped or self._closed.is_set()
                pending = self._pending > 0
            if gone or not (pending or self._player.sound_pending(turn)):
                # The callback sets first_heard as it takes the samples (one lock): it may have done so since
                # the first look above, so look once more.
                return self._player.first_heard(turn)
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                return None
            time.sleep(FIRST_SOUND_POLL_S)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the worker runs and the output device is pulling audio (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        if not self._ready.wait(timeout):
            return False
        while time.monotonic() < deadline:
            if self._player.running() and self._worker.pid is not None:
                return True
            if not self._player.is_open or (self._worker.pid is None and self._engine_broken_until):
                return False  # it failed (and said why on `errors`)
            time.sleep(0.01)
        return False

    def voice_choices(self, turn: int) -> list[tuple[str, VoiceChoice]]:
        """The sentences of ``turn`` synthesised so far, each with the voice (and language) that read it."""
        with self._lock:
            return list(self._choices.get(turn, ()))

    @property
    def worker_pid(self) -> int | None:
        """The synthesis worker's process id (None while it is not running)."""
        return self._worker.pid

    @property
    def engine(self) -> str:
        """The engine in use, e.g. "pyttsx3/espeak" ("" before the worker has started)."""
        return self._worker.engine

    @property
    def default_voice(self) -> str:
        """The engine's default voice id ("" when it does not say or has not started)."""
        return self._worker.default_voice

    @property
    def voice_error(self) -> str:
        """Why the configured voice was not used ("" when it was, or when none was configured)."""
        return self._worker.voice_error

    @property
    def restarts(self) -> int:
        """How many times a crashed or hung worker was replaced."""
        return self._worker.restarts

    # ---- internals -----------------------------------------------------------------------------------------

    def _flush_locked(self) -> None:
        if self._turn is not None and self._turn not in self._stopped:
            for sentence in self._splitter.flush():
                self._put_locked(self._turn, sentence)

    def _put_locked(self, turn: int, sentence: str) -> None:
        try:
            self._jobs.put_nowait(_Job(self._epoch, turn, sentence))
            self._pending += 1
        except queue.Full:
            self._report("speech output is falling behind the reply; a sentence was skipped")

    def _put_control(self, job: _Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            pass  # a prepared sentence is an optimisation: without it the sentence is synthesised when fed

    def _report(self, message: str) -> None:
        """One line for the status bar, once (until speech has worked again)."""
        if self._closed.is_set():
            return  # shutting down: failures caused by the shutdown are not news
        key = re.sub(r"\d+(\.\d+)?", "#", message)  # "no sound after 0.6 s" and "... 0.9 s" are one failure
        if key in self._reported:
            return
        self._reported.add(key)
        try:
            self.errors.put_nowait(message)
        except queue.Full:
            pass
        if self.on_error is not None:
            self.on_error(message)

    def _run(self) -> None:
        self._start_worker()
        self._open_device()
        if self._picker is not None:
            try:
                self._picker.detector.load()  # ~0.6 s once, here rather than at the first sentence
            except Exception:  # noqa: BLE001  (the picker reports it at the first sentence and uses the default voice)
                pass
            try:
                self._refresh_voices()  # ~10-20 ms, also not at the first sentence
            except SpeechError:
                pass  # the first sentence tries again (and reports)
        self._ready.set()
        next_check = 0.0
        while True:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HOUSEKEEPING_S
                self._housekeeping()
            try:
                job = self._jobs.get(timeout=HOUSEKEEPING_S)
            except queue.Empty:
                continue
            if job is None or self._closed.is_set():
                return
            if job.kind == "say":
                with self._lock:
                    self._synthesising = job.turn if job.epoch == self._epoch else None
            try:
                if job.kind == "prepare":
                    self._prepare(job)
                elif job.kind == "discard":
                    self._discard()
                else:
                    self._speak(job)
            except Exception as err:  # noqa: BLE001  (the speech thread must survive anything)
                self._report(f"speech output failed: {err}; replies continue in text")
            finally:
                with self._lock:
                    if job.epoch == self._epoch and job.kind == "say":
                        self._pending -= 1
                    self._synthesising = None

    def _start_worker(self) -> bool:
        if time.monotonic() < self._engine_broken_until:
            return False
        try:
            self._worker.start()
            if self._worker.voice_error and not self._voice_reported:
                self._voice_reported = True  # once per Speaker, not at every worker restart
                self._report(f"{self._worker.voice_error}; speaking with the default voice")
            return True
        except SpeechError as err:
            self._engine_broken_until = time.monotonic() + RETRY_BROKEN_S
            self._report(f"{err}; replies continue in text")
            return False

    def _open_device(self) -> bool:
        if self._player.is_open:
            return True
        if time.monotonic() < self._device_broken_until:
            return False
        try:
            self._player.open()
            return True
        except DeviceError as err:
            self._device_broken_until = time.monotonic() + RETRY_DEVICE_S
            self._report(f"speech output: {err}; replies continue in text")
            return False

    @property
    def _auto_voice(self) -> bool:
        return self._picker is not None and self._picker.auto

    def _pick(self, text: str) -> VoiceChoice:
        """The voice for one sentence (the configured one when there is no picker)."""
        if self._picker is None:
            return VoiceChoice(self._worker.voice_id, "", None)
        self._refresh_voices()
        return self._picker.pick(text)

    def _refresh_voices(self, force: bool = False) -> None:
        """The picker's voice list is the running worker's (a new worker may offer other voices). Raises
        SpeechError; a worker that hangs while listing is killed after the sentence deadline, not 20 s."""
        assert self._picker is not None
        self._worker.start()
        if force or self._worker.starts != self._picker_starts:
            voices = self._worker.voices(timeout=self._worker.sentence_timeout_s)
            self._picker.set_voices(voices, self._worker.default_voice, self._worker.voice_id)
            self._picker_starts = self._worker.starts

    def _note(self, message: str) -> None:
        self.notes.add(message)
        self._report(message)

    def _record(self, turn: int, sentence: str, choice: VoiceChoice) -> None:
        with self._lock:
            self._choices.setdefault(turn, []).append((sentence, choice))
            for old in sorted(self._choices)[:-16]:  # the last few turns only
                del self._choices[old]

    def _housekeeping(self) -> None:
        """Every HOUSEKEEPING_S: replace a dead worker early, notice a lost or stuck output device (drop what
        it would have played, so the App is not left waiting for "speaking" to end), release an idle one."""
        if self._worker.pid is None and not self._closed.is_set():
            self._start_worker()
        if self._player.stalled():
            self._report("speech output device stopped playing; replies continue in text until it is back")
            self._player.close()
            self._player.discard()
            self._device_broken_until = time.monotonic() + RETRY_DEVICE_S
        self._player.close_if_idle(IDLE_CLOSE_S)

    def _prepare(self, job: _Job) -> None:
        self._discard()
        if job.epoch != self._epoch:
            return
        prior = self._picker.prior if self._picker is not None else None
        samples, choice = self._synthesize(job.text)
        if choice is not None and job.epoch == self._epoch:
            self._prepared = _Prepared(job.epoch, job.text, samples, choice, prior)
            self.prepared_count += 1

    def _discard(self) -> None:
        held, self._prepared = self._prepared, None
        if held is not None and self._picker is not None:
            self._picker.prior = held.prior

    def _speak(self, job: _Job) -> None:
        while self._player.queued_seconds() > MAX_AHEAD_S and job.epoch == self._epoch:
            time.sleep(0.05)
        if job.epoch != self._epoch:
            self._discard()
            return
        held, self._prepared = self._prepared, None
        choice: VoiceChoice | None
        if held is not None and held.text == job.text and held.epoch == job.epoch:
            samples, choice = held.samples, held.choice  # synthesised during the hang-over: play it now
            self.prepared_used += 1
        else:
            if held is not None and self._picker is not None:
                self._picker.prior = held.prior  # that speculation did not come true
            samples, choice = self._synthesize(job.text)
        if choice is not None:
            self._record(job.turn, job.text, choice)
        with self._lock:
            if job.epoch == self._epoch and not self._closed.is_set():
                # A skipped sentence is queued empty: it counts as passed when reached, so the spoken text
                # stays a prefix of the reply.
                self._player.enqueue(Segment.make(job.turn, job.text, samples))

    def _synthesize(self, sentence: str) -> tuple[np.ndarray, VoiceChoice | None]:
        """``sentence`` as samples at the player's rate, and the voice that read it; empty samples and None when
        there is nothing to say or speech failed (reported)."""
        samples = np.zeros(0, dtype=np.float32)
        choice: VoiceChoice | None = None
        text = speakable(sentence)
        device_ok = self._open_device()
        if text and device_ok and time.monotonic() >= self._engine_broken_until:
            try:
                choice = self._pick(text)
                try:
                    samples, rate = self._worker.synthesize(text, choice.voice if self._auto_voice else None)
                except VoiceMissing as err:
                    # Uninstalled while we run: the list we chose from is stale; ask the worker again (~10 ms).
                    assert self._picker is not None
                    self._refresh_voices(force=True)
                    self._picker.voice_missing(err.voice, choice.language)
                    choice = self._picker.pick(text)
                    try:
                        samples, rate = self._worker.synthesize(text, choice.voice)
                    except VoiceMissing:  # gone too: the default voice cannot be
                        choice = VoiceChoice("", "", choice.language, "voices missing")
                        samples, rate = self._worker.synthesize(text, "")
            except SpeechError as err:
                choice = None
                if isinstance(err, EngineUnavailable):
                    self._engine_broken_until = time.monotonic() + RETRY_BROKEN_S
                self._report(f"{err}; replies continue in text")
            else:
                self._reported.clear()  # working again: a later failure is news
                if rate != self._player.rate and len(samples):
                    import soxr

                    samples = soxr.resample(samples, rate, self._player.rate).astype(np.float32)
        return samples, choice


def _codes(text: str) -> tuple[str, ...]:
    """ "zh, en,yue" → ("zh", "en", "yue")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())
