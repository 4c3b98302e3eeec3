"""``voiceassist ask FILE... [--text TEXT] [--model M] [--greedy] [--json]``: one conversation over audio files.

Each FILE is one user turn, in order (any format and rate; its audio used as it is, untrimmed; over 30 s split
into chunks at the quietest point of each chunk's last seconds, as the segmenter does). ``--text`` adds the same
typed question to every turn. Replies stream to stdout (control sequences stripped). With ``--json``, one JSON
object per turn and line::

    {"turn": K, "audio_s": S, "prompt_ids": [...], "reply_ids": [...], "reply": TEXT, "context_tokens": N,
     "ttft_s": S, "tok_per_s": R}

``prompt_ids`` are the ids the turn added before its reply (the previous reply's closing included) and
``reply_ids`` the reply without its closing token, so the conversation is exactly prompt_ids₁ + reply_ids₁ +
prompt_ids₂ + … (unless old turns had to be dropped to fit the context limit). Every file is read before the
first turn: a bad file is one line on stderr and a non-zero exit, with no model loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from voiceassist.commands.common import add_config_arg, add_model_args, load_config
from voiceassist.errors import ConfigError
from voiceassist.events import SAMPLE_RATE

EPILOG = """\
examples:
  voiceassist ask question.wav                          answer a spoken question
  voiceassist ask glass.wav --text "What's that sound?"  audio analysis
  voiceassist ask a.wav b.flac --model tiny --greedy --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ask",
        help="ask about audio files: each file is one turn of one conversation",
        description="Each FILE is one user turn of one conversation, in order; the replies stream to stdout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files (WAV, FLAC, OGG, MP3, any rate)")
    p.add_argument(
        "--text", metavar="TEXT", default="", help="typed question added to each turn (alone: one text-only turn)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per turn and line instead of the text")
    add_config_arg(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if not args.files and not args.text.strip():
        raise ConfigError("ask needs at least one audio FILE or --text TEXT")

    from voiceassist.audio.files import read_audio_16k
    from voiceassist.backend import UserTurn
    from voiceassist.model.chunking import split_long_audio
    from voiceassist.openers import open_backend

    turns: list[tuple[str, UserTurn]] = []
    for path in args.files:  # all files first: a bad one fails before the model loads
        chunks = split_long_audio(read_audio_16k(path), config.vad.max_chunk_s, config.vad.cut_search_s)
        turns.append((path, UserTurn(audios=tuple(chunks), text=args.text)))
    if not turns:
        turns.append(("", UserTurn(text=args.text)))

    if config.model.name in ("tiny", "random-7b") and not config.server.url:
        print(
            f"voiceassist: note: the {config.model.name} model has random weights; its replies are noise",
            file=sys.stderr,
        )
    backend = open_backend(config)
    out = sys.stdout
    for k, (name, turn) in enumerate(turns, 1):
        audio_s = sum(len(a) for a in turn.audios) / SAMPLE_RATE
        if args.json:
            result = backend.reply(turn, lambda _piece: None, threading.Event())
            record = {
                "turn": k,
                "audio_s": round(audio_s, 3),
                "prompt_ids": list(result.prompt_ids),
                "reply_ids": list(result.reply_ids),
                "reply": result.text,
                "context_tokens": result.context_tokens,
                "ttft_s": round(result.ttft_s, 4),
                "tok_per_s": round(result.tok_per_s, 2),
            }
            # ensure_ascii: model text is untrusted; escaped, no control character reaches the terminal.
            out.write(json.dumps(record) + "\n")
            out.flush()
            continue
        from voiceassist.replytext import StreamStripper
        from voiceassist.textsafe import strip_controls

        if len(turns) > 1:
            out.write(f"[{k}] {strip_controls(name)}\n")
        stripper = StreamStripper()

        def show(piece: str, stripper: StreamStripper = stripper) -> None:
            safe = stripper.feed(piece)
            if safe:
                out.write(safe)
                out.flush()

        backend.reply(turn, show, threading.Event())
        out.write(stripper.finish() + "\n")
        out.flush()
    return 0
