#!/usr/bin/env python3
"""The real 7B's speed and memory, measured with ``--model random-7b`` (the published shape, random weights, built in
memory: nothing to download). Ready to run as is on a machine with a CUDA GPU::

    python scripts/bench_gpu.py                      # cuda:0: bf16 and 4-bit, eager and compiled
    python scripts/bench_gpu.py --configs bf16-eager,bf16-compiled --write BENCHMARKS.md

For each configuration (``bf16-eager``, ``bf16-compiled``, ``4bit-eager``, ``4bit-compiled``, ``8bit-eager``, ...):
load time; time to first token for 2, 10 and 30 s of audio (each on a fresh conversation, after one warm-up turn
that also pays for compilation); decode tokens/s; peak GPU memory; and 16-turn flatness (5 s of audio and a
32-token reply per turn: the TTFT and tok/s of turn 16 against turn 1). The replies are noise and never end early
(the end tokens are disabled here, for timing). ``--write`` puts the table into BENCHMARKS.md between this
script's markers (one block per device kind), with the command and the machine.

On a CPU (``--device cpu``) it measures what a CPU can in reasonable time: resident memory after the load and per
1k tokens of context, TTFT, tok/s (``--configs bf16-eager --audio-seconds 2,10 --decode-tokens 8 --turns 0``).
It is a heavy job: 16.8 GB of weights in bf16. On a shared machine take the lock and check ``free -g`` first:
``flock /work/coord/heavy.lock python scripts/bench_gpu.py --device cpu ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voiceassist.backend import UserTurn  # noqa: E402
from voiceassist.config import Config, GenerationConfig, ModelConfig  # noqa: E402

SAMPLE_RATE = 16000


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def audio(seconds: float, seed: int) -> np.ndarray:
    """Speech-band noise at a speech-like level: the random model's timing does not depend on what is said."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
    return (0.1 * x / max(1e-6, float(np.abs(x).max()))).astype(np.float32)


def parse_config(name: str) -> tuple[str, str, str]:
    """``bf16-compiled`` → (dtype, quantization, compile)."""
    m = re.fullmatch(r"(bf16|fp16|fp32|4bit|8bit)-(eager|compiled)", name)
    if not m:
        raise SystemExit(f"bench_gpu: unknown configuration {name!r}; use e.g. bf16-eager, 4bit-compiled")
    prec, mode = m.groups()
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(prec, "auto")
    quant = prec if prec in ("4bit", "8bit") else "none"
    return dtype, quant, "on" if mode == "compiled" else "off"


