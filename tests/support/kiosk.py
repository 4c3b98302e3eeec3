"""Running ``voiceassist kiosk`` as a real subprocess and reading its JSON lines as they come."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.speech import speech_wav

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -m voiceassist ARGS`` from the repository, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "voiceassist", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


def popen_cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    """``python -m voiceassist ARGS`` started from the repository, stdin closed, text pipes by default, with
    SIGINT at its default: a shell that ran the test run in the background (``cmd &``) leaves SIGINT ignored,
    which the child would inherit, and a test's Ctrl-C would never reach it (as a terminal's does)."""
    opts: dict[str, Any] = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    opts.update(kw)
    return subprocess.Popen(
        [sys.executable, "-m", "voiceassist", *args],
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **opts,
    )


def visitor_wav(tmp: Path, texts: list[str], gap_s: float = 1.2, tail_s: float = 1.0) -> Path:
    """``tmp``/visitor.wav: each question after 0.6 s of silence and followed by ``gap_s``, then ``tail_s`` (s)."""
    return speech_wav(tmp / "visitor.wav", *[p for text in texts for p in (0.6, text, gap_s)], tail_s)


def kiosk_config(tmp: Path, **kiosk: object) -> Path:
    """``tmp``/kiosk.toml: these ``[kiosk]`` keys, and short seeded replies (8 tokens, seed 7)."""
    lines = ["[kiosk]"] + [f"{k} = {json.dumps(v)}" for k, v in kiosk.items()]
    lines += ["[generation]", "max_new_tokens = 8", "seed = 7"]
    path = tmp / "kiosk.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class KioskProcess:
    """``voiceassist kiosk ARGS`` with stdout parsed line by line (every line must be JSON)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        # stderr goes to a file: a pipe nobody reads fills up (ALSA can print a line per underrun) and then
        # blocks the kiosk's audio threads.
        self._stderr_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voiceassist", "kiosk", *args],
            cwd=cwd,
            env=dict(os.environ, **(env or {})),
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self._new: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            self.records.append(rec)
            self._new.put(rec)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str = "") -> dict[str, Any]:
        """The first record (already seen or new) matching ``pred``; AssertionError after ``timeout`` s."""
        for rec in list(self.records):
            if pred(rec):
                return rec
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rec = self._new.get(timeout=0.05)
            except queue.Empty:
                if self.proc.poll() is not None and self._new.empty() and not self._reader.is_alive():
                    break
                continue
            if pred(rec):
                return rec
        tail = "\n".join(json.dumps(r)[:200] for r in self.records[-15:])
        raise AssertionError(
            f"no {what or 'matching record'} within {timeout} s; rc={self.proc.poll()}; "
            f"last records:\n{tail}\nstderr: {self._stderr_now()}"
        )

    def _stderr_now(self) -> str:
        self._stderr_file.seek(0)
        self.stderr = self._stderr_file.read()
        return self.stderr[-2000:]

    def stderr_tail(self, n: int = 6000) -> str:
        return self._stderr_now() and self.stderr[-n:]

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self._stderr_now()
        return rc

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, as systemd stops the service; (exit status, seconds it took to exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.finish(timeout=timeout)
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def logs(self, message_start: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == "log" and r.get("message", "").startswith(message_start)]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]


class NotifySocket:
    """A real sd_notify socket, as systemd gives a Type=notify service: a thread collects the datagrams as
    they come (as systemd does; an unread socket would fill up and drop messages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self._got: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed.is_set():
            try:
                self._got.append(self.sock.recv(4096).decode())
            except (TimeoutError, OSError):
                continue

    def messages(self) -> list[str]:
        """Everything received so far (and not returned before)."""
        out, self._got = self._got, []
        return out

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=1)
        self.sock.close()
