"""Cutting streaming reply text into sentences, and making a sentence speakable.

The splitter is fed the reply as it streams (token by token) and hands back each sentence as soon as it is
certainly complete, so the first sentence can be synthesised while the rest is still being generated.

Invariant: the concatenation of everything :meth:`SentenceSplitter.feed` and :meth:`SentenceSplitter.flush`
return equals exactly the text fed (whitespace included). The speaker relies on it: the text it reports as
spoken is always a prefix of the reply, so the history can be truncated to it.

Rules, in order of the character that may end a sentence:
- a newline ends a sentence (paragraphs, list items);
- ``!`` ``?`` (and CJK ``。！？``) end one at once, with any closing quotes/brackets that follow;
- ``.`` after an ordinary word ends one at once, even at the end of the text received so far: that is the
  usual end of a sentence, and waiting for the next token would add a whole token's latency to the first
  sentence. After a number (``3.5``, ``in 2024.``), an abbreviation (``Dr.``, ``e.g.``, ``etc.``), an initial
  (``J. Smith``) or an ellipsis (``...``, ``…``) the splitter waits for what follows before deciding;
- a very long stretch without any of these is cut at a clause break (``,`` ``;`` ``:``) past
  :data:`SOFT_CHARS`, and at a space past :data:`HARD_CHARS`, so a run-on sentence does not delay speech.
"""

from __future__ import annotations

import re

SOFT_CHARS = 160  # past this many characters without a sentence end, cut at a clause break
HARD_CHARS = 300  # past this many, cut at any space
MIN_CLAUSE = 60  # a clause cut leaves at least this many characters in the piece

# Titles: never end a sentence ("Dr. Smith").
TITLES = frozenset("mr mrs ms dr prof st sr jr mt capt gen lt col sgt rev hon gov sen rep".split())
# Abbreviations that are followed by more of the same sentence ("e.g. Paris", "vs. them", "no. 5").
NEVER_FINAL = frozenset("e.g i.e vs cf viz approx ca".split())
# Abbreviations that go on only before a number ("No. 5", "fig. 3"); elsewhere ordinary words ("I said no.").
BEFORE_NUMBER = frozenset("no nos vol ch pp p fig figs sec eq".split())
# Abbreviations that may well end a sentence: decided by the next word's capital ("... and so on, etc. The").
MAYBE_FINAL = frozenset("etc inc ltd co corp dept est jan feb mar apr jun jul aug sep sept oct nov dec".split())

ENDERS = ".!?…\n。！？"
CLOSERS = "\"')]}”’»」』"


class SentenceSplitter:
    """Feed streaming text, get whole sentences back (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self._buf = ""  # text received and not yet returned
        self._scan = 0  # index in _buf where the search for a sentence end resumes

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the sentences it completed (possibly none), in order."""
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                return out
            out.append(self._buf[:cut])
            self._buf = self._buf[cut:]
            self._scan = 0

    def flush(self) -> list[str]:
        """The end of the reply: return what is left as a last sentence (nothing if nothing is left)."""
        rest, self._buf, self._scan = self._buf, "", 0
        return [rest] if rest else []

    @property
    def pending(self) -> str:
        """Text received that is not yet part of a returned sentence."""
        return self._buf

    # ---- internals -----------------------------------------------------------------------------------------

    def _find_cut(self) -> int | None:
        """Index just after the first complete sentence in the buffer, or None (wait for more text)."""
        buf = self._buf
        i = self._scan
        while i < len(buf):
            ch = buf[i]
            if ch in ENDERS:
                verdict, end = self._judge(i)
                if verdict == "cut" and buf[:end].strip():
                    return end
                if verdict == "wait":
                    self._scan = i  # judge this character again when more text has arrived
                    return self._long_cut()
                i = max(end, i + 1)
                continue
            i += 1
        self._scan = len(buf)
        return self._long_cut()

    def _judge(self, i: int) -> tuple[str, int]:
        """Is the sentence-ending candidate at ``i`` an end? ("cut", end) / ("no", resume) / ("wait", i)."""
        buf = self._buf
        ch = buf[i]
        if ch == "\n":
            return "cut", i + 1
        run_end = i
        while run_end < len(buf) and buf[run_end] in ".!?…。！？":
            run_end += 1
        run = buf[i:run_end]
        end = run_end
        while end < len(buf) and buf[end] in CLOSERS:
            end += 1
        if any(c in run for c in "!?。！？"):
            return "cut", end  # "?!", "!)", '?"': unambiguous
        nxt = buf[end] if end < len(buf) else ""
        if run == ".":
            word = _word_before(buf, i)
            if nxt and not nxt.isspace():
                return "no", end  # "3.5", "example.com", "e.g" inside a word
            return self._judge_period(word, buf, i, end, nxt)
        # An ellipsis: "Well... maybe" goes on; "I see... The next" ends; "...and" goes on.
        if nxt and not nxt.isspace():
            return "no", end
        following = _next_word_start(buf, end)
        if following is None:
            return "wait", i
        return ("cut", end) if following.isupper() or following.isdigit() else ("no", end)

    def _judge_period(self, word: str, buf: str, i: int, end: int, nxt: str) -> tuple[str, int]:
        """A single '.' followed by whitespace, a closer, or (yet) nothing."""
        lower = word.lower()
        if not word:
            return "cut", end  # after a closing quote or bracket: 'He said "no".'
        if word.isdigit():
            if not nxt:
                return "wait", i  # "3" "." may become "3.5"
            line_start = buf.rfind("\n", 0, i - len(word)) + 1
            if not buf[line_start : i - len(word)].strip():
                return "no", end  # "1. First item": a list number, not a sentence end
            return "cut", end
        if lower in TITLES or lower in NEVER_FINAL:
            return "no", end
        if lower in BEFORE_NUMBER:
            following = _next_word_start(buf, end)
            if following is None:
                return "wait", i
            return ("no", end) if following.isdigit() else ("cut", end)
        if lower in MAYBE_FINAL or "." in word or len(word) == 1:
            following = _next_word_start(buf, end)
            if following is None:
                return "wait", i
            if len(word) == 1 and word.isupper() and following.isupper():
                return "no", end  # "J. R. R. Tolkien": initials
            return ("cut", end) if following.isupper() or following.isdigit() else ("no", end)
        return "cut", end  # an ordinary word: end the sentence now, even at the end of the text so far

    def _long_cut(self) -> int | None:
        """A cut for a run-on sentence: at a clause break past SOFT_CHARS, at a space past HARD_CHARS."""
        buf = self._buf
        if len(buf) < SOFT_CHARS:
            return None
        best = None
        for m in re.finditer(r"[,;:–—] ", buf):
            if m.end() >= MIN_CLAUSE:
                best = m.end() - 1  # keep the space with the next piece
        if best is not None and best >= MIN_CLAUSE:
            return best
        if len(buf) >= HARD_CHARS:
            space = buf.rfind(" ", MIN_CLAUSE, HARD_CHARS)
            return space if space > 0 else HARD_CHARS
        return None


