#!/usr/bin/env python3
"""Kiosk soak test: ``voiceassist kiosk`` with the tiny model (random weights: replies are noise, every code
path is real) listening on a real PortAudio device — a private PulseAudio null sink's monitor — while espeak
questions are played into it in a loop for N minutes.

    .venv/bin/python scripts/soak.py --minutes 2     # CI (tests/test_soak.py, marked slow)
    .venv/bin/python scripts/soak.py --minutes 60    # the documented long run

Checks, after a warm-up: resident memory grows less than 5 %; the App's queues do not grow; no input
overflow and no dropped block; every utterance is answered (one reply per utterance, no error). The figures
come from the health section of the kiosk's status file (sampled every 5 s) and from its JSON-line events.
Writes the results as JSON (``--out``) and prints one summary line; exit status 0 when every check passes.
Needs pulseaudio, pactl, paplay and espeak-ng (scripts/setup.sh's test packages).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PulseAudio and espeak helpers the tests use

QUESTIONS = [
    "Hello, where is the exhibition about ancient Egypt?",
    "What time does the museum close today?",
    "Is there a cafe in the building?",
    "Can I take photographs inside?",
]
RSS_LIMIT = 0.05  # allowed growth of resident memory after the warm-up
QUEUE_LIMIT = 50  # events waiting for the kiosk loop beyond this = the consumer is falling behind


def _speech_loop(tmp: Path) -> tuple[Path, int]:
    """One pass of the loop: the questions with pauses, as a 16 kHz WAV; returns (path, questions)."""
    import numpy as np
    import soundfile as sf
    from support.speech import silence, speech_16k

    parts = []
    for q in QUESTIONS:
        parts += [silence(0.5), speech_16k(q, tmp), silence(2.5)]  # 2.5 s: room for the tiny model's reply
    path = tmp / "loop.wav"
    sf.write(str(path), np.concatenate(parts), 16000)
    return path, len(QUESTIONS)


def _read_events(proc: subprocess.Popen[str], records: list[dict], bad: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            records.append(json.loads(line))
        except ValueError:
            bad.append(line)


def run(minutes: float, warmup_s: float, out: Path, model: str) -> dict:
    from support.pulse import PulseServer

    tmp = Path(tempfile.mkdtemp(prefix="va-soak-"))
    wav, per_pass = _speech_loop(tmp)
    status = tmp / "status.json"
    conf = tmp / "kiosk.toml"
    conf.write_text(
        f'[kiosk]\nstatus_file = "{status}"\nidle_reset_s = 60.0\nmax_turns = 20\n'
        '[generation]\nmax_new_tokens = 12\n[audio]\ninput_device = "default"\n'
    )
    samples: list[dict] = []
    records: list[dict] = []
    bad: list[str] = []
    with PulseServer() as pulse, open(tmp / "stderr.log", "w") as stderr:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "voiceassist", "kiosk", "--config", str(conf), "--model", model],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        reader = threading.Thread(target=_read_events, args=(proc, records, bad), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 180
            while not any(r.get("message") == "kiosk ready" for r in records):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"soak: the kiosk did not start: {(tmp / 'stderr.log').read_text()[-2000:]}")
                time.sleep(0.1)
            t0 = time.monotonic()
            passes = 0
            next_sample = t0
            while time.monotonic() - t0 < minutes * 60:
                player = pulse.play(wav, wait=False)
                while player.poll() is None:
                    if time.monotonic() >= next_sample:
                        next_sample += 5.0
                        data = json.loads(status.read_text()) if status.exists() else {}
                        if data.get("health"):
                            samples.append(dict(data["health"], t=round(time.monotonic() - t0, 1)))
                    time.sleep(0.1)
                passes += 1
            time.sleep(4.0)  # the last reply
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=15)
            reader.join(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
    elapsed = time.monotonic() - t0
    utterances = [r for r in records if r.get("type") == "utterance"]
    replies = [r for r in records if r.get("type") == "reply_done" and not (r["interrupted"] and not r["n_tokens"])]
    # Model/app errors fail a turn; audio warnings (e.g. the null sink's digital silence before the first
    # question) are reported but are no unanswered utterance.
    errors = [r for r in records if r.get("type") == "error" and r.get("source") in ("model", "app")]
    warnings = [r for r in records if r.get("type") == "error" and r.get("source") not in ("model", "app")]
    after = [s for s in samples if s["t"] >= warmup_s] or samples[-1:]
    rss0 = after[0]["rss_kb"] if after else 0
    rss_end = max(s["rss_kb"] for s in after[len(after) // 2 :]) if after else 0
    growth = (rss_end - rss0) / rss0 if rss0 else float("nan")
    last = samples[-1] if samples else {}
    result = {
        "minutes": round(elapsed / 60, 2),
        "model": model,
        "questions_played": passes * per_pass,
        "utterances": len(utterances),
        "replies": len(replies),
        "errors": [e["message"] for e in errors][:10],
        "warnings": [f"{w['source']}: {w['message']}" for w in warnings][:10],
        "resets": sum(1 for r in records if str(r.get("message", "")).startswith("conversation reset")),
        "rss_kb_after_warmup": rss0,
        "rss_kb_end": rss_end,
        "rss_growth": round(growth, 4),
        "rss_kb_samples": [s["rss_kb"] for s in samples],
        "max_events_queued": max((s["events_queued"] for s in samples), default=0),
        "max_turns_queued": max((s["turns_queued"] for s in samples), default=0),
        "overflows": last.get("overflows", 0),
        "dropped_blocks": last.get("dropped_blocks", 0),
        "threads": sorted({s["threads"] for s in samples}),
        "exit_code": rc,
        "non_json_lines": len(bad),
    }
    checks = {
        "rss_growth_under_5_percent": growth < RSS_LIMIT,
        "no_queue_growth": result["max_events_queued"] <= QUEUE_LIMIT and result["max_turns_queued"] <= 1,
        "no_overflows": result["overflows"] == 0 and result["dropped_blocks"] == 0,
        "every_utterance_answered": len(utterances) > 0 and len(replies) == len(utterances) and not errors,
        "thread_count_stable": not samples or max(result["threads"]) - min(result["threads"]) <= 2,
        "clean_exit": rc == 0 and not bad,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="how long the speech loop plays")
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="memory reference taken after this long (default: 25 %% of the run, at most 300 s)",
    )
    ap.add_argument("--model", default="tiny", help="model (default: the tiny random-weight model)")
    ap.add_argument("--out", default="soak-results.json", help="results file (JSON)")
    args = ap.parse_args()
    warmup = args.warmup_s if args.warmup_s is not None else min(300.0, args.minutes * 60 * 0.25)
    r = run(args.minutes, warmup, Path(args.out), args.model)
    failed = [k for k, ok in r["checks"].items() if not ok]
    print(
        f"soak {r['minutes']} min: {r['utterances']} utterances, {r['replies']} replies, {len(r['errors'])} "
        f"errors, {r['resets']} resets; RSS {r['rss_kb_after_warmup']} → {r['rss_kb_end']} kB "
        f"({100 * r['rss_growth']:+.1f} %); max queued events {r['max_events_queued']}, turns "
        f"{r['max_turns_queued']}; overflows {r['overflows']}, dropped {r['dropped_blocks']}; "
        + ("PASSED" if not failed else f"FAILED: {', '.join(failed)}")
        + f" (results in {args.out})"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
