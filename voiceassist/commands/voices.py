"""``voiceassist voices``: list the speech voices (id, name, languages); any id can go into ``tts.voice``."""

from __future__ import annotations

import argparse

from voiceassist.commands.common import add_config_arg, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("voices", help="list the voices replies can be spoken with")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)  # a bad configuration is reported even here
    from voiceassist.speech.language import voice_for
    from voiceassist.speech.speaker import _codes
    from voiceassist.speech.synth_client import SynthWorker

    worker = SynthWorker()
    try:
        voices = worker.voices()
        engine = worker.engine
    finally:
        worker.close()
    if not voices:
        print(f"the speech engine ({engine}) offers no voices")
        return 0
    width_id = max(len("id"), *(len(v.id) for v in voices))
    width_name = max(len("name"), *(len(v.name) for v in voices))
    print(f"{'id':<{width_id}}  {'name':<{width_name}}  languages")
    for v in voices:
        print(f"{v.id:<{width_id}}  {v.name:<{width_name}}  {', '.join(v.languages)}")
    print(f'{len(voices)} voices ({engine}); choose one with tts.voice = "ID" or a part of its name')
    # What tts.voice = "auto" reads each expected language with (tts.languages, tts.auto_voices).
    picks = []
    for code in _codes(config.tts.languages):
        found = voice_for(code, voices, _codes(config.tts.auto_voices))
        picks.append(f"{code} → {found[0] if found else 'the default voice (none installed)'}")
    print(f'tts.voice = "auto" reads: {", ".join(picks)}')
    return 0