def measure(args: argparse.Namespace, name: str) -> dict:
    import torch

    from voiceassist.model.loading import load_session

    dtype, quant, compile_ = parse_config(name)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    notes: list[str] = []
    config = Config(
        model=dataclasses.replace(
            ModelConfig(),
            name=args.model,
            device=args.device,
            dtype=dtype,
            quantization=quant,
            compile=compile_,
            context_limit=args.context_limit,
        ),
        generation=GenerationConfig(temperature=0.0, max_new_tokens=args.decode_tokens, seed=0),
    )
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    session = load_session(config, on_note=notes.append)
    load_s = time.perf_counter() - t0
    session._end_ids = set()  # benchmark only: a random model's reply must not end early
    out: dict = {"config": name, "load_s": load_s, "notes": notes, "description": session.description}
    out["rss_after_load"] = rss_bytes()
    out["rss_load_delta"] = out["rss_after_load"] - rss0
    print(
        f"  {name}: loaded in {load_s:.0f} s, RSS {out['rss_after_load'] / 1e9:.2f} GB ({session.description})",
        flush=True,
    )
    if cuda:
        out["gpu_after_load"] = torch.cuda.memory_allocated(args.device)

    def turn(audios=(), text="", max_new=None) -> object:
        if max_new is not None:
            session.generation = dataclasses.replace(session.generation, max_new_tokens=max_new)
        return session.reply(UserTurn(audios=tuple(audios), text=text), lambda _p: None, threading.Event())

    # Warm-up: pays for the first kernels (and the compilation of the decode step).
    t = time.perf_counter()
    turn(text="Hello.", max_new=min(4, args.decode_tokens))
    out["warmup_s"] = time.perf_counter() - t
    out["ttft"] = {}
    decode = []
    for k, secs in enumerate(args.audio_seconds):
        session.reset()
        r = turn(audios=[audio(secs, k)], max_new=args.decode_tokens)
        out["ttft"][secs] = r.ttft_s
        if r.n_tokens > 1:
            decode.append(r.tok_per_s)
        print(
            f"  {name}: {secs:g} s audio → ttft {r.ttft_s:.2f} s (thread CPU {session.last_cpu_ttft_s:.2f} s),"
            f" {r.tok_per_s:.2f} tok/s, RSS {rss_bytes() / 1e9:.2f} GB",
            flush=True,
        )
    out["tok_per_s"] = float(np.median(decode)) if decode else 0.0
    if args.context_probe:
        # Resident memory per 1k tokens of context: a text turn of about that many tokens on a fresh conversation.
        session.reset()
        gc.collect()
        before = rss_bytes()
        words = " ".join(["hello world again"] * (args.context_probe // 3))
        turn(text=words, max_new=2)
        tokens = session.context_tokens
        out["context_probe_tokens"] = tokens
        out["rss_per_1k_tokens"] = (rss_bytes() - before) / tokens * 1000
        if cuda:
            out["gpu_per_1k_tokens"] = None  # the caching allocator makes RSS-style deltas meaningless on a GPU
    if args.turns:
        session.reset()
        ttfts, rates = [], []
        for k in range(args.turns):
            r = turn(audios=[audio(5.0, 100 + k)], max_new=32)
            ttfts.append(r.ttft_s)
            rates.append(r.tok_per_s)
        out["flat_ttft"] = (ttfts[0], ttfts[-1])
        out["flat_tok_s"] = (rates[0], rates[-1])
        out["flat_context"] = session.context_tokens
    if cuda:
        out["gpu_peak"] = torch.cuda.max_memory_allocated(args.device)
    session = None  # noqa: F841 - free the 16.8 GB before the next configuration
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def machine(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        import torch

        dev = torch.device(args.device)
        major, minor = torch.cuda.get_device_capability(dev)
        return f"{torch.cuda.get_device_name(dev)} (compute capability {major}.{minor}), torch {torch.__version__}"
    import torch

    from voiceassist.model.memory import cpu_bf16_native

    cpu = "CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    bf16 = "native bf16" if cpu_bf16_native() else "no native bf16 (emulated)"
    return f"{cpu}, {torch.get_num_threads()} threads, {bf16}, torch {torch.__version__}, {platform.machine()}"


def table(args: argparse.Namespace, results: list[dict]) -> str:
    gb = 1e9
    cuda = args.device.startswith("cuda")
    secs = args.audio_seconds
    head = ["configuration", "load s"] + [f"TTFT {s:g} s audio" for s in secs] + ["decode tok/s"]
    head += ["peak GPU GB"] if cuda else ["RSS after load GB", "RSS per 1k context GB"]
    if args.turns:
        head += [f"{args.turns}-turn TTFT 1st→last s", f"{args.turns}-turn tok/s 1st→last"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["config"], f"{r['load_s']:.0f}"] + [f"{r['ttft'][s]:.2f}" for s in secs] + [f"{r['tok_per_s']:.2f}"]
        if cuda:
            cells.append(f"{r['gpu_peak'] / gb:.1f}")
        else:
            per = r.get("rss_per_1k_tokens")
            cells += [f"{r['rss_after_load'] / gb:.1f}", f"{per / gb:.2f}" if per is not None else "–"]
        if args.turns:
            cells += [
                f"{r['flat_ttft'][0]:.2f} → {r['flat_ttft'][1]:.2f}",
                f"{r['flat_tok_s'][0]:.1f} → {r['flat_tok_s'][1]:.1f}",
            ]
        rows.append("| " + " | ".join(cells) + " |")
    notes = sorted({n for r in results for n in r["notes"]})
    cmd = "python scripts/bench_gpu.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}). Machine: {machine(args)}.",
        "random-7b: the published 7B shape with random weights (replies are noise; end tokens disabled for timing).",
        "",
        *rows,
    ]
    if notes:
        lines += ["", "Notes from the load: " + "; ".join(notes)]
    return "\n".join(lines)


def write(path: Path, marker: str, body: str) -> None:
    begin, end = f"<!-- {marker}:BEGIN -->", f"<!-- {marker}:END -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--model", default="random-7b", help="random-7b (default); tiny to try the script quickly")
    p.add_argument("--configs", default="bf16-eager,bf16-compiled,4bit-eager,4bit-compiled")
    p.add_argument("--audio-seconds", default="2,10,30", help="comma-separated audio lengths for the TTFT, s")
    p.add_argument("--decode-tokens", type=int, default=128, help="reply length for the decode rate")
    p.add_argument("--turns", type=int, default=16, help="turns of the flatness run (0 = skip)")
    p.add_argument("--context-probe", type=int, default=0, help="tokens of a text turn for memory per 1k tokens")
    p.add_argument("--context-limit", type=int, default=8192)
    p.add_argument("--threads", type=int, default=0, help="torch threads (CPU); 0 = torch's default")
    p.add_argument("--write", metavar="BENCHMARKS.md", help="put the table into this file between the markers")
    args = p.parse_args()
    args.audio_seconds = [float(s) for s in args.audio_seconds.split(",") if s]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: torch sees no CUDA GPU; run it on a machine with one, or pass --device cpu", file=sys.stderr)
        return 2
    results = []
    for name in [c for c in args.configs.split(",") if c]:
        print(f"{name} …", flush=True)
        try:
            results.append(measure(args, name))
        except Exception as err:  # noqa: BLE001 - one configuration failing (e.g. no bitsandbytes) is reported
            print(f"  {name}: failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}", flush=True)
    if not results:
        return 1
    body = table(args, results)
    print(body)
    if args.write:
        marker = "bench_gpu:cuda" if args.device.startswith("cuda") else "bench_gpu:cpu"
        write(Path(args.write), marker, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
