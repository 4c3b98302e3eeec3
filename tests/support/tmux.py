"""A real terminal for tests: a private tmux server (its own socket, never the user's) running one command.

    with TmuxTerminal(["python", "-m", "voiceassist", ...], width=80, height=24) as term:
        term.wait_for(r"\\[audio \\d+\\.\\d s\\]")
        term.type("hello"); term.keys("Enter")
        assert term.wait_exit() == 0

The command runs under ``sh -c '...; echo $? > rc'`` so its exit status is known after the pane has closed.
Waiting polls the screen with short sleeps up to a deadline, so fast machines do not wait for slow ones.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_counter = itertools.count()


class TmuxTerminal:
    def __init__(
        self,
        argv: Sequence[str],
        width: int = 80,
        height: int = 24,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed: run scripts/test, which installs it")
        self.socket = f"va-test-{os.getpid()}-{next(_counter)}"
        self.dir = Path(tempfile.mkdtemp(prefix="va-tmux-"))
        self.rc_file = self.dir / "rc"
        self.width, self.height = width, height
        cmd = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.rc_file))}"
        # The server inherits this environment (a private socket means a fresh server).
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("TMUX", None)  # never nest into (or talk to) a tmux the tests run inside
        full_env.setdefault("TERM", "xterm-256color")  # CI has no terminal; tmux gives the pane its own TERM
        self._tmux(
            "new-session",
            "-d",
            "-x",
            str(width),
            "-y",
            str(height),
            "-s",
            "t",
            *(["-c", cwd] if cwd else []),
            f"sh -c {shlex.quote(cmd)}",
            env=full_env,
        )
        self._tmux("set-option", "-g", "remain-on-exit", "off", check=False)

    def _tmux(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=10, env=env
        )
        if check and out.returncode:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def screen(self) -> str:
        """The visible screen as text (one line per row)."""
        return self._tmux("capture-pane", "-p", "-t", "t", check=False)

    def keys(self, *keys: str) -> None:
        """Key names as tmux spells them: Enter, C-c, C-d, Space, PageUp, ..."""
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        """Literal text, as if typed."""
        self._tmux("send-keys", "-t", "t", "-l", text)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    def wait_for(self, pattern: str, timeout: float = 30.0, flags: int = re.M) -> re.Match[str]:
        """Poll the screen until ``pattern`` matches it; fail with the last screen when it does not in time."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            m = re.search(pattern, screen, flags)
            if m:
                return m
            if self.rc_file.exists():
                break
            time.sleep(0.1)
        rc = self.rc_file.read_text().strip() if self.rc_file.exists() else "still running"
        raise AssertionError(f"{pattern!r} not on screen within {timeout} s (exit status: {rc}); screen:\n{screen}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        """The command's exit status, once it has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc_file.exists() and self.rc_file.read_text().strip():
                return int(self.rc_file.read_text().strip())
            time.sleep(0.05)
        raise AssertionError(f"the command did not exit within {timeout} s; screen:\n{self.screen()}")

    def close(self) -> None:
        self._tmux("kill-server", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        # tmux leaves its socket file behind when the server ends with its last session.
        socket = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / self.socket
        socket.unlink(missing_ok=True)

    def __enter__(self) -> TmuxTerminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
