"""Shared fixtures: a private PulseAudio server, a folder of espeak speech."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from support import ...`

from support.pulse import PulseServer  # noqa: E402


@pytest.fixture
def pulse():
    """A fresh private PulseAudio server with one null sink ``va_sink`` (default sink; its monitor is the
    default source), with PortAudio re-initialised so that it sees this server's devices."""
    server = PulseServer().start()
    try:
        import sounddevice as sd

        sd._terminate()
        sd._initialize()
    except (ImportError, OSError):
        pass
    yield server
    server.stop()
