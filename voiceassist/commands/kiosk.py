"""``voiceassist kiosk``: the headless service (docs/kiosk.md). JSON lines on stdout, status file, systemd."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from voiceassist.commands.common import add_config_arg, add_input_args, add_model_args, load_input_config
from voiceassist.config import Config

EPILOG = """\
examples:
  voiceassist kiosk --config /etc/voiceassist/config.toml       the service (scripts/voiceassist.service)
  voiceassist kiosk --check-config --config my.toml              validate a configuration, then exit
  voiceassist kiosk --model tiny --from-file visitor.wav --fast  a test run (tiny model: replies are noise)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kiosk",
        help="run unattended as a service: JSON-line log, status file, systemd",
        description="The assistant as an unattended kiosk service: no screen; events and log "
        "records as JSON lines on stdout; idle and max-turn resets; a greeting; "
        "device-loss recovery; systemd notify and watchdog; SIGHUP reloads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arg(p)
    add_model_args(p)
    g = add_input_args(p)
    g.add_argument("--tts", action="store_true", help="speak the replies (and the greeting) aloud")
    g.add_argument("--status-file", metavar="PATH", help="where to keep the status (overrides kiosk.status_file)")
    g.add_argument(
        "--log-text",
        action="store_true",
        help="write reply text and tokens to the log (by default "
        "the log holds no conversation text unless kiosk.store_transcripts is on)",
    )
    g.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and the storage folder, print one line, exit (0 = fine)",
    )
    from voiceassist.commands.wake import add_wake_args

    add_wake_args(p, "answer only after this wake word: okay_nabu, hey_jarvis, alexa, hey_mycroft or a .json model")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Config:
    from voiceassist.commands.wake import WAKE_FLAGS

    config = load_input_config(args, {"status_file": "kiosk.status_file", **WAKE_FLAGS})
    # Nobody presses a push-to-talk key at a kiosk: it always listens hands-free.
    return dataclasses.replace(config, ui=dataclasses.replace(config.ui, mode="handsfree"))


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.check_config:
        from voiceassist.kiosk.status import status_path
        from voiceassist.kiosk.storage import Store
        from voiceassist.model.budget import check_system_prompt_without_model

        check_system_prompt_without_model(config)  # #16: a prompt surely too long for the context, without the model
        store = Store.from_config(config.kiosk)  # ConfigError when the folder is not writable
        where = f"storing in {store.folder}" if store else "nothing stored"
        from voiceassist.textsafe import safe_display

        line = f"configuration OK ({args.config or 'defaults'}; {where}; status file {status_path(config.kiosk)})"
        print(safe_display(line))
        return 0
    from voiceassist.kiosk.daemon import Kiosk

    return Kiosk(config, args, lambda: build_config(args), sys.stdout).run()
