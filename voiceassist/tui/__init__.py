"""The full-screen terminal front end (prompt_toolkit): ``run(app, config) -> int``.

``view`` draws the conversation pane and ``statusbar`` the status bar (pure functions of the events);
``commands`` holds the input line's slash commands and their completion; ``screen`` the prompt_toolkit
application, its keys, push-to-talk and the event pump; ``stderr`` keeps library messages off the screen.
The transcript files of ``/save`` are written by ``voiceassist.transcript`` (shared with the kiosk).
"""

from __future__ import annotations

from typing import Any

from voiceassist.config import Config


def run(app: Any, config: Config) -> int:
    """Run the UI over a started ``App`` until the user quits; stops the app; returns the exit status."""
    from voiceassist.tui.screen import run as _run

    return _run(app, config)
