#!/usr/bin/env python3
"""Replay a ``bench_bargein.py --record`` recording through the capture stage's barge-in decision, offline.

The recording holds what the live echo canceller was handed (microphone, reference as read with its lead) and
what it gave. Here AEC3's output goes, in 20 ms blocks, through the real Segmenter (the config's VAD, told when
the far end plays) and the real ``FullDuplexPolicy.double_talk``, as ``pipeline/capture.py`` feeds them. Per
barge-in: when the policy confirms it, ms after the user's onset (the room's DAC time of the first sample);
per backchannel: whether it was confirmed (a stop); and confirmations near nothing the room said (false).

``--near-end`` tries a near-end detector that is NOT in the product (an experiment for #12): the microphone
through SpeexDSP's linear filter (``wake/linear.py``), and per 30 ms frame the drop of the microphone-to-output
power ratio below its recent median while the far end plays (a near-end talker raises the output, echo alone
does not). ``date``: a double talk's start is dated back to the first such frame up to 250 ms before it (AEC3
hides an onset's first ~120 ms); ``or``: such a frame counts as speech too.

``--cascade`` tries another (NOT in the product either): the microphone through SpeexDSP's linear filter and
then a second AEC3 (so AEC3 sees ~15 dB less echo), its own Segmenter; a double talk still starts on the
product's frames (AEC3 alone leaks echo very rarely), but once it is open, the cascade's speech frames extend it
too (through AEC3 alone the user's voice goes missing for ~300 ms after the first syllable).

Usage: env PYTHONPATH=. .venv/bin/python scripts/replay_bargein.py REC.npz [--near-end date|or | --cascade]
       [--drop-db 6] [--min-base-db 9]   (without either: the product's decision, then the variants)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.playback import AlwaysSpeaking  # noqa: E402

from voiceassist.config import Config, with_overrides  # noqa: E402
from voiceassist.events import AudioBlock  # noqa: E402
from voiceassist.pipeline.duplex import DOUBLE_TALK_GAP_S, FullDuplexPolicy  # noqa: E402
from voiceassist.vad import Segmenter  # noqa: E402
from voiceassist.wake.linear import LinearEchoCanceller  # noqa: E402

SR = 16000
BLOCK = 320  # the capture stage's 20 ms blocks
FRAME = 480  # the near-end detector's 30 ms frames (the VAD's)
FAR_ACTIVE = 1e-5  # mean square of a block of the reference above this: the far end plays (−50 dBFS)
BACK_S = 0.25  # ``date``: how far before a double talk's start a near-end frame may date it, s


class Playback(AlwaysSpeaking):
    """The speech stage's view the policy asks (a FAKE: the recording tells when the far end played)."""

    speaking_now = False

    def speaking(self) -> bool:
        return self.speaking_now


def near_end_frames(mic: np.ndarray, far: np.ndarray, drop_db: float, min_base_db: float) -> np.ndarray:
    """Per 30 ms frame: the linear filter's output rose ``drop_db`` against the microphone, from a recent median
    ratio of at least ``min_base_db`` (the filter has converged), while the far end plays."""
    n = len(mic) // 160 * 160
    lin = LinearEchoCanceller().process(mic[:n], far[:n])
    k = n // FRAME

    def power(x: np.ndarray) -> np.ndarray:
        return np.mean(x[: k * FRAME].reshape(k, FRAME).astype(np.float64) ** 2, axis=1) + 1e-12

    p_mic, p_lin, p_far = power(mic), power(lin), power(far)
    ratio = 10 * np.log10(p_mic / p_lin)
    flags = np.zeros(k, bool)
    quiet: list[float] = []  # the ratios of far-end frames not flagged (the echo alone)
    for i in range(k):
        if p_far[max(0, i - 10) : i + 1].max() <= FAR_ACTIVE:
            continue
        base = float(np.median(quiet[-50:])) if len(quiet) >= 20 else None
        if base is not None and base >= min_base_db and ratio[i] < base - drop_db and p_lin[i] > 1e-6:
            flags[i] = True
        else:
            quiet.append(float(ratio[i]))
    return flags


