"""``voiceassist devices``: list input and output devices."""

from __future__ import annotations

import argparse

from voiceassist.commands.common import add_config_arg, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list audio input and output devices")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_config(args)  # a bad configuration is reported even here
    from voiceassist.audio.devices import describe_devices

    print(describe_devices())
    return 0
