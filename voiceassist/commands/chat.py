"""``voiceassist chat`` (also plain ``voiceassist``): the assistant, in the full-screen UI or ``--plain``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Any

from voiceassist.commands.common import add_config_arg, add_input_args, add_model_args, load_input_config
from voiceassist.config import Config

EPILOG = """\
examples:
  voiceassist                                   talk to the real model on the default microphone
  voiceassist --model tiny --from-file q.wav    the offline tiny model (random weights: replies are noise)
  voiceassist --from-file a.wav --from-file b.wav --fast --plain --events turns.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="talk to the assistant (the default command)",
        description="Talk to the assistant: your speech (no transcription) goes straight into a "
        "Qwen2-Audio conversation; replies stream into the terminal.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arg(p)
    add_model_args(p)
    g = add_input_args(p)
    g.add_argument("--mode", choices=("handsfree", "ptt"), help="hands-free (voice detection) or push-to-talk")
    g.add_argument(
        "--plain",
        action="store_true",
        help="one line per event instead of the full-screen UI (automatic when stdout is not a terminal)",
    )
    g.add_argument("--events", metavar="PATH", help="write every event as a JSON line to PATH (- = stdout)")
    g.add_argument("--tts", action="store_true", help="speak the replies aloud")
    from voiceassist.commands.wake import add_wake_args

    add_wake_args(p, "answer only after this wake word: okay_nabu, hey_jarvis, alexa, hey_mycroft or a .json model")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Config:
    from voiceassist.commands.wake import WAKE_FLAGS
    from voiceassist.wake import check_config

    config = load_input_config(args, {"mode": "ui.mode", **WAKE_FLAGS})
    check_config(config)  # a wake word with push-to-talk: one line, before anything loads
    return config


def run(args: argparse.Namespace) -> int:
    from voiceassist import plain
    from voiceassist.app import App
    from voiceassist.openers import open_backend, open_input, open_speaker

    config = build_config(args)
    source = open_input(config, args.from_file, fast=args.fast)
    writer = plain.EventsWriter(args.events) if args.events else None
    use_tui = not args.plain and args.events != "-" and sys.stdout.isatty() and sys.stdin.isatty()
    tui: Any = None
    if use_tui:
        try:
            tui = importlib.import_module("voiceassist.tui")
        except ImportError:
            tui = None
    if tui is None:
        print(f"voiceassist: loading {config.server.url or config.model.name} …", file=sys.stderr)
    backend = open_backend(config)
    speaker = open_speaker(config, lambda line: print(f"voiceassist: warning: {line}", file=sys.stderr))
    app = App(config, source, backend, speaker=speaker, stay=args.stay)
    if writer is not None:
        app.sinks.append(writer)
    # --plain: PortAudio's own lines ("Expression '...' failed", e.g. when a device goes away) are kept off the
    # terminal by an fd-2 filter from the stream's open to its close; ALSA's go to the debug log
    # (audio.chatter.quiet_alsa). The full-screen UI captures fd 2 itself.
    from voiceassist.audio.chatter import ChatterFilter

    with contextlib.nullcontext() if tui is not None else ChatterFilter():
        try:
            app.start()
            if tui is not None:
                rc = int(tui.run(app, config) or 0)
            else:
                human = sys.stderr if args.events == "-" else sys.stdout
                rc = plain.run(app, human, read_stdin=plain.stdin_has_input())
        finally:
            app.stop()
            if writer is not None:
                writer.close()
    if writer is not None:
        writer.check()  # --events could not be written: the run went on, the exit code says it (8)
    return rc
