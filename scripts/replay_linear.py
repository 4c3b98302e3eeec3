#!/usr/bin/env python3
"""Replay a ``bench_bargein.py --record`` recording offline: how well a linear canceller does on it, and how
still the echo's lag behind the reference it was handed stood.

The recording holds what the live echo canceller was handed (microphone, reference as read with its lead) and
gave. Here the microphone and reference go through the linear wake branch's SpeexDSP filter
(``wake/linear.py``, 300 ms) and the canceller's own GCC-PHAT (``audio/delay.py``). A linear filter must
re-learn the whole path after every move of the reference against the echo, so its ERLE shows such moves where
AEC3 (non-linear, with its own delay tracking) hides them.

Reported, over 1 s windows while the far end plays and nobody talks (from 0.3 s before to 1 s after each thing
the room said): linear ERLE median (p10 / p90), the share of windows ≥ 15 dB, and the measured lag's range.

Usage: env PYTHONPATH=. .venv/bin/python scripts/replay_linear.py REC.npz [REC2.npz ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voiceassist.audio.delay import FRAME, DelayEstimator  # noqa: E402
from voiceassist.wake.linear import LinearEchoCanceller  # noqa: E402

SR = 16000
WINDOW = SR  # samples per ERLE window (1 s)
FAR_ACTIVE_DBFS = -50.0  # a 10 ms frame of the reference above this counts as playing
SKIP_S = 30.0  # s at the start: the filter converging (the first reply)


def replay(path: Path) -> dict[str, float]:
    rec = np.load(path)
    mic, far = rec["mic"], rec["far"]
    t0 = float(rec["t0"])
    n = len(mic) // FRAME * FRAME
    out = LinearEchoCanceller().process(mic[:n], far[:n])
    talk = np.zeros(n, bool)  # the room's user speaking, or just about to
    for onset, dur in rec["said"]:
        a, b = round((onset - t0 - 0.3) * SR), round((onset - t0 + dur + 1.0) * SR)
        talk[max(a, 0) : max(b, 0)] = True
    frames = far[:n].reshape(-1, FRAME)
    active = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12) > FAR_ACTIVE_DBFS
    erles, lags = [], []
    est = DelayEstimator()
    per = WINDOW // FRAME
    for w in range(0, n - WINDOW + 1, WINDOW):
        act = active[w // FRAME : w // FRAME + per]
        lag = est.push(mic[w : w + WINDOW], far[w : w + WINDOW], int(act.sum()), every_s=1.0)
        if w < SKIP_S * SR or act.mean() < 0.8 or talk[w : w + WINDOW].any():
            continue
        if lag is not None:
            lags.append(lag)
        p_in = np.mean(mic[w : w + WINDOW].astype(np.float64) ** 2)
        p_out = np.mean(out[w : w + WINDOW].astype(np.float64) ** 2)
        erles.append(10 * np.log10((p_in + 1e-12) / (p_out + 1e-12)))
    e = np.array(erles)
    lg = np.array(lags) if lags else np.array([np.nan])
    return {
        "windows": len(e),
        "median_db": float(np.median(e)),
        "p10_db": float(np.percentile(e, 10)),
        "p90_db": float(np.percentile(e, 90)),
        "share_15db": float(np.mean(e >= 15.0)),
        "lag_min_ms": float(np.nanmin(lg)),
        "lag_p10_ms": float(np.nanpercentile(lg, 10)),
        "lag_p90_ms": float(np.nanpercentile(lg, 90)),
        "lag_max_ms": float(np.nanmax(lg)),
    }


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    for arg in sys.argv[1:]:
        r = replay(Path(arg))
        print(
            f"{arg}: {r['windows']} windows, linear ERLE median {r['median_db']:.1f} dB "
            f"(p10 {r['p10_db']:.1f} / p90 {r['p90_db']:.1f}), ≥ 15 dB in {100 * r['share_15db']:.0f} %; "
            f"echo lag {r['lag_min_ms']:.2f}–{r['lag_max_ms']:.2f} ms (p10 {r['lag_p10_ms']:.2f} / "
            f"p90 {r['lag_p90_ms']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
