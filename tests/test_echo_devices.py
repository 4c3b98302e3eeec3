"""Echo cancellation on real PortAudio devices (private PulseAudio server): the Player writes the far end, the
MicrophoneSource's ADC-stamped blocks go through the canceller.

Two echo paths: the null sink's own monitor (the microphone hears exactly what is played, after the server's
buffering), and the room process (tests/support/room.py: loudspeaker clipping, 80 ms, RT60 0.45 s, the echo as
loud as a user) between the assistant's output sink and the microphone sink; the room keeps its echo path at its
delay by the devices' clocks, so the device-stamped path is the room's 80 ms, as in a real room.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import soxr
from support.audio_scenes import phrase
from support.pulse import start_player
from support.room import Room, RoomSpec
from support.speech import SR, silence

from voiceassist.audio.echo import EchoCanceller
from voiceassist.audio.farend import FarEndReference
from voiceassist.audio.sources import MicrophoneSource
from voiceassist.speech.player import Player, Segment

pytest.importorskip("pywebrtc_audio")
pytestmark = [pytest.mark.pulse, pytest.mark.slow]


def reply_16k() -> np.ndarray:
    parts = []
    for text in (
        "Here is the weather for today. It will be sunny in the morning, and warm.",
        "In the afternoon clouds come in from the west, with light rain by the evening.",
        "Tomorrow looks much the same, a little warmer, with a light wind from the south.",
    ):
        parts += [phrase(text, "en-gb"), silence(0.3)]
    x = np.concatenate(parts)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def play_and_cancel(player: Player, seconds: float, room: Room | None = None, repeat: int = 1):
    """Play the reply, capture for ``seconds`` through the canceller; returns (mic, out, canceller, mic source)."""
    reply = np.tile(reply_16k(), repeat)
    ref = FarEndReference()
    start_player(player)
    player.set_reference(ref)
    mic = MicrophoneSource(None, block_ms=20)
    mic.start()
    ec = EchoCanceller(ref, noise_suppression=True, mic_timed=lambda: mic.timing_reported)
    player.enqueue(Segment.make(1, "reply", soxr.resample(reply, SR, player.rate).astype(np.float32)))
    raw, out = [], []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            block = mic.read(timeout=0.5)
            if block is None:
                continue
            raw.append(block.samples)
            out.append(ec.process(block).samples)
    finally:
        mic.close()
        player.close()
    return np.concatenate(raw), np.concatenate(out)[ec.latency :], ec, mic


def erle_db(a: np.ndarray, b: np.ndarray, from_s: float) -> float:
    """Median over the seconds from ``from_s`` of each second's ERLE: one glitch of a loaded machine's audio
    server (an underrun shifts the echo path for a moment) does not decide it; the per-second figures print.
    (scripts/bench_aec.py reports the strict figure: all the energy after convergence.)"""
    n = min(len(a), len(b))
    per_s = []
    for i in range(int(from_s * SR), n - SR + 1, SR):
        pa = np.mean(a[i : i + SR].astype(np.float64) ** 2)
        pb = np.mean(b[i : i + SR].astype(np.float64) ** 2)
        per_s.append(float(10 * np.log10(pa / (pb + 1e-12))))
    print("ERLE per second:", [round(x, 1) for x in per_s])
    return float(np.median(per_s))


def test_the_players_own_output_is_cancelled_by_30_db_with_device_timing(pulse):
    raw, out, ec, mic = play_and_cancel(Player(None), 14.0)
    state = ec.state()
    got = erle_db(raw, out, 6.0)
    print(f"ERLE {got:.1f} dB; state {state}; notices {ec.notices()}")
    assert np.sqrt(np.mean(raw[6 * SR :] ** 2)) > 0.02  # the echo really is there
    assert state.timing == "device" and state.convergence == "converged"
    assert state.delay_ms is not None and abs(state.delay_ms) < 40  # the stamps are right to a few ms
    assert got >= 30.0


def test_the_room_echo_as_loud_as_the_user_is_cancelled(pulse):
    pulse.load_sink("va_mic")
    pulse._run("pactl", "set-default-source", "va_mic.monitor")
    room = Room(pulse, "va_sink", "va_mic", RoomSpec(delay_ms=80, rt60_s=0.45))
    try:
        raw, out, ec, _ = play_and_cancel(Player(None), 14.0, room=room)
        stats = room.stats()
    finally:
        room.close()
    state = ec.state()
    got = erle_db(raw, out, 6.0)
    print(f"room ERLE {got:.1f} dB; state {state}; room {stats}")
    assert np.sqrt(np.mean(raw[6 * SR :] ** 2)) > 0.02
    # The device-stamped path is the room's delay (the stamps right to a few ms), within AEC3's range: the
    # reference never had to move.
    assert state.delay_ms is not None and abs(state.delay_ms - 80) <= 5, state
    assert state.realigned == 0 and state.convergence == "converged", state
    assert got >= 25.0
