"""The conversation pane, as pure functions of the events: no prompt_toolkit application, no threads.

``Conversation`` turns the event stream into entries (user turns, replies, notes) and wraps them into screen
lines of ``(style, text)`` fragments for a given width (the status bar is in ``statusbar``). Everything
model-generated passes through :func:`safe` (control sequences stripped) again here, as a defence in depth:
the app strips too, but the screen is the last place a stray ESC could do harm.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

from prompt_toolkit.utils import get_cwidth

from voiceassist import events as ev
from voiceassist.textsafe import strip_controls

Fragments = list[tuple[str, str]]  # one screen line: (prompt_toolkit style, text) pieces

SPARK = "▁▂▃▄▅▆▇█"
SPARK_LO_DB, SPARK_HI_DB = -60.0, -6.0  # dBFS mapped to the lowest / highest sparkline block
LABEL_WIDTH = 5  # "you  " / "bot  " column; continuation lines are indented by this much


def safe(text: str) -> str:
    """Model or file text made harmless for the screen: control sequences gone, tabs as spaces."""
    return strip_controls(text.replace("\t", "    "))


def sparkline(levels: tuple[float, ...] | list[float], width: int = 12) -> str:
    """Levels in dBFS as at most ``width`` block characters (max-pooled, so short peaks stay visible)."""
    vals = [v for v in levels if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals or width <= 0:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [max(vals[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    out = []
    for v in vals:
        x = (min(max(v, SPARK_LO_DB), SPARK_HI_DB) - SPARK_LO_DB) / (SPARK_HI_DB - SPARK_LO_DB)
        out.append(SPARK[min(int(x * len(SPARK)), len(SPARK) - 1)])
    return "".join(out)


def audio_label(seconds: float) -> str:
    """``[audio 3.6 s]``: the contract spelling (one decimal)."""
    return f"[audio {seconds:.1f} s]"


# ---- wrapping ------------------------------------------------------------------------------------------------


def char_width(ch: str) -> int:
    w = get_cwidth(ch)
    return 0 if unicodedata.combining(ch) else max(w, 0)


def wrap(fragments: Fragments, width: int, indent: int = 0) -> list[Fragments]:
    """Wrap one logical line to screen lines of at most ``width`` cells, breaking after spaces where possible;
    continuation lines start with ``indent`` spaces. Wide (CJK) characters count two cells."""
    width = max(width, indent + 4, 8)
    chars: list[tuple[str, str, int]] = [(st, ch, char_width(ch)) for st, text in fragments for ch in text]
    lines: list[Fragments] = []
    start, first = 0, True
    while True:
        room = width - (0 if first else indent)
        used, i, last_space = 0, start, -1
        while i < len(chars) and used + chars[i][2] <= room:
            used += chars[i][2]
            if chars[i][1] == " ":
                last_space = i
            i += 1
        end = i
        if i < len(chars) and last_space > start and chars[i][1] != " ":
            end = last_space + 1  # break after the last space rather than inside a word
        line: Fragments = [] if first else [("", " " * indent)]
        for st, ch, _ in chars[start:end]:
            if line and line[-1][0] == st:
                line[-1] = (st, line[-1][1] + ch)
            else:
                line.append((st, ch))
        lines.append(line)
        if end >= len(chars):
            return lines
        start, first = end, False
        while start < len(chars) and chars[start][1] == " ":
            start += 1  # a line never starts with the space it was broken at
        if start >= len(chars):
            return lines


def spans(text: str, room: int, start: int = 0) -> list[tuple[int, int]]:
    """Greedy word wrap of one paragraph into lines of at most ``room`` cells, as ``(start, end)`` indices.
    Prefix-stable: appending text changes only the last span, so a streaming reply re-wraps one line."""
    out: list[tuple[int, int]] = []
    n = len(text)
    while True:
        used, i, last_space = 0, start, -1
        while i < n:
            w = char_width(text[i])
            if used + w > room:
                break
            used += w
            if text[i] == " ":
                last_space = i
            i += 1
        end = i
        if i < n and last_space > start and text[i] != " ":
            end = last_space + 1  # break after the last space rather than inside a word
        end = max(end, start + 1) if n else end  # a character wider than the room still moves on
        out.append((start, end))
        start = end
        while start < n and text[start] == " ":
            start += 1  # a line never starts with the space it was broken at
        if start >= n:
            return out


class _StreamWrap:
    """Wrapped lines of a growing text, for one width: finished paragraphs are kept, and the last one is
    re-wrapped from its last line only. Costs O(new text) per frame, not O(reply)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.text = ""  # the text wrapped so far
        self.done_lines: list[str] = []  # lines of the finished paragraphs (all but the last)
        self.done_chars = 0  # characters of ``text`` those paragraphs cover, newlines included
        self.last: list[tuple[int, int]] = []  # spans of the last paragraph, relative to its start

    def update(self, text: str) -> list[str]:
        if not text.startswith(self.text):
            self.__init__(self.room)  # type: ignore[misc]  # the text changed, not just grew: start over
        while True:
            nl = text.find("\n", self.done_chars)
            if nl < 0:
                break
            para = text[self.done_chars : nl]
            self.done_lines += [para[a:b] for a, b in (spans(para, self.room) or [(0, 0)])]
            self.done_chars, self.last = nl + 1, []
        para = text[self.done_chars :]
        resume = self.last[-1][0] if self.last else 0
        self.last = self.last[:-1] + spans(para, self.room, resume) if para else []
        self.text = text
        return self.done_lines + ([para[a:b] for a, b in self.last] if para else [""])


