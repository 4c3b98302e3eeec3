"""A private PulseAudio server with null sinks: real PortAudio devices on a machine with no sound card.

PortAudio reaches it through ALSA's pulse plugin (devices ``pulse`` and ``default``); capturing from the
default source records the null sink's monitor, i.e. whatever is played into the sink. The server gets its
own ``XDG_RUNTIME_DIR`` so that tests never touch a user's real server, and is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voiceassist.speech.player import Player

SINK = "va_sink"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs. The daemon (``pulseaudio -D``) is not our child: once it exits it stays a zombie
    until PID 1 reaps it, which took 1-2 s here (a container's init), and ``os.kill(pid, 0)`` succeeds on a
    zombie. Its state in /proc says it is gone at once (3 ms after SIGTERM, measured)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc: fall back to the signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


class PulseServer:
    """Start with :meth:`start`; :attr:`env` holds the variables a client needs (also set in os.environ)."""

    def __init__(self, sinks: tuple[str, ...] = (SINK,)) -> None:
        self.sinks = sinks
        self.runtime = Path(tempfile.mkdtemp(prefix="va-pulse-"))
        self.env = {"XDG_RUNTIME_DIR": str(self.runtime), "PULSE_SERVER": f"unix:{self.runtime}/pulse/native"}
        self.pid: int | None = None
        self._saved: dict[str, str | None] = {}
        self.sink_modules: dict[str, int] = {}

    def _run(self, *args: str, check: bool = True, timeout: float = 15) -> str:
        env = dict(os.environ, **self.env)
        return subprocess.run(args, env=env, check=check, capture_output=True, text=True, timeout=timeout).stdout

    def start(self) -> PulseServer:
        if shutil.which("pulseaudio") is None:
            raise RuntimeError("pulseaudio is not installed: run scripts/test, which installs it")
        (self.runtime / "pulse").mkdir(parents=True, exist_ok=True)
        self._run(
            "pulseaudio",
            "-D",
            "-n",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=yes",
            "--load=module-native-protocol-unix",
            "--log-target=stderr",
            "--log-level=error",
        )
        deadline = time.monotonic() + 10
        pidfile = self.runtime / "pulse" / "pid"
        while time.monotonic() < deadline:
            if pidfile.exists() and self._run("pactl", "info", check=False):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("pulseaudio did not come up within 10 s")
        self.pid = int(pidfile.read_text().split()[0])
        for sink in self.sinks:
            self.load_sink(sink)
        self._run("pactl", "set-default-sink", self.sinks[0])
        self._run("pactl", "set-default-source", f"{self.sinks[0]}.monitor")
        for k, v in self.env.items():
            self._saved[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def load_sink(self, name: str, rate: int = 48000, channels: int = 2) -> int:
        """Load a null sink (its monitor is a capture source); returns the module index."""
        out = self._run(
            "pactl", "load-module", "module-null-sink", f"sink_name={name}", f"rate={rate}", f"channels={channels}"
        )
        self.sink_modules[name] = int(out.strip())
        return self.sink_modules[name]

    def unload_sink(self, name: str) -> None:
        self._run("pactl", "unload-module", str(self.sink_modules.pop(name)))

    def play(self, wav: str | os.PathLike[str], sink: str = SINK, wait: bool = True) -> subprocess.Popen[bytes]:
        """Play a sound file into ``sink`` with paplay (its monitor then carries it)."""
        proc = subprocess.Popen(["paplay", f"--device={sink}", str(wav)], env=dict(os.environ, **self.env))
        if wait:
            proc.wait(timeout=120)
        return proc

    def record(self, seconds: float, source: str = f"{SINK}.monitor", rate: int = 16000) -> object:
        """Record ``seconds`` from ``source`` with parec; returns int16 mono samples as a numpy array."""
        import numpy as np

        proc = subprocess.Popen(
            ["parec", f"--device={source}", "--format=s16le", f"--rate={rate}", "--channels=1", "--raw"],
            env=dict(os.environ, **self.env),
            stdout=subprocess.PIPE,
        )
        time.sleep(seconds)
        proc.terminate()
        data = proc.communicate(timeout=10)[0]
        return np.frombuffer(data, dtype=np.int16)

    def stop(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                for _ in range(100):
                    if not _alive(self.pid):
                        break
                    time.sleep(0.01)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MonitorRecorder:
    """Records a sink's monitor with parec (10 ms latency) in the background, as 16 kHz mono; ``t0`` is the
    capture-clock time (time.monotonic) it started. ``stop()`` returns the samples as float32 in [-1, 1]."""

    def __init__(self, pulse: PulseServer, sink: str = SINK) -> None:
        import threading

        self.proc = subprocess.Popen(
            [
                "parec",
                f"--device={sink}.monitor",
                "--format=s16le",
                "--rate=16000",
                "--channels=1",
                "--raw",
                "--latency-msec=10",
            ],
            env=dict(os.environ, **pulse.env),
            stdout=subprocess.PIPE,
        )
        self.t0 = time.monotonic()
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read(320):
            self.chunks.append(chunk)

    def stop(self) -> object:
        import numpy as np

        self.proc.terminate()
        self.thread.join(timeout=5)
        self.proc.wait(timeout=5)
        return np.frombuffer(b"".join(self.chunks), dtype=np.int16).astype(np.float32) / 32768


def start_player(player: Player, tries: int = 3) -> None:
    """Open ``player`` (a voiceassist Player) and wait for its callbacks: a stream opened right after a test server
    started may get none, so it is reopened, up to ``tries`` times, 2 s each; RuntimeError if it never runs."""
    for _ in range(tries):
        player.open()
        deadline = time.monotonic() + 2.0
        while not player.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        if player.running():
            return
        player.close()
    raise RuntimeError("the output stream never started")
