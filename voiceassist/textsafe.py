"""Make untrusted text (model output, file names, server messages) safe to print on a terminal.

A model can emit ESC sequences that recolour, move the cursor, retitle the window or (OSC 52) write the
clipboard; a carriage return can overwrite what is on the line. ``strip_controls`` removes them all and keeps
printable text, newlines and tabs. Streaming callers may strip each piece on its own: a sequence split across
pieces loses its ESC / control bytes, so what remains is inert printable text.
"""

from __future__ import annotations

import re

# ESC-introduced sequences: CSI (ESC [ … final), OSC/DCS/SOS/PM/APC strings (ESC ] … BEL or ST), and two-byte
# ESC sequences. The 8-bit C1 forms (0x9b CSI, 0x9d OSC, …) are handled by the same patterns.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI … final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"  # OSC/DCS/SOS/PM/APC … BEL/ST
    r"|\x1b[ -/]*[0-~]",  # other ESC sequences (ESC c, ESC ( B, …)
    re.DOTALL,
)
# Left-over C0 controls except \t and \n, DEL, C1 controls; and the bidirectional overrides/isolates that make
# text display in an order different from its content ("Trojan Source").
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """``text`` without terminal control sequences or control characters; ``\\n`` and ``\\t`` are kept."""
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def safe_display(text: object) -> str:
    """Anything shown on a terminal that a user or a file system chose (file names, paths, error messages
    that quote them): :func:`strip_controls`, and bytes that are not UTF-8 (a file name like ``$'\\xff.wav'``
    arrives as a lone surrogate, which print() cannot encode) shown as ``\\udcff`` instead of a traceback."""
    return strip_controls(str(text)).encode("utf-8", "backslashreplace").decode("utf-8")