def cascade_output(mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    """The microphone through SpeexDSP's linear filter, then AEC3 and noise suppression as the product runs them
    (``audio.echo.EchoCanceller``'s settings), in 100 ms pieces; zeros after the last whole 10 ms frame."""
    import pywebrtc_audio

    lin = LinearEchoCanceller()
    apm = pywebrtc_audio.AudioProcessor(
        sample_rate=SR, echo_cancellation=True, noise_suppression=True, high_pass_filter=True, ns_level=1
    )
    n = len(mic) // 160 * 160
    out = np.zeros(len(mic), np.float32)
    for i in range(0, n, 1600):
        j = min(n, i + 1600)
        out[i:j] = apm.process(lin.process(mic[i:j], far[i:j]), far[i:j])
    return out


def replay(
    path: Path, near_end: str | None = None, drop_db: float = 6.0, min_base_db: float = 9.0, cascade: bool = False
) -> dict:
    rec = np.load(path)
    mic, far, out, t0 = rec["mic"], rec["far"], rec["out"], float(rec["t0"])
    seg2 = Segmenter(Config().vad) if cascade else None
    casc = cascade_output(mic, far) if cascade else None
    cfg = with_overrides(Config(), {"audio.echo_cancel": "on", "audio.full_duplex": True, "tts.enabled": True})
    seg = Segmenter(cfg.vad)
    playback = Playback()
    policy = FullDuplexPolicy(
        playback,
        lambda: True,
        enabled=True,
        tail_s=cfg.tts.echo_tail_ms / 1000,
        barge_in=True,
        barge_in_s=cfg.tts.barge_in_ms / 1000,
    )
    flags = near_end_frames(mic, far, drop_db, min_base_db) if near_end else None
    frame_s = cfg.vad.frame_ms / 1000
    blocks = len(far) // BLOCK
    far_e = np.mean(far[: blocks * BLOCK].reshape(blocks, BLOCK).astype(np.float64) ** 2, axis=1)
    last_far, hold_until = -1e9, -1e9
    confirms: list[float] = []
    dated: set[float] = set()
    for j in range(blocks):
        t = t0 + j * BLOCK / SR
        if far_e[j] > FAR_ACTIVE:
            last_far = t
        playback.speaking_now = t - last_far < 1.0
        seg.set_echo_active(t - last_far < 0.5)
        seg.feed(AudioBlock(out[j * BLOCK : (j + 1) * BLOCK], t))
        extra = [False] * len(seg.frames)
        if seg2 is not None and casc is not None:
            seg2.set_echo_active(t - last_far < 0.5)
            seg2.feed(AudioBlock(casc[j * BLOCK : (j + 1) * BLOCK], t))
            extra = [sp for _, sp in seg2.frames][: len(seg.frames)]
        if t < hold_until:  # a barge-in stopped the reply: the capture stage waits for the next one
            continue
        for (ft, speech), more in zip(seg.frames, extra + [False] * (len(seg.frames) - len(extra))):
            # ``--cascade``: the policy's state is read here (no such hook in the product): an open double talk
            if more and policy._dt_onset is not None and (policy._run or ft - policy._dt_last <= DOUBLE_TALK_GAP_S):
                speech = True
            i = int((ft - t0) * SR) // FRAME
            if flags is not None and near_end == "or" and 0 <= i < len(flags):
                speech = speech or bool(flags[i])
            fired = policy.double_talk(ft, speech, frame_s)
            # ``date``: the experiment reaches into the policy's state (no such hook in the product).
            onset = policy._dt_onset
            if flags is not None and near_end == "date" and not fired and onset is not None and onset not in dated:
                i = int((onset - t0) * SR) // FRAME
                lo = max(0, i - int(BACK_S * SR) // FRAME)
                hit = np.nonzero(flags[lo : i + 1])[0]
                if len(hit):
                    policy._dt_onset = t0 + (lo + hit[0]) * FRAME / SR
                dated.add(policy._dt_onset)
            if fired:
                confirms.append(ft)
                hold_until = ft + 1.5
                break
    res: dict = {"barge": [], "backchannel_stops": 0, "false": 0}
    used: set[float] = set()
    for (onset, _dur), kind in zip(rec["said"], rec["kinds"]):
        near = [x for x in confirms if onset - 0.05 <= x <= onset + (2.5 if kind == "barge" else 1.2)]
        used.update(near)
        if kind == "barge":
            res["barge"].append(round((near[0] - onset) * 1000) if near else None)
        elif near:
            res["backchannel_stops"] += 1
    res["false"] = sum(1 for x in confirms if x not in used)
    return res


def line(label: str, res: dict, limit_ms: float) -> str:
    b = res["barge"]
    ok = sum(1 for x in b if x is not None and x <= limit_ms)
    got = [x for x in b if x is not None]
    return (
        f"{label}: confirmed ≤ {limit_ms:.0f} ms {ok} of {len(b)}, median {np.median(got):.0f} ms; "
        f"backchannel stops {res['backchannel_stops']}; false {res['false']}; per barge-in {b}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recordings", nargs="+", type=Path)
    ap.add_argument("--near-end", choices=("date", "or"))
    ap.add_argument("--cascade", action="store_true")
    ap.add_argument("--drop-db", type=float, default=6.0)
    ap.add_argument("--min-base-db", type=float, default=9.0)
    args = ap.parse_args()
    limit = Config().tts.barge_in_ms + 200
    runs = (
        [(args.near_end, args.drop_db, args.min_base_db)]
        if args.near_end
        else []
        if args.cascade
        else [(None, 0, 0), ("date", 6, 9), ("or", 6, 9), ("or", 8, 9), ("or", 10, 9), ("or", 8, 12)]
    )
    for path in args.recordings:
        for mode, drop, base in runs:
            label = f"{path.name} {mode or 'product'}" + (f" (drop {drop} dB, base ≥ {base} dB)" if mode else "")
            print(line(label, replay(path, mode, drop, base), limit), flush=True)
        if args.cascade or not args.near_end:
            print(line(f"{path.name} cascade", replay(path, cascade=True), limit), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
