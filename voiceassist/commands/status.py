"""``voiceassist status``: what the kiosk service is doing, from the status file it keeps.

Exit codes: 0 the kiosk runs; 3 no kiosk is running (the LSB "program is not running" code, as
``systemctl status`` uses); 2 a bad configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from voiceassist.commands.common import add_config_arg, load_config

NOT_RUNNING = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show the state of the running kiosk service")
    add_config_arg(p)
    p.add_argument(
        "--file",
        metavar="PATH",
        help="status file to read (default: kiosk.status_file, else the "
        "runtime folder, else /run/voiceassist/status.json)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the status as one JSON object (with uptime_s and running)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voiceassist.kiosk import status as st

    if args.file:
        candidates = [Path(args.file)]
    else:
        config = load_config(args)
        candidates = [st.status_path(config.kiosk)]
        if not config.kiosk.status_file and st.SYSTEM_STATUS not in candidates:
            candidates.append(st.SYSTEM_STATUS)  # the system service's file, read by an administrator
    found = [(p, d) for p in candidates if (d := st.read_status(p)) is not None]
    live = [(p, d) for p, d in found if d.get("state") != "stopped" and st.pid_alive(int(d.get("pid", -1)))]
    chosen = live or found
    path, data = chosen[0] if chosen else (candidates[0], None)
    running = bool(live)
    if args.json:
        out = dict(data or {}, running=running, status_file=str(path))
        if data and running:
            import time

            out["uptime_s"] = round(time.time() - float(data.get("started_unix", time.time())), 1)
        print(json.dumps(out, sort_keys=True))
        return 0 if running else NOT_RUNNING
    if not running:
        where = ", ".join(str(p) for p in candidates)
        if data is None:
            print(
                f"no kiosk is running (no status file at {where}); start it with `voiceassist kiosk` "
                "or `systemctl start voiceassist`"
            )
        else:
            how = "stopped" if data.get("state") == "stopped" else f"pid {data.get('pid')} is gone"
            err = data.get("last_error") or {}
            why = f"; last error: {err['message']}" if err.get("message") else ""
            print(
                f"no kiosk is running ({how}{why}; last status in {path}); start it with `voiceassist kiosk` "
                "or `systemctl start voiceassist`"
            )
        return NOT_RUNNING
    assert data is not None  # running: a live status file was read
    print("\n".join(st.describe(data, path)))
    return 0
