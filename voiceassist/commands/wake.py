"""``voiceassist wake FILE [--wake-word NAME] [--json]``: where in a file the wake word is heard.

The same detector as the live capture path, fed the file through the microphone's resampler and block size, as
fast as it can. ``--json`` prints exactly one object:
``{"file": PATH, "duration_s": S, "detections": [{"time": S, "word": NAME, "probability": P}, ...]}``
(times in s from the file's start). With no ``--wake-word`` and no ``[wake] word`` configured, every built-in
word is listened for.
"""

from __future__ import annotations

import argparse
import json

from voiceassist.commands.common import add_config_arg, load_config

# argparse dest → "section.key"; shared with `segment --wake-word` and the live commands.
WAKE_FLAGS = {
    "wake_word": "wake.word",
    "wake_engine": "wake.engine",
    "wake_threshold": "wake.threshold",
    "wake_refractory_ms": "wake.refractory_ms",
}


def add_wake_args(parser: argparse.ArgumentParser, word_help: str) -> None:
    g = parser.add_argument_group("wake word (override the [wake] configuration)")
    g.add_argument("--wake-word", metavar="NAME", help=word_help)
    g.add_argument("--wake-engine", choices=("micro", "open"), help="pymicro-wakeword (default) or pyopen-wakeword")
    g.add_argument("--wake-threshold", type=float, metavar="P", help="score cutoff, 0-1; 0 = the model's own")
    g.add_argument("--wake-refractory-ms", type=int, metavar="MS", help="no second detection within this")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "wake",
        help="find the wake word in an audio file, as the live assistant would",
        description="Run an audio file through the live wake-word detector, as fast as possible, and print "
        "each detection (time, word, probability).",
    )
    p.add_argument("file", metavar="FILE", help="WAV, FLAC, OGG or MP3 file, any rate and channel count")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_wake_args(
        p,
        "okay_nabu, hey_jarvis, alexa, hey_mycroft or a microWakeWord .json model "
        "(default: [wake] word, else every built-in word)",
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voiceassist.audio.files import open_audio
    from voiceassist.wake.offline import detect_file, detectors_for

    config = load_config(args, WAKE_FLAGS)
    detectors_for(config.wake)  # an unknown word or a bad model: one line, before the file is read
    open_audio(args.file).close()
    duration, detections = detect_file(args.file, config.wake, config.audio.block_ms)
    rows = [{"time": d.t, "word": d.word, "probability": d.probability} for d in detections]
    if args.json:
        print(json.dumps({"file": args.file, "duration_s": round(duration, 3), "detections": rows}))
        return 0
    from voiceassist.textsafe import safe_display

    name = safe_display(args.file)  # a file name is untrusted text on a terminal
    if not rows:
        print(f"{name}: {duration:.2f} s, no wake word heard")
        return 0
    print(f"{name}: {duration:.2f} s, {len(rows)} detection(s)")
    print(f"{'time':>8}  {'probability':>11}  word")
    for r in rows:
        print(f"{r['time']:>8.2f}  {r['probability']:>11.3f}  {r['word']}")
    return 0
