"""The room's echo path measured through the assistant's real devices (test_room, scripts/trace_room.py).

Noise bursts go through the real Player (a far-end reference stamped from its DAC times) into the assistant's
sink; the room process plays their echo into the microphone sink; the real MicrophoneSource records it
(ADC-stamped blocks); each burst's echo is found in the microphone by cross-correlation against the reference.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from support.pulse import start_player
from support.room import Room, RoomSpec
from voiceassist.audio.farend import FarEndReference
from voiceassist.audio.sources import CaptureStats, MicrophoneSource
from voiceassist.speech.player import Player, Segment

SR = 16000
BURST_S, EVERY_S = 0.08, 0.5  # white-noise bursts of 80 ms, one every 0.5 s
MAX_LAG_S = 0.5  # echo searched up to this late (a broken room shows its real path, not a clipped one)
STALL_S = 0.2  # the room process is stopped this long, s
STALL_AFTER_S = 4.0  # ... this far into the bursts, s


def bursts(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = np.zeros(int(seconds * SR), np.float32)
    n = int(BURST_S * SR)
    for start in range(int(0.2 * SR), len(x) - n, int(EVERY_S * SR)):
        x[start : start + n] = 0.05 * rng.standard_normal(n)  # linear range of the room's loudspeaker
    return x


def echo_delays(mic: np.ndarray, ref: np.ndarray, t0: float) -> list[tuple[float, float, float]]:
    """(capture-clock time of the burst, its echo's delay ms, peak / median |correlation|) for each burst."""
    out = []
    loud = np.flatnonzero(np.abs(ref) > 1e-3)
    starts = loud[np.diff(loud, prepend=-SR) > SR // 10]  # the first loud sample after 100 ms of quiet
    n, lags = int(BURST_S * SR), int(MAX_LAG_S * SR)
    for s in starts:
        if s + n + lags > len(mic):
            break
        c = np.abs(np.correlate(mic[s : s + n + lags], ref[s : s + n], "valid"))
        k = int(np.argmax(c))
        out.append((t0 + s / SR, k * 1000 / SR, float(c[k] / (np.median(c) + 1e-12))))
    return out


@dataclass(frozen=True)
class StallRun:
    found: list[tuple[float, float, float]]  # echo_delays of every burst
    stall_at: float  # capture-clock time the room was stopped, s
    room: dict[str, float]  # the room's counters
    mic: CaptureStats  # the MicrophoneSource's counters


def stall_run(pulse: Any, spec: RoomSpec, trace: str | os.PathLike[str] | None = None) -> StallRun:
    """10 s of bursts through a room of ``spec`` on ``pulse`` (a PulseServer with the default sink ``va_sink``),
    the room process stopped for STALL_S after STALL_AFTER_S; ``trace``: where the room saves its clock traces."""
    pulse.load_sink("va_mic")
    pulse._run("pactl", "set-default-source", "va_mic.monitor")  # before the room: it moves default streams
    room = Room(pulse, "va_sink", "va_mic", spec)
    try:
        player = Player(None)
        start_player(player)
        ref = FarEndReference()
        player.set_reference(ref)
        mic = MicrophoneSource(None, block_ms=20)
        mic.start()
        blocks = []  # (microphone block, the far end heard over the same stretch of the capture clock)
        stall_at = None
        try:
            player.enqueue(Segment.make(1, "bursts", soxr.resample(bursts(10.0), SR, player.rate).astype(np.float32)))
            t_start = time.monotonic()
            while player.busy() or time.monotonic() - t_start < 1.0:
                b = mic.read(timeout=0.5)
                if b is not None:
                    blocks.append((b, ref.read(b.t, len(b.samples))))  # (the reference keeps only 4 s)
                if stall_at is None and time.monotonic() - t_start > STALL_AFTER_S:
                    os.kill(room.proc.pid, signal.SIGSTOP)
                    stall_at = time.monotonic()
                    time.sleep(STALL_S)
                    os.kill(room.proc.pid, signal.SIGCONT)
            for _ in range(int(MAX_LAG_S / 0.02) + 5):  # the last echo
                b = mic.read(timeout=0.5)
                if b is not None:
                    blocks.append((b, ref.read(b.t, len(b.samples))))
        finally:
            mic.close()
            player.close()
        stats = room.stats()
        if trace is not None:
            room.trace(trace)
    finally:
        room.close()
    if stall_at is None:
        raise RuntimeError("the bursts ended before the room was stalled")
    t0 = blocks[0][0].t
    n = round((blocks[-1][0].t - t0) * SR) + len(blocks[-1][1])
    samples, far = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for b, r in blocks:  # each block at its ADC time
        i = round((b.t - t0) * SR)
        samples[i : i + len(r)], far[i : i + len(r)] = b.samples[: n - i], r[: n - i]
    return StallRun(echo_delays(samples, far, t0), stall_at, stats, mic.stats)
