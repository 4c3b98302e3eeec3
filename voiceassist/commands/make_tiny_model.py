"""``voiceassist make-tiny-model DIR``: write the tiny offline Qwen2-Audio (random weights) to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from voiceassist.errors import ModelError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-tiny-model",
        help="write the tiny offline Qwen2-Audio (random weights, for tests and demos)",
        description="Write a tiny Qwen2-Audio of the real architecture with random weights to DIR, fully offline. "
        "`from_pretrained(DIR)` and `--model DIR` load it. Its replies are noise.",
    )
    p.add_argument("dir", metavar="DIR", help="folder to write (created; must be empty if it exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelError(f"{target} exists and is not an empty folder; choose a new folder for the tiny model")
    from voiceassist.model.tiny import build_tiny_model

    try:
        build_tiny_model(target)
    except OSError as err:
        raise ModelError(f"cannot write the tiny model to {target}: {err.strerror or err}") from None
    print(f"tiny Qwen2-Audio (random weights) written to {target}; use --model {target}")
    return 0