def _paragraphs(label: tuple[str, str], body_style: str, text: str, width: int, hang: int = 0) -> list[Fragments]:
    """``label`` on the first line, ``text`` (may contain newlines) wrapped and indented under it; continuation
    lines of a paragraph are indented by ``LABEL_WIDTH + hang`` (a hanging indent for tables like /help)."""
    out: list[Fragments] = []
    for n, para in enumerate(text.split("\n")):
        head = label if n == 0 else ("", " " * LABEL_WIDTH)
        out.extend(wrap([head, (body_style, para)], width, LABEL_WIDTH + hang))
    return out


# ---- conversation entries ------------------------------------------------------------------------------------


@dataclass
class UserEntry:
    turn: int
    durations: tuple[float, ...] = ()
    capped: bool = False
    levels: tuple[float, ...] = ()
    text: str = ""
    cap_s: float = 30.0  # the configured chunk cap (vad.max_chunk_s), s

    def render(self, width: int) -> list[Fragments]:
        frags: Fragments = [("class:you", "you".ljust(LABEL_WIDTH))]
        for i, d in enumerate(self.durations):
            if i:
                frags.append(("", " "))
            frags.append(("class:audio", audio_label(d)))
            # A chunk followed by another was cut by the cap; a lone capped chunk was too.
            if self.capped and (i < len(self.durations) - 1 or len(self.durations) == 1):
                frags.append(("class:cut", f" cut at {self.cap_s:.0f} s"))
        spark = sparkline(self.levels)
        if spark:
            frags += [("", " "), ("class:spark", spark)]
        lines = wrap(frags, width, LABEL_WIDTH) if self.durations else []
        if self.text:
            label = ("", " " * LABEL_WIDTH) if self.durations else ("class:you", "you".ljust(LABEL_WIDTH))
            lines += _paragraphs(label, "class:typed", safe(self.text), width)
        return lines or wrap(frags, width, LABEL_WIDTH)


@dataclass
class ReplyEntry:
    turn: int
    text: str = ""
    done: bool = False
    interrupted: str = ""  # reason, when cut short
    latency_s: float | None = None
    ttft_s: float | None = None
    tok_per_s: float | None = None
    n_tokens: int = 0
    voice_latency_s: float | None = None  # end of speech → first sound of the reply
    _wrap: _StreamWrap | None = field(default=None, repr=False, compare=False)

    def render(self, width: int) -> list[Fragments]:
        room = max(width - LABEL_WIDTH, 4)
        if self._wrap is None or self._wrap.room != room:
            self._wrap = _StreamWrap(room)
        texts = self._wrap.update(safe(self.text))
        if not self.done:  # the reply is still streaming: a cursor after its end
            if get_cwidth(texts[-1]) < room:
                texts = texts[:-1] + [texts[-1] + "▌"]
            else:
                texts = texts + ["▌"]
        lines: list[Fragments] = [
            [("class:bot", "bot".ljust(LABEL_WIDTH)) if n == 0 else ("", " " * LABEL_WIDTH), ("class:reply", t)]
            for n, t in enumerate(texts)
        ]
        figures = []
        if self.interrupted:
            figures.append(f"interrupted ({self.interrupted.replace('_', '-')})")
        if self.done:
            if self.latency_s is not None:
                figures.append(f"{self.latency_s * 1000:.0f} ms after speech")
            elif self.ttft_s is not None:
                figures.append(f"first token {self.ttft_s * 1000:.0f} ms")
            if self.voice_latency_s is not None:
                figures.append(f"spoken {self.voice_latency_s * 1000:.0f} ms after speech")
            figures.append(f"{self.n_tokens} tokens")
            if self.tok_per_s:
                figures.append(f"{self.tok_per_s:.1f} tok/s")
        if figures:
            lines += wrap([("", " " * LABEL_WIDTH), ("class:figures", " · ".join(figures))], width, LABEL_WIDTH)
        return lines


