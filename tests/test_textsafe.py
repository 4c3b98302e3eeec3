"""strip_controls: model output made safe for a terminal."""

from __future__ import annotations

import pytest

from voiceassist.textsafe import strip_controls


@pytest.mark.parametrize(
    "raw, safe",
    [
        ("plain é 🙂 日本語\n\tnext", "plain é 🙂 日本語\n\tnext"),  # text, newlines and tabs stay
        ("\x1b[31mred\x1b[0m \x1b[2J\x1b[H", "red "),  # CSI: colours, clear screen, cursor home
        ("\x1b]0;pwned title\x07after", "after"),  # OSC window title, BEL-terminated
        ("\x1b]52;c;ZXZpbA==\x1b\\ok", "ok"),  # OSC 52 clipboard write, ST-terminated
        ("\x1bPq#0;2;0;0;0\x1b\\x", "x"),  # DCS (sixel)
        ("\x9b31mX\x9d0;t\x9cY", "XY"),  # 8-bit C1 CSI and OSC
        ("a\rb\x08c\x7fd\x00e\x1ef", "abcdef"),  # carriage return, backspace, DEL, NUL, other C0
        ("x\x1bcY\x1b(B", "xY"),  # ESC c (reset terminal), charset selection
        ("bidi \u202eevil\u202c \u2066iso\u2069", "bidi evil iso"),  # bidi overrides ("Trojan Source")
        ("tail\x1b", "tail"),
        ("\x1b[", ""),  # unfinished sequences
    ],
)
def test_strip_controls(raw, safe):
    assert strip_controls(raw) == safe
    assert strip_controls(safe) == safe  # idempotent
