"""Model text as it streams, made safe to display piece by piece.

:func:`voiceassist.textsafe.strip_controls` works on whole strings; a reply arrives in pieces, and an escape
sequence may be split across two of them (``"\\x1b["`` then ``"2J"``). Stripping each piece alone would then let
``2J`` through as text, or worse, print a lone ESC that the next piece completes on the terminal. So the raw
text is kept whole and only the part that cannot still grow into a sequence is released.
"""

from __future__ import annotations

import re

from voiceassist.textsafe import strip_controls

# An escape sequence that may still be incomplete at the end of the text: ESC or an 8-bit introducer followed
# by what could be its parameters, with no final byte yet. Held back until the next piece (or the end) decides.
_OPEN_TAIL = re.compile(r"(?:\x1b[\[\]PX^_]?|\x9b|[\x90\x98\x9d\x9e\x9f])[^\x07\x9c@-~]{0,256}\Z")
_OSC_OPEN = re.compile(r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]{0,4096}\Z")


class StreamStripper:
    """Feed raw pieces, get back display-safe deltas whose concatenation equals ``strip_controls(raw)``."""

    def __init__(self) -> None:
        self._raw: list[str] = []
        self._shown = ""  # safe text released so far

    def feed(self, piece: str) -> str:
        """Add a raw piece; return the newly displayable safe text (possibly empty)."""
        self._raw.append(piece)
        raw = "".join(self._raw)
        hold = _OSC_OPEN.search(raw) or _OPEN_TAIL.search(raw)
        stable = raw[: hold.start()] if hold else raw
        return self._release(strip_controls(stable))

    def finish(self) -> str:
        """End of the reply: whatever was held back is decided now (an unfinished sequence is dropped)."""
        return self._release(strip_controls("".join(self._raw)))

    @property
    def text(self) -> str:
        """All safe text released so far."""
        return self._shown

    def _release(self, safe: str) -> str:
        # Stripping a longer text never changes the safe text of a stable prefix, so `safe` extends `_shown`;
        # the guard keeps the output consistent even if a sequence grammar corner case broke that.
        if not safe.startswith(self._shown):
            return ""
        delta = safe[len(self._shown) :]
        self._shown = safe
        return delta
