"""The assistant's side of the synthesis worker process (:mod:`voiceassist.speech.synth_process`).

:class:`SynthWorker` starts the worker, sends it one sentence at a time and waits for the sound file with a
deadline. A worker that crashed is started again and the sentence retried once; a worker that misses the
deadline (hung) is killed by its pid and started again on the next sentence. Every failure that reaches the
caller is a one-line :class:`~voiceassist.errors.SpeechError`.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voiceassist.errors import SpeechError

WORKER_SCRIPT = Path(__file__).with_name("synth_process.py")
START_TIMEOUT_S = 20.0  # Python start + importing pyttsx3 on a busy machine; normally ~0.3 s
# A sentence's deadline: espeak needs ~10 ms per sentence; the margin covers a loaded machine.
SENTENCE_TIMEOUT_S = 5.0
SENTENCE_TIMEOUT_PER_CHAR_S = 0.02


@dataclass(frozen=True)
class Voice:
    """One voice the engine offers."""

    id: str  # what `tts.voice` can be set to
    name: str
    languages: tuple[str, ...]


class SynthWorker:
    """One synthesis worker process; thread-safe (one request at a time)."""

    def __init__(
        self, voice: str = "", rate: int = 175, volume: float = 1.0, sentence_timeout_s: float = SENTENCE_TIMEOUT_S
    ) -> None:
        self.voice, self.rate, self.volume = voice, rate, volume
        self.sentence_timeout_s = sentence_timeout_s
        self.engine = ""  # the engine the worker reported, e.g. "pyttsx3/espeak"
        self.voice_id = ""  # the voice `voice` resolved to ("" = the engine's default)
        self.restarts = 0  # how many times a crashed or hung worker was replaced
        self.voice_error = ""  # set when the configured voice was not found (the default voice is used)
        self.default_voice = ""  # the engine's default voice id, when it says ("" = unknown)
        self.starts = 0  # how many worker processes have started (a new one may offer other voices)
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._lock = threading.Lock()  # one request at a time
        self._closed = False
        self._tmp = Path(tempfile.mkdtemp(prefix="voiceassist-tts-"))
        self._n = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (if not running) and configure voice, rate and volume. Raises SpeechError."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._closed:
            raise SpeechError("speech output is closed")
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self._reap()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            # stderr is discarded: the worker reports its errors in the protocol; the engine's own chatter
            # (ALSA, espeak) would otherwise fill a pipe nobody reads.
            self._proc = subprocess.Popen(
                [sys.executable, "-u", str(WORKER_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError as err:
            raise EngineUnavailable(f"speech output is unavailable: cannot start its worker ({err})") from None
        self._buf = b""
        hello = self._read(time.monotonic() + START_TIMEOUT_S)
        if hello is None or not hello.get("ready"):
            self._reap()
            why = hello.get("error") if hello else "it did not start"
            hint = "" if shutil.which("espeak-ng") else "; install espeak-ng (e.g. apt install espeak-ng)"
            raise EngineUnavailable(f"speech output is unavailable: {why}{hint}")
        self.engine = str(hello.get("engine", ""))
        settings = {"cmd": "config", "voice": self.voice, "rate": self.rate, "volume": self.volume}
        try:
            reply = self._request(settings, START_TIMEOUT_S)
            if not reply.get("ok") and self.voice:
                # An unknown voice must not silence the assistant: say so, and speak with the default voice.
                self.voice_error = str(reply.get("error"))
                reply = self._request(dict(settings, voice=""), START_TIMEOUT_S)
        except (_WorkerDied, _WorkerHung) as err:
            self._reap()
            raise EngineUnavailable(f"speech output is unavailable: the engine failed at start ({err})") from None
        if not reply.get("ok"):
            self._reap()
            raise EngineUnavailable(f"speech output is unavailable: {reply.get('error')}")
        self.voice_id = str(reply.get("voice", ""))
        self.default_voice = str(reply.get("default_voice", ""))
        self.starts += 1

    def kill(self) -> None:
        """Kill the worker now (by its pid); the next request starts a new one."""
        self._reap()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def close(self) -> None:
        """Kill the worker, also while a request is in flight (that request then fails at once)."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # without the lock: a request waiting on a hung worker must not delay shutdown
        with self._lock:
            self._reap()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ---- requests ------------------------------------------------------------------------------------------

    def synthesize(self, text: str, voice: str | None = None) -> tuple[np.ndarray, int]:
        """``text`` as mono float32 samples and their rate, read by ``voice`` (an exact id; "" = the engine's
        default voice; None = the configured one, or whichever the last request set). Raises VoiceMissing
        (that voice is no longer installed), SpeechError (crash twice, hang, engine)."""
        timeout = self.sentence_timeout_s + SENTENCE_TIMEOUT_PER_CHAR_S * len(text)
        request: dict[str, Any] = {"cmd": "synth", "text": text}
        if voice is not None:
            request["voice"] = voice
        with self._lock:
            self._n += 1
            path = self._tmp / f"s{self._n}.wav"
            for attempt in (1, 2):
                self._ensure_started()
                try:
                    reply = self._request(dict(request, path=str(path)), timeout)
                except _WorkerDied as err:
                    self._reap()
                    self.restarts += 1
                    if attempt == 2:
                        raise SpeechError(f"the speech engine crashed twice ({err})") from None
                    continue  # a crash (or a kill): retry this sentence once on a fresh worker
                except _WorkerHung:
                    self._reap()
                    self.restarts += 1
                    raise SpeechError(
                        f"the speech engine hung (no sound after {timeout:.1f} s); it was restarted"
                    ) from None
                if reply.get("missing_voice"):
                    raise VoiceMissing(str(reply["missing_voice"]), str(reply.get("error")))
                if not reply.get("ok"):
                    raise SpeechError(f"the speech engine failed: {reply.get('error')}")
                return _read_sound(path)
        raise AssertionError("unreachable")

    def voices(self, timeout: float = START_TIMEOUT_S) -> list[Voice]:
        """The voices the engine offers (a worker that does not answer within ``timeout`` s is killed). Raises
        SpeechError."""
        with self._lock:
            self._ensure_started()
            try:
                reply = self._request({"cmd": "voices"}, timeout)
            except (_WorkerDied, _WorkerHung) as err:
                self._reap()
                raise SpeechError(f"the speech engine failed while listing voices ({err})") from None
        if not reply.get("ok"):
            raise SpeechError(f"the speech engine cannot list voices: {reply.get('error')}")
        return [Voice(str(v["id"]), str(v["name"]), tuple(v.get("languages") or ())) for v in reply["voices"]]

    def _request(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(obj) + "\n").encode("utf-8"))
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as err:
            raise _WorkerDied(f"pipe closed: {err}") from None
        reply = self._read(time.monotonic() + timeout)
        if reply is None:
            if proc.poll() is not None:
                raise _WorkerDied(f"worker exited with status {proc.returncode}")
            raise _WorkerHung("no answer")
        return reply

    def _read(self, deadline: float) -> dict[str, Any] | None:
        """The next protocol line before ``deadline``; None on timeout or when the worker is gone."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:  # end of file: the worker is gone; reap it so poll() tells
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return {"ok": False, "error": f"garbled answer {line[:80]!r}"}


class EngineUnavailable(SpeechError):
    """No speech engine can start at all (rather than one sentence failing)."""


class VoiceMissing(SpeechError):
    """The voice asked for is no longer installed (the sentence was not spoken)."""

    def __init__(self, voice: str, message: str) -> None:
        super().__init__(message)
        self.voice = voice


class _WorkerDied(Exception):
    pass


class _WorkerHung(Exception):
    pass


def _read_sound(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001  (soundfile raises several types)
        raise SpeechError(f"the speech engine wrote an unreadable sound file ({err})") from None
    finally:
        path.unlink(missing_ok=True)
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)


def list_voices() -> list[Voice]:
    """The installed voices (starts a worker for the purpose). Raises SpeechError."""
    worker = SynthWorker()
    try:
        return worker.voices()
    finally:
        worker.close()
