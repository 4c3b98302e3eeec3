"""Reading audio files (WAV, FLAC, OGG/Vorbis, MP3, ... whatever libsndfile reads) with one-line errors.

libsndfile ≥ 1.1 reads MP3 itself (the wheel's bundled 1.2 does), so soundfile is the only reader: no ffmpeg,
no audioread. Every failure becomes an :class:`~voiceassist.errors.AudioFileError` naming the file and what is
wrong with it: missing, a folder, unreadable, empty (0 bytes or 0 frames), not audio / corrupt.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voiceassist.audio.resample import TARGET_RATE, downmix
from voiceassist.errors import AudioFileError

READ_FRAMES = 65536  # frames per soundfile read when streaming a file (≈1.4 s at 48 kHz)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Silence libsndfile's MP3 decoder (mpg123), which writes "Note: ..." lines straight to fd 2 on damaged
    files and would scribble over the terminal UI; our own one-line error says what is wrong instead."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _reason(err: Exception) -> str:
    """libsndfile's message without its boilerplate, e.g. 'Format not recognised.' → 'format not recognised'."""
    text = str(err)
    if ": " in text and text.startswith("Error opening"):
        text = text.rsplit(": ", 1)[1]
    text = " ".join(text.split()).rstrip(".")
    if text.lower().startswith("error :"):
        text = text[7:].strip()
    if "does not exist" in text or "not a regular file" in text:
        text = "unrecognised or damaged data"  # libsndfile's wording for some junk; the file does exist
    return text.lower() or type(err).__name__


def open_audio(path: str | os.PathLike[str]) -> sf.SoundFile:
    """Open ``path`` for reading; raise AudioFileError (one line) when it cannot be audio."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"audio file {p} does not exist; check the path")
    if p.is_dir():
        raise AudioFileError(f"{p} is a folder, not an audio file; give a WAV, FLAC, OGG or MP3 file")
    try:
        size = p.stat().st_size
        with open(p, "rb"):
            pass
    except OSError as err:
        raise AudioFileError(f"audio file {p} cannot be read ({err.strerror}); check its permissions") from None
    if size == 0:
        raise AudioFileError(f"audio file {p} is empty (0 bytes); record or choose another file")
    try:
        with _quiet_c_stderr():
            f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioFileError(
            f"{p} is not a readable audio file ({_reason(err)}); give a WAV, FLAC, OGG or MP3 file"
        ) from None
    if f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise AudioFileError(f"{p} has no valid audio stream; give a WAV, FLAC, OGG or MP3 file")
    if f.frames == 0:
        f.close()
        raise AudioFileError(f"audio file {p} contains no audio (0 samples); record or choose another file")
    return f


def read_blocks(f: sf.SoundFile, name: str, frames: int = READ_FRAMES):
    """Yield float32 ``(frames, channels)`` blocks of an open file; corrupt data raises AudioFileError."""
    while True:
        try:
            with _quiet_c_stderr():
                block = f.read(frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise AudioFileError(
                f"{name} is corrupt after {f.tell() / f.samplerate:.2f} s "
                f"({_reason(err)}); re-encode or choose another file"
            ) from None
        if not len(block):
            return
        yield block


def read_audio_16k(path: str | os.PathLike[str]) -> np.ndarray:
    """The whole file as 16 kHz mono float32 in [-1, 1] (channels averaged, soxr HQ resampling)."""
    with open_audio(path) as f:
        rate = f.samplerate
        mono = np.concatenate([downmix(b) for b in read_blocks(f, str(path))] or [np.zeros(0, np.float32)])
    if not len(mono):
        raise AudioFileError(f"audio file {path} contains no audio (0 samples); record or choose another file")
    if not np.all(np.isfinite(mono)):
        raise AudioFileError(f"{path} holds invalid samples (NaN or infinite); re-encode it")
    if rate != TARGET_RATE:
        mono = soxr.resample(mono, rate, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)
    return mono