def _word_before(buf: str, i: int) -> str:
    """The token right before index ``i``: letters, digits and inner dots ("e.g", "U.S", "2024")."""
    j = i
    while j > 0 and (buf[j - 1].isalnum() or buf[j - 1] in ".'’-"):
        j -= 1
    return buf[j:i].strip(".'’-")


def _next_word_start(buf: str, k: int) -> str | None:
    """The first non-space character at or after ``k`` (skipping opening quotes), or None if none yet."""
    while k < len(buf) and (buf[k].isspace() or buf[k] in "\"'“‘(«"):
        k += 1
    return buf[k] if k < len(buf) else None


def first_sentence(text: str, final: bool = False) -> str | None:
    """The first sentence :class:`SentenceSplitter` cuts from ``text`` (a reply's start), None while it is not
    complete yet; ``final``: ``text`` is the whole reply (its end ends the sentence). Fed the same reply as it
    streams, a Speaker's splitter cuts exactly this sentence first."""
    splitter = SentenceSplitter()
    out = splitter.feed(text) + (splitter.flush() if final else [])
    return out[0] if out else None


# ---- making a sentence speakable ---------------------------------------------------------------------------

_MARKUP = re.compile(r"```[a-zA-Z0-9_+-]*|[*_#`~|>]+|\[(?P<label>[^\]]*)\]\([^)]*\)")
_URL = re.compile(r"https?://(?P<host>[^/\s]+)\S*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def speakable(sentence: str) -> str:
    """What the engine is given for ``sentence``: markdown marks dropped, links read as their label, a URL as
    its host name, control characters removed, whitespace collapsed. Empty when nothing is left to say."""
    text = _CONTROL.sub(" ", sentence)
    text = _MARKUP.sub(lambda m: m.group("label") or " ", text)
    text = _URL.sub(lambda m: m.group("host"), text)
    text = " ".join(text.split())
    return text if any(c.isalnum() for c in text) else ""


def spoken_prefix(sentence: str, fraction: float) -> str:
    """The part of ``sentence`` heard when ``fraction`` (0..1) of its voiced audio has been played.

    Speech time is assumed proportional to characters (close enough for one sentence). A word counts as
    spoken when the cut falls past its middle; the result is cut at that word's end, so it is a prefix of
    ``sentence`` with no dangling half word.
    """
    if fraction >= 1.0:
        return sentence
    stripped = sentence.strip()
    if fraction <= 0.0 or not stripped:
        return ""
    offset = len(sentence) - len(sentence.lstrip())
    cut = offset + fraction * len(stripped)
    end = 0
    for m in re.finditer(r"\S+", sentence):
        if (m.start() + m.end()) / 2 <= cut:
            end = m.end()
        else:
            break
    return sentence[:end]
