#!/usr/bin/env python3
"""Diagnose the test room's echo path (tests/support/room.py): test_room's stall scenario, run N times, with the
room's clock traces saved.

Each run: a private PulseAudio server, the room (60 ms, RT60 0.3 s), the real Player playing 80 ms noise bursts
every 0.5 s and the real MicrophoneSource; 4 s in, the room process is stopped for 200 ms. Printed per run: each
burst's echo delay (ms) at its time from the stall (s), then the room's input and output steps. Saved per run in
OUT: ``traceK.npz`` (the room's ``trace``: per block, the stamp and its deviation from the sample count, s, for
``inp`` and ``out``) and ``resK.json`` (the stall time, the bursts, the room's counters).

``--busy K`` runs K busy loops beside it (a loaded 2-core machine, like CI's). This is how the room's step rule
was chosen (the comment on STEP_S in tests/support/sample_clock.py): a path that moves shows whether the room's stamps
moved with it.

Usage: python scripts/trace_room.py [--runs 8] [--busy 0] [--out /tmp/room-trace]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from support.pulse import PulseServer  # noqa: E402
from support.room import RoomSpec  # noqa: E402
from support.room_probe import stall_run  # noqa: E402


def _busy() -> None:
    while True:
        pass


def one_run(k: int, out: Path) -> str:
    import sounddevice as sd

    pulse = PulseServer().start()
    sd._terminate()  # PortAudio must see the new server's devices
    sd._initialize()
    try:
        run = stall_run(pulse, RoomSpec(delay_ms=60, rt60_s=0.3), trace=out / f"trace{k}.npz")
    finally:
        pulse.stop()
    (out / f"res{k}.json").write_text(json.dumps({"stall": run.stall_at, "found": run.found, "stats": run.room}))
    delays = " ".join(f"{t - run.stall_at:+.1f}:{d:.1f}" for t, d, _p in run.found)
    return f"{k} {delays}  steps in {run.room['in_steps']} out {run.room['out_steps']}"


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
