"""Reading audio files (WAV, FLAC, OGG/Vorbis, MP3, ... whatever libsndfile reads) with one-line errors.

libsndfile ≥ 1.1 reads MP3 itself (the wheel's bundled 1.2 does), so soundfile is the only reader: no ffmpeg,
no audioread. Every failure becomes an :class:`~voiceassist.errors.AudioFileError` naming the file and what is
wrong with it: missing, a folder, unreadable, empty (0 bytes or 0 frames), not audio / corrupt.

Streams that are not regular files (#16): a FIFO or a pipe (``/dev/stdin`` from ``cmd |``) is read whole into
memory (libsndfile needs to seek in most formats), at most STREAM_MAX_BYTES, then decoded like a file; what was
read is kept for the rest of the process, so the command line's early check and the source's later open see
the same audio. A FIFO nobody writes to is refused after FIFO_WAIT_S with that reason (not "empty"); devices
(``/dev/zero``, a terminal) and sockets are refused with what they are.
"""

from __future__ import annotations

import io
import os
import select
import stat
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voiceassist.audio.chatter import QuietDecoders
from voiceassist.audio.resample import TARGET_RATE, downmix
from voiceassist.errors import AudioFileError

READ_FRAMES = 65536  # frames per soundfile read when streaming a file (≈1.4 s at 48 kHz)
STREAM_MAX_BYTES = 256 * 1024 * 1024  # a FIFO/pipe is held in memory: ~2 h of 16 kHz 16-bit mono, bytes
FIFO_WAIT_S = 10.0  # how long a FIFO may have no writer before it is refused, s
_STREAMS: dict[tuple[int, int], bytes] = {}  # (st_dev, st_ino) of a stream already read -> its bytes
_STREAMS_LOCK = threading.Lock()


def _quiet_c_stderr() -> QuietDecoders:
    """Keep libsndfile's MP3 decoder (mpg123) from writing "Note: ..." lines on damaged files (they would
    scribble over the terminal UI; our own one-line error says what is wrong). Only the decoder's lines are
    dropped: fd 2 is process-wide, and pointing it at /dev/null (as this once did) also swallowed the lines
    other threads printed meanwhile (#16: ``--plain``'s first lines, the ``--events`` failure)."""
    return QuietDecoders()


# Headers of the formats whose libsndfile readers print nothing themselves (only data without one of these
# reaches the MPEG probe, mpg123, which does): WAV, RF64/W64, FLAC, Ogg, AIFF.
_SILENT_MAGIC = (b"RIFF", b"RF64", b"riff", b"fLaC", b"OggS", b"FORM")


def _silent_format(source: str | io.BytesIO) -> bool:
    """The data starts with a header of a format that is decoded without messages on fd 2."""
    try:
        if isinstance(source, io.BytesIO):
            head = source.getbuffer()[:4].tobytes()
        else:
            with open(source, "rb") as fh:
                head = fh.read(4)
    except OSError:
        return False
    return head in _SILENT_MAGIC


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


def _read_stream(p: Path, st: os.stat_result) -> bytes:
    """The whole content of the FIFO or pipe ``p`` (at most STREAM_MAX_BYTES); AudioFileError when no writer
    comes within FIFO_WAIT_S, or when it is longer. Ctrl-C (KeyboardInterrupt) stops the wait at any time."""
    key = (st.st_dev, st.st_ino)
    with _STREAMS_LOCK:
        if key in _STREAMS:
            return _STREAMS[key]
        # Non-blocking: open() of a FIFO with no writer would block for ever; poll() below waits instead.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        try:
            chunks: list[bytes] = []
            size = 0
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            deadline = time.monotonic() + FIFO_WAIT_S
            started = False
            anonymous = "pipe:[" in os.path.realpath(p)  # /dev/stdin -> /proc/self/fd/0 -> pipe:[inode]
            while True:
                if not poller.poll(200):  # ms; nothing yet (no writer, or a slow one)
                    if not started and time.monotonic() > deadline:
                        raise AudioFileError(
                            f"{p} is a FIFO and nothing wrote to it within {FIFO_WAIT_S:g} s; start the program "
                            "that writes the audio first, or give a file"
                        )
                    continue
                try:
                    data = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    if started or anonymous:  # a pipe's end-of-file is final; a FIFO's, before a writer, is not
                        break
                    # A FIFO reports end-of-file (POLLHUP) until a writer connects: wait on for one.
                    if time.monotonic() > deadline:
                        raise AudioFileError(
                            f"{p} is a FIFO and nothing wrote to it within {FIFO_WAIT_S:g} s; start the program "
                            "that writes the audio first, or give a file"
                        )
                    time.sleep(0.05)
                    continue
                started = True
                size += len(data)
                if size > STREAM_MAX_BYTES:
                    raise AudioFileError(
                        f"{p} is a stream longer than {STREAM_MAX_BYTES // 2**20} MB, which is read into memory; "
                        "save it to a file and give that (files are streamed from disk)"
                    )
                chunks.append(data)
        finally:
            os.close(fd)
        _STREAMS[key] = b"".join(chunks)
        return _STREAMS[key]


def open_audio(path: str | os.PathLike[str]) -> sf.SoundFile:
    """Open ``path`` for reading; raise AudioFileError (one line) when it cannot be audio."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"audio file {p} does not exist; check the path")
    if p.is_dir():
        raise AudioFileError(f"{p} is a folder, not an audio file; give a WAV, FLAC, OGG or MP3 file")
    source: str | io.BytesIO = str(p)
    try:
        st = p.stat()
        if stat.S_ISFIFO(st.st_mode):
            data = _read_stream(p, st)
            if not data:
                raise AudioFileError(f"{p} is a pipe or FIFO that delivered no data (0 bytes); check its writer")
            source, size = io.BytesIO(data), len(data)
        elif not stat.S_ISREG(st.st_mode):
            kind = (
                "a terminal"
                if stat.S_ISCHR(st.st_mode) and _is_tty(p)
                else "a character device"
                if stat.S_ISCHR(st.st_mode)
                else "a block device"
                if stat.S_ISBLK(st.st_mode)
                else "a socket"
            )
            raise AudioFileError(
                f"{p} is {kind}, not an audio file; give a WAV, FLAC, OGG or MP3 file (or pipe one "
                "in and give /dev/stdin)"
            )
        else:
            size = st.st_size
            with open(p, "rb"):
                pass
    except OSError as err:
        raise AudioFileError(f"audio file {p} cannot be read ({err.strerror}); check its permissions") from None
    if size == 0:
        raise AudioFileError(f"audio file {p} is empty (0 bytes); record or choose another file")
    try:
        if _silent_format(source):
            f = sf.SoundFile(source)
        else:
            with _quiet_c_stderr():
                f = sf.SoundFile(source)
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


def _is_tty(p: Path) -> bool:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def read_blocks(f: sf.SoundFile, name: str, frames: int = READ_FRAMES):
    """Yield float32 ``(frames, channels)`` blocks of an open file; corrupt data raises AudioFileError."""
    quiet = f.format in ("MPEG", "MP3")  # only mpg123 prints on its own while reading (the other decoders are silent)
    while True:
        try:
            if quiet:
                with _quiet_c_stderr():
                    block = f.read(frames, dtype="float32", always_2d=True)
            else:
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
