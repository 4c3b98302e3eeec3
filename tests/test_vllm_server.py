"""The vLLM server fixture (tests/support/vllm_server.py) leaves no process behind, also when its leader died."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from support.vllm_server import VllmServer


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed and not yet reaped by init, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_stop_kills_the_server_s_process_group_when_its_leader_already_exited(tmp_path):
    server = VllmServer(tmp_path, tmp_path / "vllm.log")
    # A REAL process group standing in for vLLM's (no vLLM here): the leader starts a child (vLLM's engine core)
    # and exits, as a crashed api_server leaves its engine.
    server.proc = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True, process_group=0
    )
    assert server.proc.stdout is not None
    child = int(server.proc.stdout.readline())
    server.proc.wait(5)
    assert _alive(child)
    server.stop()
    deadline = time.monotonic() + 5.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), f"pid {child} (the leader's child) still runs after stop()"
    assert server.proc is None
    server.stop()  # a second stop does nothing
