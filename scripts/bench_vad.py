#!/usr/bin/env python3
"""VAD in noise: each ``[vad] engine`` × front end on synthesised hard cases; writes ``## VAD in noise``.

Speech cases (6 espeak questions in 5 voices, 1.5 s apart, after 2 s of the noise alone): clean; pink noise and
babble (16 espeak talkers) at 10 and 5 dB SNR; music at 10 dB; knocks between the questions; a quiet distant
talker (−48 dBFS RMS, reverberant, over a −70 dBFS room). Per case: onset error (SpeechStarted − true start, ms;
the latest and the earliest over the questions), coverage (share of the true speech inside the audio the model
gets), questions missed, and turns that overlap no question. Non-speech: ``--noise-minutes`` each of pink noise,
music, knocks, babble alone (babble is speech, but nobody's talking to the assistant) and knocks in a quiet room
(where Silero's input gain is largest) → false turns per hour. CPU: the VAD's process time per second of audio,
over the noise cases and over the speech cases; "silero (always on)" is engine silero with the network run on
every frame (what the sleeping on a steady floor saves).

Front ends: ``raw`` (as captured), ``ns`` (WebRTC noise suppression, as the capture chain runs it before the
VAD), ``ns+agc`` (and AGC2). Targets (#12): onset within 60 ms, coverage ≥ 97 %, no turn from non-speech.

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_vad.py [--noise-minutes 10] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from _sections import replace_section  # noqa: E402 (scripts/ is on sys.path when run)
from support import noisy  # noqa: E402
from support.audio_scenes import Scene  # noqa: E402
from support.speech import SR, pink_noise  # noqa: E402

from voiceassist.config import VadConfig  # noqa: E402
from voiceassist.events import AudioBlock, SpeechStarted, Utterance  # noqa: E402
from voiceassist.vad import Segmenter  # noqa: E402
from voiceassist.vad_engines import make_engine  # noqa: E402

ENGINES = ("webrtc", "silero", "webrtc+silero", "silero (always on)")
ALWAYS_ON = "silero (always on)"  # engine silero with the network on every frame (no sleeping on the floor)
FRONTS = ("raw", "ns", "ns+agc")
BLOCK = 320  # 20 ms blocks, as the microphone gives them


def front_end(audio: np.ndarray, front: str) -> tuple[np.ndarray, float]:
    """(processed audio on the input's timeline, CPU s) through the capture chain's noise suppression/AGC."""
    if front == "raw":
        return audio, 0.0
    from voiceassist.audio.echo import EchoCanceller

    ec = EchoCanceller(None, noise_suppression=True, auto_gain=front == "ns+agc")
    t0 = time.process_time()
    out = [ec.process(AudioBlock(audio[i : i + BLOCK], i / SR)).samples for i in range(0, len(audio), BLOCK)]
    out.append(ec.flush().samples)
    cpu = time.process_time() - t0
    return np.concatenate(out)[ec.latency :], cpu


VAD_OVERRIDES: dict[str, float] = {}  # --silero-threshold / --min-level-dbfs


def segment(audio: np.ndarray, engine: str) -> tuple[list[float], list[tuple[float, float]], float]:
    """(onsets s, utterance audio intervals s, CPU s) of the live segmenter with ``engine``."""
    cfg = dataclasses.replace(VadConfig(), engine="silero" if engine == ALWAYS_ON else engine, **VAD_OVERRIDES)
    seg = Segmenter(cfg)
    if engine == ALWAYS_ON:
        seg._engine = make_engine("silero", cfg.silero_threshold, cfg.silero_max_gain_db, gated=False)
    events = []
    t0 = time.process_time()
    for i in range(0, len(audio), BLOCK):
        events += seg.feed(AudioBlock(audio[i : i + BLOCK], i / SR))
    events += seg.flush()
    cpu = time.process_time() - t0
    onsets = [e.t for e in events if isinstance(e, SpeechStarted)]
    spans = [(u.start_t, u.start_t + sum(u.durations)) for u in events if isinstance(u, Utterance)]
    return onsets, spans, cpu


def score(scene: Scene, onsets: list[float], spans: list[tuple[float, float]]) -> dict[str, float]:
    grid = np.zeros(int(scene.duration * 1000) + 1, bool)  # 1 ms grid of the audio the model gets
    for a, b in spans:
        grid[max(0, int(a * 1000)) : int(b * 1000)] = True
    truth_ms = sum(int(b * 1000) - int(a * 1000) for a, b in scene.truth)
    covered = sum(int(grid[int(a * 1000) : int(b * 1000)].sum()) for a, b in scene.truth)
    errors, missed = [], 0
    for a, b in scene.truth:
        # The onset of the utterance that covers the question's start (an utterance that started more than
        # 0.3 s before it began on something else: that question's onset is "merged", not measured).
        covering = [o for o, (sa, sb) in zip(onsets, spans) if sa <= a + 0.05 and sb > a and o > a - 0.3]
        later = [o for o, (sa, sb) in zip(onsets, spans) if a - 0.3 < o < b]
        if covering or later:
            errors.append(((covering or later)[0] - a) * 1000)
        else:
            missed += 1
    merged = sum(1 for sa, sb in spans if sum(1 for ta, tb in scene.truth if sa < tb and sb > ta) > 1)
    false = sum(1 for a, b in spans if not any(a < tb and b > ta for ta, tb in scene.truth))
    return {
        "latest_ms": max(errors) if errors else float("nan"),
        "earliest_ms": min(errors) if errors else float("nan"),
        "coverage": covered / truth_ms,
        "missed": missed,
        "merged": merged,
        "false": false,
    }


def speech_cases() -> dict[str, Scene]:
    base = noisy.questions()
    d = base.duration
    knocks_between = noisy.knocks(d, peak=0.5)
    for a, b in base.truth:  # knocks only in the gaps (a knock during a word is not a false turn)
        knocks_between[int((a - 1.0) * SR) : int((b + 1.0) * SR)] = 0
    return {
        "clean": base,
        "pink 10 dB": noisy.with_noise(base, pink_noise(d, 1.0, seed=11), 10),
        "pink 5 dB": noisy.with_noise(base, pink_noise(d, 1.0, seed=12), 5),
        "babble 10 dB": noisy.with_noise(base, noisy.babble(d), 10),
        "babble 5 dB": noisy.with_noise(base, noisy.babble(d, seed=9), 5),
        "music 10 dB": noisy.with_noise(base, noisy.music(d), 10),
        "knocks": Scene((base.audio + knocks_between).astype(np.float32), base.truth),
        "distant −48 dBFS": noisy.distant(base),
    }


def noise_cases(minutes: float) -> dict[str, np.ndarray]:
    s = minutes * 60
    return {
        "pink": pink_noise(s, 0.05, seed=13),
        "music": 0.1 * noisy.music(s),
        "knocks": noisy.knocks(s),
        "babble": 0.05 * noisy.babble(s),
        # Where Silero's input gain is largest: knocks peaking at −20 dBFS in a −70 dBFS room.
        "knocks, quiet room": noisy.knocks(s, peak=0.1, seed=7) + pink_noise(s, 10 ** (-70 / 20), seed=8),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--noise-minutes", type=float, default=10.0)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--fronts", default=",".join(FRONTS))
    ap.add_argument("--silero-threshold", type=float)
    ap.add_argument("--min-level-dbfs", type=float)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="appended to the run's description (e.g. how the machine was held)")
    args = ap.parse_args()
    args.note = f"; {args.note}" if args.note else ""
    for key in ("silero_threshold", "min_level_dbfs"):
        if getattr(args, key) is not None:
            VAD_OVERRIDES[key] = getattr(args, key)
    engines, fronts = args.engines.split(","), args.fronts.split(",")
    cases = speech_cases()
    noises = noise_cases(args.noise_minutes)
    rows, cost = [], {}
    summary: dict[tuple[str, str], dict[str, float]] = {}
    for front in fronts:
        processed = {name: front_end(sc.audio, front)[0] for name, sc in cases.items()}
        processed_noise = {name: front_end(x, front) for name, x in noises.items()}
        for engine in engines:
            latest, earliest, min_cov, missed, false, merged = -1e9, 1e9, 1.0, 0, 0, 0
            speech_cpu, speech_s = 0.0, 0.0
            for name, sc in cases.items():
                onsets, spans, cpu = segment(processed[name], engine)
                speech_cpu, speech_s = speech_cpu + cpu, speech_s + len(sc.audio) / SR
                r = score(sc, onsets, spans)
                rows.append((front, engine, name, r))
                if r["latest_ms"] == r["latest_ms"]:
                    latest, earliest = max(latest, r["latest_ms"]), min(earliest, r["earliest_ms"])
                min_cov = min(min_cov, r["coverage"])
                missed += r["missed"]
                false += r["false"]
                merged += r["merged"]
            per_hour = {}
            cpu_total, audio_s, fe_total = 0.0, 0.0, 0.0
            for name, (x, fe_cpu) in processed_noise.items():
                _, spans, cpu = segment(x, engine)
                per_hour[name] = len(spans) * 60 / args.noise_minutes
                cpu_total += cpu
                fe_total += fe_cpu
                audio_s += len(x) / SR
            cost[(front, engine)] = (fe_total / audio_s, cpu_total / audio_s, speech_cpu / speech_s)
            summary[(front, engine)] = dict(
                latest=latest, earliest=earliest, min_cov=min_cov, missed=missed, merged=merged, false=false, **per_hour
            )
            print(front, engine, summary[(front, engine)], "cpu", cost[(front, engine)], flush=True)
    noise_names = list(noises)
    lines = [
        "## VAD in noise",
        "",
        f"`{' '.join(['PYTHONPATH=. .venv/bin/python scripts/bench_vad.py'] + shown_args())}` "
        f"({time.strftime('%Y-%m-%d')}, one run, all engines side by side{args.note}). Speech: 6 espeak questions, "
        "5 voices, in 8 cases (48 questions); targets: onset within 60 ms, coverage ≥ 97 %, no turn from "
        "non-speech. Onset error = SpeechStarted − the true start (negative: early).",
        "",
        "| front end | engine | latest onset (ms) | earliest onset (ms) | lowest coverage | questions without onset "
        "| turns holding >1 question | false turns in speech cases | false turns/h: "
        + " | ".join(noise_names)
        + " | VAD CPU s/s: noise | speech cases | front end CPU s/s |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(noise_names) + "---|---|---|",
    ]
    for (front, engine), s in summary.items():
        fe, vad_noise, vad_speech = cost[(front, engine)]
        lines.append(
            f"| {front} | {engine} | {s['latest']:.0f} | {s['earliest']:.0f} | {100 * s['min_cov']:.1f} % | "
            f"{s['missed']:.0f} | {s['merged']:.0f} | {s['false']:.0f} | "
            + " | ".join(f"{s[n]:.0f}" for n in noise_names)
            + f" | {vad_noise:.4f} | {vad_speech:.4f} | {fe:.4f} |"
        )
    lines += ["", "Per case (latest onset ms / earliest / coverage / no onset / merged turns / false turns):", ""]
    lines.append("| front end | engine | " + " | ".join(cases) + " |")
    lines.append("|---|---|" + "---|" * len(cases))
    by = {}
    for front, engine, _name, r in rows:
        cell = f"{r['latest_ms']:.0f} / {r['earliest_ms']:.0f} / {100 * r['coverage']:.1f} % / {r['missed']:.0f}"
        by.setdefault((front, engine), []).append(f"{cell} / {r['merged']:.0f} / {r['false']:.0f}")
    for (front, engine), cells in by.items():
        lines.append(f"| {front} | {engine} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", text, "## VAD in noise")
    return 0


def shown_args() -> list[str]:
    """The command line's arguments without ``--note`` and its text (that goes into the description)."""
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith("--note"):
            skip = a == "--note"
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
