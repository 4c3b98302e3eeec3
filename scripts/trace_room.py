#!/usr/bin/env python3
"""Diagnose the test room's echo path (tests/support/room.py): test_room's stall scenario, run N times, with the
room's clock traces saved.

Each run: a private PulseAudio server, the room (60 ms, RT60 0.3 s), the real Player playing 80 ms noise bursts
every 0.5 s and the real MicrophoneSource; 4 s in, the room process is stopped for 200 ms. Printed per run: each
burst's echo delay (ms) at its time from the stall (s), then the room's input and output steps. Saved per run in
OUT: ``traceK.npz`` (the room's ``trace``: per block, the stamp and its deviation from the sample count, s, for
``inp`` and ``out``) and ``resK.json`` (the stall time, the bursts, the room's counters).

``--busy K`` runs K busy loops beside it (a loaded 2-core machine, like CI's). This is how the room's step rule
was chosen (the comment on STEP_S in tests/support/room.py): a path that moves shows whether the room's stamps
moved with it.

Usage: python scripts/trace_room.py [--runs 8] [--busy 0] [--out /tmp/room-trace]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import soxr  # noqa: E402
from support.pulse import PulseServer, start_player  # noqa: E402
from support.room import Room, RoomSpec  # noqa: E402
from test_room import MAX_LAG_S, SR, bursts, echo_delays  # noqa: E402

from voiceassist.audio.farend import FarEndReference  # noqa: E402
from voiceassist.audio.sources import MicrophoneSource  # noqa: E402
from voiceassist.speech.player import Player, Segment  # noqa: E402


def _busy() -> None:
    while True:
        pass


def one_run(k: int, out: Path) -> str:
    import sounddevice as sd

    pulse = PulseServer().start()
    sd._terminate()  # PortAudio must see the new server's devices
    sd._initialize()
    try:
        pulse.load_sink("va_mic")
        pulse._run("pactl", "set-default-source", "va_mic.monitor")
        room = Room(pulse, "va_sink", "va_mic", RoomSpec(delay_ms=60, rt60_s=0.3))
        try:
            player = Player(None)
            start_player(player)
            ref = FarEndReference()
            player.set_reference(ref)
            mic = MicrophoneSource(None, block_ms=20)
            mic.start()
            blocks, stall_at = [], 0.0
            try:
                player.enqueue(Segment.make(1, "b", soxr.resample(bursts(10.0), SR, player.rate).astype(np.float32)))
                t_start = time.monotonic()
                while player.busy() or time.monotonic() - t_start < 1.0:
                    b = mic.read(timeout=0.5)
                    if b is not None:
                        blocks.append((b, ref.read(b.t, len(b.samples))))
                    if not stall_at and time.monotonic() - t_start > 4.0:
                        os.kill(room.proc.pid, signal.SIGSTOP)
                        stall_at = time.monotonic()
                        time.sleep(0.2)
                        os.kill(room.proc.pid, signal.SIGCONT)
                for _ in range(int(MAX_LAG_S / 0.02) + 5):
                    b = mic.read(timeout=0.5)
                    if b is not None:
                        blocks.append((b, ref.read(b.t, len(b.samples))))
            finally:
                mic.close()
                player.close()
            stats = room.stats()
            room.trace(out / f"trace{k}.npz")
        finally:
            room.close()
    finally:
        pulse.stop()
    t0 = blocks[0][0].t
    n = round((blocks[-1][0].t - t0) * SR) + len(blocks[-1][1])
    samples, far = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for b, r in blocks:  # each block at its ADC time
        i = round((b.t - t0) * SR)
        samples[i : i + len(r)], far[i : i + len(r)] = b.samples[: n - i], r[: n - i]
    found = echo_delays(samples, far, t0)
    (out / f"res{k}.json").write_text(json.dumps({"stall": stall_at, "found": found, "stats": stats}))
    delays = " ".join(f"{t - stall_at:+.1f}:{d:.1f}" for t, d, _p in found)
    return f"{k} {delays}  steps in {stats['in_steps']} out {stats['out_steps']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--busy", type=int, default=0, help="busy loops run beside it")
    ap.add_argument("--out", type=Path, default=Path("/tmp/room-trace"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    loops = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for p in loops:
        p.start()
    try:
        for k in range(args.runs):
            print(one_run(k, args.out), flush=True)
    finally:
        for p in loops:
            p.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
