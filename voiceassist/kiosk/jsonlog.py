"""The kiosk's stdout: one JSON object per line (journald keeps each line as one entry).

Two kinds of lines: the App's events, exactly as ``--events`` writes them (``Event.to_json()``), and log records
as ``{"type": "log", "t": <capture clock>, "level": "info", "logger": ..., "message": ..., ...}``, where extra
fields passed with ``log.info(..., extra={"fields": {...}})`` are merged in.

Privacy: with ``redact=True`` (the default unless ``kiosk.store_transcripts`` or ``--log-text``) the reply text
is not written: ``token`` events are skipped and ``text``/``kept_text`` fields become ``""`` with their length
in ``text_chars``. The system journal then holds no transcript of what a visitor talked about.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import IO, Any

from voiceassist.events import Event, Level, now

_TEXT_FIELDS = ("text", "kept_text")


class JsonLines:
    """Thread-safe writer of JSON lines; a closed or broken stdout is ignored (the kiosk keeps serving)."""

    def __init__(self, out: IO[str], redact: bool = True) -> None:
        self.out = out
        self.redact = redact
        self._lock = threading.RLock()  # re-entrant: a signal handler may log mid-write
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
                self.lines += 1
            except (OSError, ValueError):
                pass  # journald restarted or stdout closed: never take the kiosk down for a log line

    def event(self, ev: Event) -> None:
        """Write one App event (Level events are not written, as with ``--events``)."""
        if isinstance(ev, Level) or (self.redact and ev.kind == "token"):
            return
        record = ev.to_json()
        if self.redact:
            for key in _TEXT_FIELDS:
                if record.get(key):
                    record["text_chars" if key == "text" else "kept_text_chars"] = len(record[key])
                    record[key] = ""
        self.write(record)


class JsonLogHandler(logging.Handler):
    """Turns log records into ``type: log`` lines on a :class:`JsonLines`."""

    def __init__(self, lines: JsonLines, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out: dict[str, Any] = {
                "type": "log",
                "t": round(now(), 6),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": " ".join(record.getMessage().split()),
            }
            fields = getattr(record, "fields", None)
            if isinstance(fields, dict):
                out.update({k: v for k, v in fields.items() if k not in ("type", "t")})
            if record.exc_info and record.exc_info[1] is not None:
                err = record.exc_info[1]
                out["exception"] = f"{type(err).__name__}: {' '.join(str(err).split())}"
            self.lines.write(out)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)
