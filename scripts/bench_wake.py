#!/usr/bin/env python3
"""Benchmark of the wake word (issue 13); replaces the ``## Wake word`` section of BENCHMARKS.md.

All audio is espeak-ng speech made here (no recordings exist on this machine), 16 kHz mono:

1. Detection rate per built-in word on 40 clips each: 5 espeak-ng voices × 2 speeds × (quiet | pink noise at
   10 dB SNR) × (the wake word, a 1 s pause, a question | the wake word and the question in one breath). A clip
   counts as detected when the detector fires between the wake word's start and 1 s after its end.
2. The turns the live chain makes of those clips (FileSource → detector → Segmenter → WakeGate, the
   ``segment --wake-word`` path): exactly one turn, and for the same-breath clips how much of the question is
   lost or how much of the wake word is left at the cut (the wake word's end is taken from a separate espeak
   rendering of it alone, at the same voice and speed: approximate by a few tens of ms).
3. False accepts per hour on speech without the wake word (sentences of every kind, quiet and in 10 dB noise),
   separately on look-alikes ("okay, no bother", "hey, Travis", "Alexander", "hey, Microsoft" ...), and on
   synthetic music (sox: plucked melodies, chords, drum hits).
4. CPU cost per second of audio (process_time, one thread, 20 ms blocks).

Each detector records every score once; the counts at other thresholds replay those scores through the live
``Trigger`` (threshold + refractory period), so every threshold is judged on the very same audio.

Usage: .venv/bin/python scripts/bench_wake.py [--engines micro,open] [--negative-min 20] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from _sections import replace_section  # noqa: E402 (scripts/ is on sys.path when run)
from support.speech import SR, mix_at_snr, pink_noise, silence, speech_16k  # noqa: E402

from voiceassist.config import VadConfig, WakeConfig  # noqa: E402
from voiceassist.events import AudioBlock  # noqa: E402
from voiceassist.wake.detector import BUILTIN_WORDS, Trigger, build, resolve  # noqa: E402
from voiceassist.wake.offline import gated_segments  # noqa: E402

PHRASES = {"okay_nabu": "Okay Nabu", "hey_jarvis": "Hey Jarvis", "alexa": "Alexa", "hey_mycroft": "Hey Mycroft"}
VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+f2", "en-gb-x-rp")
SPEEDS = (140, 180)  # words per minute
SNR_DB = 10.0
PAUSE_S = 1.0  # the "with a pause" clips: longer than the 0.6 s hang-over, so the question is its own utterance
BLOCK = 320  # 20 ms blocks, as the microphone gives
REFRACTORY_S = WakeConfig().refractory_ms / 1000
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
QUESTIONS = (
    "what time is it",
    "where is the nearest train station",
    "turn on the lights in the kitchen",
    "how is the weather tomorrow",
    "tell me a joke",
    "when does the museum open",
    "set a timer for ten minutes",
    "who painted this picture",
)
SENTENCES = (
    "Good morning, could you tell me where the conference room is?",
    "I think we should leave before the traffic gets worse.",
    "The quarterly numbers look better than we expected.",
    "Can you hold the door for me, please?",
    "She said the train was delayed by twenty minutes.",
    "Let's grab a coffee after the meeting.",
    "Do you know if the pharmacy is still open?",
    "My phone battery is almost empty again.",
    "We are waiting for the rest of the group to arrive.",
    "That was the best concert I have seen in years.",
    "Please remember to sign the visitor book at reception.",
    "Is there a bus that goes to the airport from here?",
    "I left my umbrella in the taxi this morning.",
    "The elevator on the left is out of order.",
    "Could you speak a little louder, I cannot hear you.",
    "Our flight leaves at half past seven tomorrow.",
    "Nobody told me the meeting had been moved.",
    "Thanks a lot, that was really helpful.",
    "Hello, is anybody sitting here?",
    "Okay, let's get started then.",
    "Hey, how are you doing today?",
    "Hey there, long time no see.",
    "Okay, that sounds good to me.",
    "Alright, I will call you back later.",
)
LOOKALIKES = {
    "okay_nabu": ("Okay, no bother.", "Okay, nab you.", "Okay, now boo.", "Okay, Nabil.", "Okay, not now."),
    "hey_jarvis": ("Hey, Travis.", "Hey, service.", "Hey, Jarvie.", "Hey, jar of this.", "Hey, Marvis."),
    "alexa": ("Alexander.", "Alex, uh.", "A lexer.", "Election.", "Alexis."),
    "hey_mycroft": ("Hey, Microsoft.", "Hey, my craft.", "Hey, my crofter.", "Hey, Minecraft.", "Hey, my cross."),
}


def espeak_16k(text: str, tmp: Path, voice: str, speed: int) -> np.ndarray:
    return speech_16k(text, tmp, voice=voice, speed=speed)


@dataclass
class Clip:
    word: str
    voice: str
    speed: int
    noisy: bool
    pause: bool
    path: Path
    wake_start: float  # s in the file
    wake_end: float  # s (approximate for the same-breath clips)
    question_start: float  # s (approximate for the same-breath clips)


def word_gap(body: np.ndarray, wake_s: float) -> tuple[float, float]:
    """(wake word's end, question's start), s into a same-breath rendering: the digital-silence gap espeak leaves
    between words (20 ms frames below -60 dBFS) nearest the wake word's length when rendered alone (which is
    longer: sentence-final lengthening); that length itself when there is no gap within 0.3 s."""
    frame = 320
    n = len(body) // frame
    energy = 10 * np.log10((body[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1) + 1e-10)
    quiet = energy < -60
    runs, i = [], 0
    while i < n:
        if quiet[i]:
            j = i
            while j < n and quiet[j]:
                j += 1
            runs.append((i * frame / SR, j * frame / SR))
            i = j
        else:
            i += 1
    near = [r for r in runs if abs(r[0] - wake_s) <= 0.3 or abs(r[1] - wake_s) <= 0.3]
    if not near:
        return wake_s, wake_s
    return min(near, key=lambda r: min(abs(r[0] - wake_s), abs(r[1] - wake_s)))


def make_positives(tmp: Path) -> list[Clip]:
    clips = []
    k = 0
    for word, phrase in PHRASES.items():
        for voice in VOICES:
            for speed in SPEEDS:
                for noisy in (False, True):
                    for pause in (True, False):
                        question = QUESTIONS[k % len(QUESTIONS)]
                        k += 1
                        wake = espeak_16k(phrase, tmp, voice, speed)
                        lead = silence(1.0)
                        w0 = len(lead) / SR
                        if pause:
                            body = np.concatenate([wake, silence(PAUSE_S), espeak_16k(question, tmp, voice, speed)])
                            w_end, q_start = w0 + len(wake) / SR, w0 + len(wake) / SR + PAUSE_S
                        else:
                            body = espeak_16k(f"{phrase} {question}", tmp, voice, speed)
                            w_end, q_start = word_gap(body, len(wake) / SR)
                            w_end, q_start = w0 + w_end, w0 + q_start
                        x = np.concatenate([lead, body, silence(1.5)])
                        if noisy:
                            x = mix_at_snr(x, pink_noise(len(x) / SR, 0.05, seed=k), SNR_DB)
                        path = tmp / f"pos-{word}-{k}.wav"
                        sf.write(str(path), x, SR, subtype="FLOAT")
                        clips.append(Clip(word, voice, speed, noisy, pause, path, w0, w_end, q_start))
    return clips


def synth_music(seconds: float, seed: int) -> np.ndarray:
    """Instrumental music from sox: a plucked melody over chords and drum hits, 120 bpm."""
    rng = np.random.default_rng(seed)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    beat = 0.25
    n = int(seconds / beat)
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros(len(t), np.float32)
    root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    for i in range(n):
        f = root * 2 ** (scale[int(rng.integers(0, len(scale)))] / 12) * (2 if rng.random() < 0.3 else 1)
        s0 = int(i * beat * SR)
        dur = int(beat * SR * (2 if rng.random() < 0.3 else 1))
        tt = np.arange(dur) / SR
        env = np.exp(-tt * 6)
        note = sum((0.5**h) * np.sin(2 * np.pi * f * (h + 1) * tt) for h in range(4)) * env * 0.25
        out[s0 : s0 + dur] += note[: len(out) - s0].astype(np.float32)
        if i % 8 == 0:  # a chord every two beats... every 2 s
            chord = sum(np.sin(2 * np.pi * root * 2 ** (iv / 12) * tt * 0.5) for iv in (0, 4, 7)) * 0.08
            out[s0 : s0 + dur] += chord[: len(out) - s0].astype(np.float32)
        if i % 2 == 0:  # kick / hat
            hit = rng.standard_normal(min(800, len(out) - s0)) * np.exp(-np.arange(min(800, len(out) - s0)) / 150)
            out[s0 : s0 + len(hit)] += (0.15 * hit).astype(np.float32)
    out /= max(1e-6, float(np.max(np.abs(out)))) / 0.5
    # sox's reverb makes it less synthetic-sounding; skip quietly when sox is missing
    try:
        raw = out.astype(np.float32).tobytes()
        cmd = ["sox", "-t", "raw", "-r", str(SR), "-e", "floating-point", "-b", "32", "-c", "1", "-", "-t", "raw"]
        cmd += ["-", "reverb", "40"]
        res = subprocess.run(cmd, input=raw, capture_output=True, check=True, timeout=120)
        out = np.frombuffer(res.stdout, np.float32)[: len(out)].copy()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def make_negatives(tmp: Path, minutes: float) -> dict[str, np.ndarray]:
    """{"speech": ..., "lookalike <word>": ..., "music": ...}: long 16 kHz streams."""
    rng = np.random.default_rng(7)

    def stream(texts: list[tuple[str, str, int]], noisy_every: int) -> np.ndarray:
        parts = []
        for i, (text, voice, speed) in enumerate(texts):
            s = espeak_16k(text, tmp, voice, speed)
            if noisy_every and i % noisy_every == 1:
                s = mix_at_snr(s, pink_noise(len(s) / SR, 0.05, seed=i), SNR_DB)
            parts += [s, silence(float(rng.uniform(0.3, 1.2)))]
        return np.concatenate(parts)

    speech_texts = [(t, v, s) for t in SENTENCES for v in VOICES for s in (130, 160, 190)]
    speech = stream(speech_texts, noisy_every=2)
    reps = max(1, int(minutes * 60 / (len(speech) / SR) + 0.999))
    speech = np.concatenate([speech] * reps)[: int(minutes * 60 * SR)]
    out = {"speech": speech}
    for word, looks in LOOKALIKES.items():
        for text in looks:  # one stream per phrase, so that each phrase's false accepts can be told apart
            out[f"lookalike {word}|{text}"] = stream([(text, v, s) for v in VOICES for s in SPEEDS], noisy_every=2)
    out["music"] = synth_music(minutes * 60 / 2, seed=3)
    return out


@dataclass
class Scores:
    trace: list[tuple[float, float]] = field(default_factory=list)
    cpu_s: float = 0.0
    audio_s: float = 0.0


def score(word: str, engine: str, x: np.ndarray) -> Scores:
    det = build(word, engine, threshold=0.999, refractory_ms=0)
    det.trace = []
    t0 = time.process_time()
    for i in range(0, len(x), BLOCK):
        det.process(AudioBlock(x[i : i + BLOCK], t=i / SR))
    return Scores(det.trace, time.process_time() - t0, len(x) / SR)


def fired(trace: list[tuple[float, float]], threshold: float) -> list[float]:
    trig = Trigger(threshold, REFRACTORY_S)
    return [t for t, p in trace if trig.fires(t, p)]


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_wake-"))
    print("making clips ...", flush=True)
    clips = make_positives(tmp)
    negatives = make_negatives(tmp, args.negative_min)
    results: dict = {"clips": len(clips), "neg_s": {k: len(v) / SR for k, v in negatives.items()}, "engines": {}}
    for engine in args.engines:
        r: dict = {"words": {}}
        for word in BUILTIN_WORDS:
            print(f"{engine} {word} ...", flush=True)
            cutoff = resolve(word, engine).cutoff
            thresholds = sorted({*THRESHOLDS, cutoff})
            pos = []
            cpu = audio = 0.0
            for c in (c for c in clips if c.word == word):
                data, _ = sf.read(str(c.path), dtype="float32")
                s = score(word, engine, data)
                cpu, audio = cpu + s.cpu_s, audio + s.audio_s
                pos.append((c, s.trace))
            neg = {}
            for name, x in negatives.items():
                if name.startswith("lookalike") and not name.startswith(f"lookalike {word}|"):
                    continue
                if engine == "open" and name in ("speech", "music"):
                    x = x[: int(args.open_negative_min * 60 * SR)]  # ~15x the CPU of micro: a shorter stretch
                s = score(word, engine, x)
                cpu, audio = cpu + s.cpu_s, audio + s.audio_s
                neg[name.split("|")[1] if name.startswith("lookalike") else name] = (s.trace, len(x) / SR)
            per_t = {}
            for th in thresholds:
                hits = {}
                for c, trace in pos:
                    ts = fired(trace, th)
                    hit = [t for t in ts if c.wake_start <= t <= c.wake_end + 1.0]
                    hits[(c.noisy, c.pause)] = hits.get((c.noisy, c.pause), []) + [bool(hit)]
                fa = {name: len(fired(tr, th)) / (dur / 3600) for name, (tr, dur) in neg.items()}
                fa_n = {name: len(fired(tr, th)) for name, (tr, dur) in neg.items()}
                fa_n["lookalike"] = sum(n for name, n in fa_n.items() if name in LOOKALIKES[word])
                per_t[th] = {"hits": hits, "fa_h": fa, "fa_n": fa_n}
            lags, spans = [], []
            for c, trace in pos:
                ts = [t for t in fired(trace, cutoff) if c.wake_start <= t <= c.wake_end + 1.0]
                if ts:
                    lags.append(ts[0] - c.wake_end)
                # How long the score stays above the cutoff around one wake word: what refractory_ms must cover.
                above = [t for t, p in trace if p > cutoff and c.wake_start <= t <= c.wake_end + 1.0]
                if above:
                    spans.append(above[-1] - above[0])
            r["words"][word] = {
                "spans": spans,
                "cutoff": cutoff,
                "per_t": per_t,
                "lags": lags,
                "neg_s": {k: v[1] for k, v in neg.items()},
            }
            # The live chain on the clips, at the model's own cutoff.
            turns_ok = lost = residue = same_breath = gaps = 0
            for c, _ in pos:
                _, segs, _ = gated_segments(str(c.path), VadConfig(), WakeConfig(word=word, engine=engine))
                n_turns = len({s["turn"] for s in segs})
                turns_ok += n_turns == 1
                if n_turns == 1 and not c.pause and segs[0]["via"] == "wake":
                    same_breath += 1
                    gaps += c.question_start > c.wake_end
                    cut = segs[0]["start"]
                    lost += cut - c.question_start > 0.05
                    residue += c.wake_end - cut > 0.1
            r["words"][word]["turns"] = {"ok": turns_ok, "n": len(pos), "same_breath": same_breath, "gaps": gaps}
            r["words"][word]["cut"] = {"lost": lost, "residue": residue}
            r["words"][word]["cpu_per_s"] = cpu / audio
            r["words"][word]["lookalikes"] = {t: per_t[cutoff]["fa_n"][t] for t in LOOKALIKES[word]}
        results["engines"][engine] = r
    return results


def rate(hits: dict, noisy: bool | None = None, pause: bool | None = None) -> tuple[int, int]:
    ok = n = 0
    for (nz, pa), xs in hits.items():
        if (noisy is None or nz == noisy) and (pause is None or pa == pause):
            ok, n = ok + sum(xs), n + len(xs)
    return ok, n


def report(res: dict, command: str) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()[0]
    neg = res["neg_s"]
    lines = [
        "## Wake word",
        "",
        f"Command: `{command}` ({when}, {platform.machine()}, one thread, machine shared: load average {load:.1f}).",
        "",
        f"Positives: {res['clips'] // 4} clips per word (espeak-ng voices {', '.join(VOICES)} × {SPEEDS} wpm × "
        f"quiet / pink noise at {SNR_DB:.0f} dB SNR × a {PAUSE_S:.0f} s pause before the question / none). "
        f"Negatives: {neg['speech'] / 60:.0f} min of espeak sentences without the wake word (half in noise), "
        f"{len(LOOKALIKES['okay_nabu']) * len(VOICES) * len(SPEEDS)} look-alike utterances per word, "
        f"{neg['music'] / 60:.0f} min of synthetic music. "
        "False accepts are per hour of that audio; the look-alike column counts utterances. A 0 per hour "
        "over N min means fewer than 180/N per hour (95 % upper bound), not none.",
        "",
    ]
    for engine, r in res["engines"].items():
        speech_min = next(iter(r["words"].values()))["neg_s"]["speech"] / 60
        music_min = next(iter(r["words"].values()))["neg_s"]["music"] / 60
        lines += [
            f"### engine `{engine}`",
            "",
            f"False accepts scored on {speech_min:.0f} min of speech and {music_min:.0f} min of music per word.",
            "",
            "| word | threshold | detected: all | quiet | 10 dB noise | pause | same breath | FA/h speech "
            "| FA look-alikes | FA/h music |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for word, w in r["words"].items():
            for th, d in sorted(w["per_t"].items()):
                h = d["hits"]
                mark = " (model's own)" if th == w["cutoff"] else ""

                def pct(ok_n: tuple[int, int]) -> str:
                    return f"{ok_n[0]}/{ok_n[1]}"

                lines.append(
                    f"| {word} | {th:g}{mark} | **{pct(rate(h))}** | {pct(rate(h, noisy=False))} | "
                    f"{pct(rate(h, noisy=True))} | {pct(rate(h, pause=True))} | {pct(rate(h, pause=False))} | "
                    f"{d['fa_h']['speech']:.1f} | {d['fa_n']['lookalike']} | {d['fa_h']['music']:.1f} |"
                )
        lines.append("")
        for word, w in r["words"].items():
            lags = w["lags"]
            lag = f"median {np.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms" if lags else "none"
            if w["spans"]:
                lag += f" (score above the cutoff for up to {max(w['spans']) * 1000:.0f} ms)"
            t, cut = w["turns"], w["cut"]
            lines.append(
                f"- `{word}` at its own cutoff: detection {lag} after the wake word's end; the live chain "
                f"(`segment --wake-word`) made exactly one turn of {t['ok']}/{t['n']} clips; of "
                f"{t['same_breath']} same-breath turns ({t['gaps']} with a gap between the words to check against), "
                f"{cut['lost']} lost > 50 ms of the question at the cut and "
                f"{cut['residue']} kept > 100 ms of the wake word; CPU {w['cpu_per_s']:.4f} s per s of audio. "
                "Look-alikes that fired (of "
                + str(len(VOICES) * len(SPEEDS))
                + " renderings each): "
                + ", ".join(f'"{t}" {n}' for t, n in w["lookalikes"].items())
                + "."
            )
        lines.append("")
    lines += defaults_paragraph(res)
    lines += [
        "How espeak limits these figures: every clip is one synthesiser (a handful of formant voices, no breath, no "
        "room, no accent or age range, identical renderings at identical settings), so the detection rates say "
        "whether a model hears *this* voice, not how it does on people (the models were trained on real and "
        "TTS speech from many voices; Home Assistant's own figures are the ones to quote for real users). The "
        "false-accept rates come from a few minutes of repeated espeak sentences and synthetic music: far too "
        "little audio for rates of a few per day, and no real TV, crowd or sung vocals. They show which "
        "thresholds are hopeless, not which is safe in a lobby; measure on the site's own audio with "
        "`voiceassist wake RECORDING --json` before deploying.",
        "",
    ]
    return "\n".join(lines)


def defaults_paragraph(res: dict) -> list[str]:
    """Why the [wake] defaults are what they are, from this run's figures."""
    eng = res["engines"]
    if "micro" not in eng:
        return []
    micro = eng["micro"]["words"]
    nabu = micro["okay_nabu"]
    low, own = nabu["per_t"][0.5], nabu["per_t"][nabu["cutoff"]]
    span = max(max(w["spans"]) for w in micro.values() if w["spans"])
    text = (
        "Defaults from these figures: `threshold = 0` (each model's own cutoff): lowering it buys detections at "
        f"a steep price in look-alikes (okay_nabu at 0.5: {rate(low['hits'])[0]}/40 detected and "
        f"{low['fa_n']['lookalike']} look-alike accepts; at its own {nabu['cutoff']}: "
        f"{rate(own['hits'])[0]}/40 and {own['fa_n']['lookalike']}). `refractory_ms = 1500`: the score stays above "
        f"the cutoff for up to {span * 1000:.0f} ms around one wake word, so one utterance never fires twice."
    )
    if "open" in eng:
        ow = eng["open"]["words"]
        cpu_ratio = np.mean([w["cpu_per_s"] for w in ow.values()]) / np.mean([w["cpu_per_s"] for w in micro.values()])
        better = [
            w
            for w in ow
            if rate(ow[w]["per_t"][ow[w]["cutoff"]]["hits"])[0] > rate(micro[w]["per_t"][micro[w]["cutoff"]]["hits"])[0]
        ]
        text += (
            f' `engine = "micro"`: the open engine costs {cpu_ratio:.0f}× the CPU, fires later (okay_nabu median '
            f"{np.median(ow['okay_nabu']['lags']) * 1000:.0f} ms after the word against "
            f"{np.median(nabu['lags']) * 1000:.0f} ms, too late for the same-breath cut) and heard more on espeak "
            f'only for {", ".join(better) or "no word"}; `engine = "open"` is there for such voices.'
        )
    return [text, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="micro,open", help="comma-separated: micro, open")
    ap.add_argument("--negative-min", type=float, default=20.0, help="minutes of speech without the wake word")
    ap.add_argument("--open-negative-min", type=float, default=6.0, help="of which the open engine scores this much")
    ap.add_argument("--no-write", action="store_true", help="print only; do not change BENCHMARKS.md")
    args = ap.parse_args()
    args.engines = [e for e in args.engines.split(",") if e]
    res = run(args)
    command = "python scripts/bench_wake.py " + " ".join(sys.argv[1:])
    text = report(res, command.strip())
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", text, "## Wake word")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
