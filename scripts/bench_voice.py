#!/usr/bin/env python3
"""Voice-to-voice latency: end of speech (capture clock) → the first sample of the spoken reply at the output
device, with and without the speculative first sentence, through the real App and real PortAudio output.

    flock /work/coord/heavy.lock .venv/bin/python scripts/bench_voice.py [--turns 41] [--models tiny,heavy]

The conversation of scripts/bench_latency.py (espeak-ng questions with pauses) is read by
``FileSource(realtime=False)``, as ``voiceassist chat --from-file F --fast`` does; speech output is on: the real
Speaker (pyttsx3 + espeak-ng worker process) plays through PortAudio into a private PulseAudio null sink (no
sound card here). The figure is each ``reply_done`` event's ``voice_latency_s``: the player's PortAudio DAC time
of the reply's first sample minus the utterance's end of speech, both on the capture clock (a fast file's
hang-over counts at its full audio length, as a microphone would make the user wait; everything after it is
wall time: the speculative prefill overlaps the paced hang-over, as with a microphone).

Speculative prefill is on in both rows; the turns alternate ``tts.speculative_first_sentence`` off / on in one
conversation, so that both rows see the same machine load. The first turn is warm-up. Random weights: replies
are noise text (spoken anyway); ``generation.max_new_tokens`` 12 makes a first "sentence" of 12 tokens (noise
rarely has a sentence end: without speculation its sound waits for the reply's end, as a 12-token first sentence
of a real reply would). Models: ``tiny`` and ``heavy`` (the random model of scripts/bench_session.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from _benchlib import fast_app, interleaved_events  # noqa: E402
from bench_latency import make_conversation, open_model  # noqa: E402
from support.pulse import PulseServer  # noqa: E402

from voiceassist.config import Config, with_overrides  # noqa: E402

MODES = (False, True)  # tts.speculative_first_sentence, alternated turn by turn


def run_once(configs: list[Config], backend, wav: Path) -> tuple[list[dict[str, list[float]]], dict[str, int]]:
    from voiceassist.speech import Speaker

    n = len(configs)
    speaker = Speaker(configs[0].tts, configs[0].audio.output_device)
    if not speaker.wait_ready(30):
        raise SystemExit(f"speech output did not start: {list(speaker.errors.queue)}")
    app = fast_app(configs, backend, wav, speaker=speaker)
    out: list[dict[str, list[float]]] = [{"voice": [], "token": [], "prepared": []} for _ in configs]
    seen = 0  # first sentences prepared up to the last reply
    unspoken = 0
    app.start()
    try:
        # the next turn's setting is put in place on each utterance, before its pause (see interleaved_events)
        for ev in interleaved_events(
            app, configs, lambda c: app.set_speculative_first_sentence(c.tts.speculative_first_sentence)
        ):
            if ev.kind == "reply_done":
                # this turn's speculation ran in its hang-over, after the previous reply was done
                prepared, seen = app.first_sentences_prepared - seen, app.first_sentences_prepared
                if ev.turn == 1:
                    continue  # warm-up
                r = out[ev.turn % n]
                r["prepared"].append(prepared)
                if ev.voice_latency_s is None:
                    unspoken += 1
                    continue
                r["voice"].append(ev.voice_latency_s)
                r["token"].append(ev.latency_s)
    finally:
        app.stop()
        counts = {
            "prepared": app.first_sentences_prepared,
            "played_prepared": speaker.prepared_used,
            "unspoken": unspoken,
            "speculated": sum(1 for h in app.history() if h.get("speculated")),
            "turns": len(app.history()),
        }
        speaker.close()
    return out, counts


def ms(v: float) -> str:
    return f"{v * 1000:.0f} ms"


def bench_model(name: str, wav: Path, turns: int) -> None:
    base = with_overrides(
        Config(),
        {
            "generation.temperature": 0.0,
            "generation.max_new_tokens": 12,
            "tts.enabled": True,
            "model.speculative_prefill": True,
        },
    )
    hang = base.vad.hangover_ms / 1000
    t0 = time.perf_counter()
    backend = open_model(name, base)
    print(
        f"\nmodel: {backend.description} (loaded in {time.perf_counter() - t0:.1f} s); {turns - 1} timed turns; "
        f"hang-over {hang * 1000:.0f} ms; output: PortAudio → PulseAudio null sink\n"
    )
    configs = [with_overrides(base, {"tts.speculative_first_sentence": m}) for m in MODES]
    load0 = os.getloadavg()[0]
    results, counts = run_once(configs, backend, wav)
    print(f"load average (1 min) at the start / end: {load0:.1f} / {os.getloadavg()[0]:.1f} (2 cores)\n")
    print(
        "| speculative first sentence | turns | voice-to-voice median | p95 | minus hang-over median | p95 "
        "| first token median (for reference) | first sentence ready in the hang-over |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in zip(MODES, results):
        v = r["voice"]
        if not v:
            print(f"| {'on' if mode else 'off'} | 0 | – | | | | |")
            continue
        over = [x - hang for x in v]
        p95 = float(np.percentile(v, 95))
        print(
            f"| {'on' if mode else 'off'} | {len(v)} | {ms(statistics.median(v))} | {ms(p95)} "
            f"| {ms(statistics.median(over))} | {ms(p95 - hang)} | {ms(statistics.median(r['token']))} "
            f"| {int(sum(r['prepared']))} of {len(r['prepared'])} |",
            flush=True,
        )
    on = results[MODES.index(True)]["voice"]
    if on:
        med = statistics.median(on) - hang
        print(
            f"\ngoal with the speculative first sentence: median ≤ hang-over + 150 ms; measured hang-over + "
            f"{ms(med)}: {'met' if med <= 0.150 else 'missed'}"
        )
    print(
        f"first sentences prepared during the hang-over: {counts['prepared']}, played from there: "
        f"{counts['played_prepared']}; turns with a speculative prefill: {counts['speculated']} of "
        f"{counts['turns']}; replies not spoken: {counts['unspoken']}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=41, help="questions (the first is warm-up; the rest alternate)")
    ap.add_argument("--models", default="tiny,heavy", help="comma list: tiny, heavy, or a model name/folder")
    ap.add_argument("--pause", type=float, default=1.5, help="silence after each question, s")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # 1 avoids OpenMP threads fighting over a loaded machine's cores
    with tempfile.TemporaryDirectory() as tmp, PulseServer():
        import sounddevice as sd

        sd._terminate()  # PortAudio sees the private server's devices
        sd._initialize()
        wav = make_conversation(args.turns, Path(tmp), args.pause)
        for name in args.models.split(","):
            bench_model(name.strip(), wav, args.turns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