@dataclass
class NoteEntry:
    text: str
    style: str = "note"  # "note", "error" or "help"
    hang: int = 0  # extra hanging indent of wrapped lines, cells

    def render(self, width: int) -> list[Fragments]:
        label = {"error": "  ! ", "help": "    "}.get(self.style, "  · ")
        return _paragraphs(
            ("class:" + self.style, label.ljust(LABEL_WIDTH)),
            "class:" + self.style,
            safe(self.text),
            width,
            self.hang if width >= 60 else 0,
        )


@dataclass
class PendingEntry:
    """A turn the user sent that the model has not taken yet (it waits behind the reply in progress)."""

    text: str
    file: str = ""  # /file: the file's name

    def render(self, width: int) -> list[Fragments]:
        what = f"[file {self.file}] {self.text}".strip() if self.file else self.text
        return _paragraphs(("class:you", "you".ljust(LABEL_WIDTH)), "class:pending", safe(what) + "  (waiting)", width)


Entry = UserEntry | ReplyEntry | NoteEntry | PendingEntry


@dataclass
class _Cached:
    entry: Entry
    version: int = 0
    width: int = -1
    seen: int = -1
    lines: list[Fragments] = field(default_factory=list)
    counted: tuple[int, int] = (-1, 0)  # (width, lines) as Conversation.growth last counted them

    def lines_for(self, width: int) -> list[Fragments]:
        if self.width != width or self.seen != self.version:
            self.lines = self.entry.render(width) + [[]]  # a blank line between entries
            self.width, self.seen = width, self.version
        return self.lines


