"""Shared fixtures: a private PulseAudio server, and the loudspeaker room on it."""

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


@pytest.fixture
def room(pulse):
    """The loudspeaker room of tests/support/room.py on the private server: the assistant plays into
    ``va_sink``; the room process (60 ms by the devices' clocks, RT60 0.45 s, the echo as loud as the user) plays
    that and whatever ``room.say(wav)`` is given into ``va_mic``, whose monitor is the default source."""
    from support.room import Room, RoomSpec

    pulse.load_sink("va_mic")
    pulse._run("pactl", "set-default-source", "va_mic.monitor")  # before the room: it moves default streams
    r = Room(pulse, "va_sink", "va_mic", RoomSpec(delay_ms=60, rt60_s=0.45))
    yield r
    r.close()
