"""Optional storage of visitors' audio and transcripts. Privacy by default: nothing is written unless
``kiosk.store_audio`` or ``kiosk.store_transcripts`` is true.

Layout in ``kiosk.store_dir`` (default ``$XDG_DATA_HOME/voiceassist/kiosk``), one conversation = one id
``YYYYmmdd-HHMMSS-xxxx`` (UTC start time + 4 random hex digits):
- ``<conv>.jsonl``            one JSON object per turn: time, turn, audio durations, typed text, the audio files,
                              the reply (or the error); written only with ``store_transcripts``
- ``<conv>-t<turn>-<i>.wav``  the visitor's audio of that turn, 16 kHz mono 16-bit; only with ``store_audio``

Rotation (after every write, and by :meth:`Store.rotate` at start): files older than ``store_max_days`` are
deleted, then the oldest files go until the total is under ``store_max_mb``. Only files that look like ours
(the names above) are ever deleted, so a wrongly configured folder cannot lose someone's documents.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voiceassist.config import KioskConfig
from voiceassist.errors import ConfigError
from voiceassist.events import SAMPLE_RATE


class StorageError(Exception):
    """Some of a turn could not be stored. ``failures``: (part, reason) pairs, part "audio", "transcript" or
    "rotation"; ``written``: the files that were written all the same."""

    def __init__(self, failures: list[tuple[str, str]], written: list[Path]) -> None:
        super().__init__("; ".join(f"{part}: {reason}" for part, reason in failures))
        self.failures = failures
        self.written = written


def _reason(err: BaseException) -> str:
    """One line for a storage failure: the OS's words when there are some (e.g. "No space left on device")."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _write_private(path: Path, data: bytes, append: bool = False) -> None:
    """Write ``data`` to ``path``, created 0600 before any byte is written (a half-written file is never
    readable by others). A failed write leaves nothing half-done: a new file is removed, an appended one cut
    back to its size before (no half JSON line)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    existed = path.exists()
    fd = os.open(path, flags, 0o600)
    try:
        size_before = os.fstat(fd).st_size if append else 0
        os.fchmod(fd, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except BaseException:
            if existed:
                try:
                    os.ftruncate(fd, size_before)
                except OSError:
                    pass
            else:
                try:
                    path.unlink()
                except OSError:
                    pass
            raise
    finally:
        os.close(fd)


# Names this module writes; rotation touches nothing else.
_OURS = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}(\.jsonl|-t\d+-\d+\.wav)$")


def default_store_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voiceassist" / "kiosk"


class Store:
    """Writes turns of the current conversation; :meth:`new_conversation` after each reset.

    Thread-safe (the model worker records turns; the daemon loop starts conversations and rotates).
    """

    def __init__(self, kiosk: KioskConfig) -> None:
        self.audio = kiosk.store_audio
        self.transcripts = kiosk.store_transcripts
        self.folder = Path(kiosk.store_dir).expanduser() if kiosk.store_dir else default_store_dir()
        self.max_bytes = int(kiosk.store_max_mb * 1_000_000)
        self.max_age_s = kiosk.store_max_days * 86400.0
        self._lock = threading.Lock()
        self.conversation = ""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.folder / ".voiceassist-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(
                f"kiosk.store_dir {self.folder} is not a writable folder "
                f"({err.strerror or err}); fix store_dir or turn store_audio and "
                "store_transcripts off"
            ) from None
        self.new_conversation()

    @staticmethod
    def from_config(kiosk: KioskConfig) -> Store | None:
        """A Store when storing is configured, else None (nothing is ever written)."""
        return Store(kiosk) if (kiosk.store_audio or kiosk.store_transcripts) else None

    def new_conversation(self) -> str:
        with self._lock:
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            self.conversation = f"{stamp}-{secrets.token_hex(2)}"
            return self.conversation

    def record_turn(
        self,
        turn: int,
        audios: Sequence[np.ndarray],
        text: str,
        reply: str = "",
        error: str = "",
        figures: dict[str, Any] | None = None,
    ) -> list[Path]:
        """Store one turn as configured; returns the files written. Each part is tried on its own (a WAV that
        does not fit must not cost the transcript line); when any failed, raises StorageError (the caller
        reports it) after doing all it could."""
        written: list[Path] = []
        failures: list[tuple[str, str]] = []
        with self._lock:
            conv = self.conversation
            wavs: list[str] = []
            if self.audio:
                import soundfile as sf

                for i, audio in enumerate(audios):
                    path = self.folder / f"{conv}-t{turn}-{i}.wav"
                    try:
                        # Encoded in memory first (<= 30 s = 960 kB), so that the disk write is a plain
                        # os.write with a real OSError (ENOSPC, EROFS), never a libsndfile "System error."
                        buf = io.BytesIO()
                        sf.write(buf, np.asarray(audio, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16", format="WAV")
                        _write_private(path, buf.getvalue())
                    except Exception as err:
                        failures.append(("audio", _reason(err)))
                        continue
                    written.append(path)
                    wavs.append(path.name)
            if self.transcripts:
                record = {
                    "time": datetime.now(UTC).isoformat(timespec="seconds"),
                    "turn": turn,
                    "audio_s": [round(len(a) / SAMPLE_RATE, 2) for a in audios],
                    "text": text,
                    "audio_files": wavs,
                    "reply": reply,
                }
                if error:
                    record["error"] = error
                if failures:
                    record["storage_error"] = "; ".join(f"{p}: {r}" for p, r in failures)
                if figures:
                    record.update(figures)
                path = self.folder / f"{conv}.jsonl"
                try:
                    _write_private(path, (json.dumps(record, ensure_ascii=False) + "\n").encode(), append=True)
                    written.append(path)
                except Exception as err:
                    failures.append(("transcript", _reason(err)))
        try:
            self.rotate()
        except Exception as err:
            failures.append(("rotation", _reason(err)))
        if failures:
            raise StorageError(failures, written)
        return written

    def rotate(self, now: float | None = None) -> list[Path]:
        """Delete our files older than the age limit, then the oldest until under the size limit."""
        now = time.time() if now is None else now
        removed: list[Path] = []
        with self._lock:
            files = []
            for entry in os.scandir(self.folder):
                if entry.is_file(follow_symlinks=False) and _OURS.match(entry.name):
                    st = entry.stat(follow_symlinks=False)
                    files.append((st.st_mtime, st.st_size, Path(entry.path)))
            files.sort()  # oldest first
            total = sum(size for _, size, _ in files)
            for mtime, size, path in files:
                if now - mtime <= self.max_age_s and total <= self.max_bytes:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                total -= size
                removed.append(path)
        return removed


class TurnStore(Protocol):
    """What the turn recorder needs: a ``Store``, or the daemon's stand-in that stores nothing (storage off)."""

    folder: Path

    def record_turn(
        self,
        turn: int,
        audios: Sequence[np.ndarray],
        text: str,
        reply: str = "",
        error: str = "",
        figures: dict[str, Any] | None = None,
    ) -> list[Path]: ...

    def new_conversation(self) -> str: ...
