"""The kiosk's status file: one JSON object, rewritten atomically on every event worth knowing.

The kiosk (writer) and ``voiceassist status`` (reader) never share memory; the file is the whole interface.
It is replaced with ``os.replace`` of a temporary file in the same folder, so a reader sees either the old or
the new content, never half of one. Uptime is not stored: it is derived from ``started_unix`` by the reader,
so it stays right between updates.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from voiceassist.config import KioskConfig
from voiceassist.errors import ConfigError

STATUS_NAME = "status.json"
# Where a system service (scripts/voiceassist.service, RuntimeDirectory=voiceassist) keeps it.
SYSTEM_STATUS = Path("/run/voiceassist") / STATUS_NAME


def status_path(kiosk: KioskConfig) -> Path:
    """The configured status file, else ``$RUNTIME_DIRECTORY`` (set by systemd), else
    ``$XDG_RUNTIME_DIR/voiceassist``, else ``/tmp/voiceassist-<uid>``."""
    if kiosk.status_file:
        return Path(kiosk.status_file).expanduser()
    for var, sub in (("RUNTIME_DIRECTORY", ""), ("XDG_RUNTIME_DIR", "voiceassist")):
        base = os.environ.get(var, "").split(":")[0]
        if base:
            return Path(base) / sub / STATUS_NAME
    return Path(tempfile.gettempdir()) / f"voiceassist-{os.getuid()}" / STATUS_NAME


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file + rename); raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)  # readable by an administrator running `voiceassist status`
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The status file's content, or None when it does not exist or is not a status file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "pid" in data else None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


class StatusFile:
    """The writer side. Thread-safe: the event loop, the device callback and the heartbeat all update it.

    Fields: state, detail, pid, version, model, started_unix, updated_unix, turns (answered since start),
    conversation_turns (since the last reset), resets, errors (count), last_error {message, source, unix},
    device {input: {name, state, detail}, output: {...}}, config (path).
    """

    def __init__(self, path: Path, **fields: Any) -> None:
        from voiceassist import __version__

        self.path = path
        self._lock = threading.RLock()  # re-entrant: a signal handler may log mid-write
        self.write_error: str = ""  # the last failure to write, "" when fine (reported once by the daemon)
        self._owner_fd: int | None = None
        self._owner_fd = _take_ownership(path)  # before the first write: never overwrite a running kiosk's file
        self._data: dict[str, Any] = {
            "state": "starting",
            "detail": "",
            "pid": os.getpid(),
            "version": __version__,
            "model": "",
            "started_unix": time.time(),
            "turns": 0,
            "conversation_turns": 0,
            "resets": 0,
            "errors": 0,
            "last_error": None,
            "device": {
                "input": {"name": "", "state": "closed", "detail": ""},
                "output": {"name": "", "state": "closed", "detail": ""},
            },
        }
        self._data.update(fields)
        self.update()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._data))

    def update(self, **fields: Any) -> None:
        """Set top-level fields and rewrite the file. A write failure is remembered, never raised: the
        kiosk keeps serving visitors even when /run is full."""
        with self._lock:
            self._data.update(fields)
            self._write_locked()

    def device(self, which: str, state: str, detail: str = "", name: str | None = None) -> None:
        """Record the state of the ``input`` or ``output`` device ("open", "lost", "closed")."""
        with self._lock:
            dev = self._data["device"][which]
            dev.update(state=state, detail=detail)
            if name is not None:
                dev["name"] = name
            self._write_locked()

    def error(self, message: str, source: str = "") -> None:
        with self._lock:
            self._data["errors"] += 1
            self._data["last_error"] = {"message": message, "source": source, "unix": time.time()}
            self._write_locked()

    def count(self, key: str, by: int = 1) -> None:
        with self._lock:
            self._data[key] = self._data.get(key, 0) + by
            self._write_locked()

    def close(self) -> None:
        """Give up the status file (the kiosk stopped): another kiosk may take it from now on."""
        with self._lock:
            if self._owner_fd is not None:
                os.close(self._owner_fd)
                self._owner_fd = None

    def move(self, path: Path) -> None:
        """Write to a new path from now on (configuration reload); the old file is removed. ConfigError when
        another kiosk owns the new one (this one keeps its old file)."""
        with self._lock:
            if path != self.path:
                fd = _take_ownership(path)
                if self._owner_fd is not None:
                    os.close(self._owner_fd)
                self._owner_fd = fd
            old, self.path = self.path, path
            self._write_locked()
            if old != path:
                try:
                    old.unlink()
                except OSError:
                    pass

    def _write_locked(self) -> None:
        self._data["updated_unix"] = time.time()
        try:
            write_atomic(self.path, self._data)
            self.write_error = ""
        except OSError as err:
            self.write_error = f"cannot write the status file {self.path}: {err.strerror or err}"


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _take_ownership(path: Path) -> int | None:
    """Lock ``.<name>.lock`` beside the status file for as long as this kiosk runs (an flock: the kernel drops
    it when the process dies, however it dies) and write our pid in it. Two kiosks sharing one status file
    would overwrite each other's state, and the first to stop would mark the file stopped while the other
    serves (#16), so the second refuses to start. Returns the held fd; None when the folder cannot be
    written (the status file cannot be written either, which the daemon reports); ConfigError when held."""
    lock = _lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        except OSError:
            holder = "?"
        os.close(fd)
        raise ConfigError(
            f"another kiosk (pid {holder}) is running with the status file {path}; stop it, or give this one "
            "its own kiosk.status_file"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def describe(data: dict[str, Any], path: Path, now: float | None = None) -> list[str]:
    """A few human lines for ``voiceassist status``."""
    now = time.time() if now is None else now
    up = max(0.0, now - float(data.get("started_unix", now)))
    h, rem = divmod(int(up), 3600)
    m, s = divmod(rem, 60)
    state = data.get("state", "?") + (f" ({data['detail']})" if data.get("detail") else "")
    lines = [
        f"state:      {state}",
        f"uptime:     {h}h{m:02d}m{s:02d}s (pid {data.get('pid')}, voiceassist {data.get('version', '?')})",
        f"turns:      {data.get('turns', 0)} answered, {data.get('conversation_turns', 0)} in this "
        f"conversation, {data.get('resets', 0)} resets",
    ]
    for which in ("input", "output"):
        dev = (data.get("device") or {}).get(which) or {}
        if dev.get("state") not in (None, "closed") or dev.get("name"):
            extra = f" — {dev['detail']}" if dev.get("detail") else ""
            lines.append(f"{which + ':':<11} {dev.get('name') or 'default'}: {dev.get('state', '?')}{extra}")
    err = data.get("last_error")
    if err:
        ago = max(0, int(now - float(err.get("unix", now))))
        src = f"{err['source']}: " if err.get("source") else ""
        lines.append(f"last error: {src}{err.get('message', '')} ({ago} s ago; {data.get('errors', 1)} in all)")
    else:
        lines.append("last error: none")
    if data.get("model"):
        lines.append(f"model:      {data['model']}")
    health = data.get("health")
    if isinstance(health, dict) and health:
        lines.append(
            f"health:     {health.get('rss_kb', 0) / 1024:.0f} MB resident, {health.get('events_queued', 0)} "
            f"events and {health.get('turns_queued', 0)} turns queued, {health.get('overflows', 0)} "
            f"overflows, {health.get('dropped_blocks', 0)} dropped blocks"
            # #16: freezes of the process (the device kept) and turns storage could not keep
            + (f", {health['stalls']} stalls" if health.get("stalls") else "")
            + (f", {health['storage_failed_turns']} turns not stored" if health.get("storage_failed_turns") else "")
        )
    lines.append(f"status:     {path}")
    return lines