class Conversation:
    """The conversation pane's content, built from events; wrapped lines are cached per entry and width so a
    long history costs nothing per frame (only the streaming reply is re-wrapped)."""

    def __init__(self, cap_s: float = 30.0) -> None:
        self.cap_s = cap_s
        self._items: list[_Cached] = []
        self._replies: dict[int, _Cached] = {}
        self._dirty_from = 0  # entries from this index on changed since the last growth() call
        self._removed: list[tuple[int, int]] = []  # (width, lines) growth() counted for entries removed since

    def __len__(self) -> int:
        return len(self._items)

    @property
    def entries(self) -> list[Entry]:
        return [c.entry for c in self._items]

    def _add(self, entry: Entry) -> _Cached:
        item = _Cached(entry)
        self._items.append(item)
        return item

    def _touched(self, item: _Cached) -> None:
        item.version += 1
        self._dirty_from = min(self._dirty_from, self._index(item))

    def _index(self, item: _Cached) -> int:
        for n in range(len(self._items) - 1, -1, -1):  # changes happen near the end: search from there
            if self._items[n] is item:
                return n
        return len(self._items)

    def note(self, text: str, style: str = "note", hang: int = 0) -> None:
        self._add(NoteEntry(text, style, hang))

    def pending(self, text: str, file: str = "") -> None:
        """Show a sent turn at once; the app's UtteranceEvent for it replaces it when the model takes it."""
        self._add(PendingEntry(text, file))

    def drop_pending(self) -> None:
        """The waiting turns were discarded (/reset)."""
        self._remove([c for c in self._items if isinstance(c.entry, PendingEntry)])

    def _remove(self, gone: list[_Cached]) -> None:
        if gone:
            self._dirty_from = min(self._dirty_from, self._index(gone[0]))
            self._removed += [g.counted for g in gone]
            self._items = [c for c in self._items if all(c is not g for g in gone)]

    def _take_pending(self, event: ev.UtteranceEvent) -> None:
        for item in self._items:
            p = item.entry
            if isinstance(p, PendingEntry) and p.text == event.text and bool(p.file) == bool(event.durations):
                self._remove([item])
                return

    def _reply(self, turn: int) -> _Cached:
        item = self._replies.get(turn)
        if item is None:
            item = self._replies[turn] = self._add(ReplyEntry(turn))
        return item

    def apply(self, event: ev.Event) -> bool:
        """Take one event; True if the pane changed."""
        if isinstance(event, ev.UtteranceEvent):
            self._take_pending(event)
            self._add(
                UserEntry(event.turn, tuple(event.durations), event.capped, tuple(event.levels), event.text, self.cap_s)
            )
        elif isinstance(event, ev.ReplyStart):
            old = self._replies.get(event.turn)
            if old is not None and old.entry.done:  # type: ignore[union-attr]
                # The turn is being sent again after a failure (remote backend): the failed attempt's partial
                # text stays on screen, marked as cut, and the new reply starts below it instead of after it.
                del self._replies[event.turn]
            item = self._reply(event.turn)
            item.entry.latency_s, item.entry.ttft_s = event.latency_s, event.ttft_s  # type: ignore[union-attr]
        elif isinstance(event, ev.Token):
            item = self._reply(event.turn)
            item.entry.text += event.text
        elif isinstance(event, ev.ReplyDone):
            item = self._reply(event.turn)
            r: ReplyEntry = item.entry  # type: ignore[assignment]
            if not r.text:
                r.text = event.text
            r.done, r.n_tokens, r.tok_per_s = True, event.n_tokens, event.tok_per_s
            r.ttft_s = event.ttft_s
            if event.latency_s is not None:
                r.latency_s = event.latency_s
            r.voice_latency_s = event.voice_latency_s
            if event.interrupted and not r.interrupted:
                r.interrupted = "cancel"
        elif isinstance(event, ev.Interrupted):
            item = self._reply(event.turn)
            item.entry.interrupted = event.reason  # type: ignore[union-attr]
        elif isinstance(event, ev.ErrorEvent):
            # A waiting turn that will never come: its file failed, or the turn queue was full.
            waiting = [c for c in self._items if isinstance(c.entry, PendingEntry)]
            gone = []
            if event.dropped:
                gone = [c for c in waiting if event.file and c.entry.file == event.file]  # type: ignore[union-attr]
                gone = gone[:1] or waiting[-1:]
            self._remove(gone)
            self.note(event.message, "error")
            return True
        else:
            return False
        item = self._items[-1] if isinstance(event, ev.UtteranceEvent) else item
        self._touched(item)
        return True

    def growth(self, width: int) -> int:
        """Screen lines added at ``width`` since the last call (new entries, a reply that grew). Only the entries
        changed since then are looked at, so a long history costs nothing; used to keep a scrolled-back view
        still while text arrives below it."""
        delta = -sum(n for w, n in self._removed if w == width)
        for item in self._items[self._dirty_from :]:
            before = item.counted[1] if item.counted[0] == width else 0
            item.counted = (width, len(item.lines_for(width)))
            delta += item.counted[1] - before
        self._dirty_from, self._removed = len(self._items), []
        return delta

    def bottom_lines(self, width: int, count: int) -> tuple[list[Fragments], bool]:
        """The last ``count`` screen lines (fewer if the history is shorter) and whether more lie above."""
        chunks: list[list[Fragments]] = []  # newest first; joined once (prepending would be quadratic)
        have = 0
        for item in reversed(self._items):
            chunks.append(item.lines_for(width))
            have += len(chunks[-1])
            if have > count:
                break
        out = [line for chunk in reversed(chunks) for line in chunk]
        return out[max(0, len(out) - count) :], have > count

    def window(self, width: int, height: int, offset: int) -> tuple[list[Fragments], int]:
        """Lines for a pane of ``height`` rows, ``offset`` rows up from the bottom (0 = following the end).
        Returns the lines and the offset actually used (clamped to the start of the history)."""
        lines, _ = self.bottom_lines(width, height + max(offset, 0) + 1)
        if lines and not lines[-1]:
            lines = lines[:-1]  # no trailing blank line under the last entry
        elif len(lines) > height + max(offset, 0):
            lines = lines[1:]
        offset = max(0, min(offset, len(lines) - height))
        return lines[max(0, len(lines) - height - offset) : len(lines) - offset], offset


def plain_text(lines: list[Fragments]) -> str:
    """Screen lines as plain text (for tests and logs)."""
    return "\n".join("".join(t for _, t in line) for line in lines)
