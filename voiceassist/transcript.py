"""Saving a conversation: a Markdown transcript, the same as JSON, and the user's audio clips as WAV files.

Used by the TUI's ``/save`` and by the kiosk's stored transcripts. The input is ``App.history()``: one dict per
turn with the typed ``text``, the user's ``audios`` (16 kHz mono float32 arrays), the ``reply`` text and
whether it was ``interrupted``; other scalar keys (figures, times) are copied into the JSON as they are.

Where the files go, from ``dest``:
- a name ending in ``.md`` or ``.json``: ``<stem>.md``, ``<stem>.json`` and clips in ``<stem>-audio/``;
- anything else is a folder: ``transcript.md``, ``transcript.json`` and clips in ``audio/``;
- nothing: a new folder ``voiceassist-YYYYmmdd-HHMMSS`` in the current directory.
Existing files are replaced only when they are a voiceassist transcript (nothing else of the user's is lost).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voiceassist.errors import VoiceAssistError
from voiceassist.events import SAMPLE_RATE
from voiceassist.textsafe import strip_controls

FORMAT = "voiceassist-transcript"  # marks our JSON files, so re-saving may replace them


@dataclass(frozen=True)
class SavedTranscript:
    """Where one save went."""

    markdown: Path
    json: Path
    clips: tuple[Path, ...]


def _audios(turn: dict[str, Any]) -> list[np.ndarray]:
    for key in ("audios", "audio", "clips", "chunks"):
        value = turn.get(key)
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            return [value]
        return [np.asarray(a, dtype=np.float32) for a in value]
    return []


def _reply(turn: dict[str, Any]) -> str:
    return strip_controls(str(turn.get("reply", turn.get("reply_text", "")) or ""))


def _targets(dest: str | os.PathLike[str] | None, now: dt.datetime) -> tuple[Path, Path, Path]:
    """(markdown path, json path, clip folder) for ``dest``."""
    if dest is None or str(dest) == "":
        folder = Path.cwd() / f"voiceassist-{now:%Y%m%d-%H%M%S}"
        return folder / "transcript.md", folder / "transcript.json", folder / "audio"
    p = Path(os.path.expanduser(str(dest)))
    if p.suffix.lower() in (".md", ".json"):
        return p.with_suffix(".md"), p.with_suffix(".json"), p.with_name(p.stem + "-audio")
    return p / "transcript.md", p / "transcript.json", p / "audio"


def _check_replaceable(md: Path, js: Path) -> None:
    if not js.exists() and not md.exists():
        return
    try:
        ours = json.loads(js.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise VoiceAssistError(
            f"{md if md.exists() else js} already exists and is not a voiceassist transcript; choose another path"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, bool)) or value is None:
        return strip_controls(value) if isinstance(value, str) else value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (np.integer, np.floating)):
        return _jsonable(value.item())
    if isinstance(value, (list, tuple)) and all(not isinstance(v, np.ndarray) for v in value):
        return [_jsonable(v) for v in value]
    return None  # arrays and objects are not copied (audio goes to WAV files)


def to_json(history: Iterable[dict[str, Any]], clip_names: list[list[str]], meta: dict[str, Any]) -> dict:
    """The JSON document: ``meta`` plus one record per turn; clips are named relative to the JSON file."""
    turns = []
    for n, (turn, names) in enumerate(zip(history, clip_names), start=1):
        rec: dict[str, Any] = {"turn": turn.get("turn", n)}
        for key, value in turn.items():
            if key in ("audios", "audio", "clips", "chunks"):
                continue
            v = _jsonable(value)
            if v is not None or value is None:
                rec[key] = v
        rec["text"] = strip_controls(str(turn.get("text", "") or ""))
        rec["reply"] = _reply(turn)
        rec["audio"] = [
            {"file": name, "seconds": round(len(a) / SAMPLE_RATE, 3)} for name, a in zip(names, _audios(turn))
        ]
        turns.append(rec)
    return {"format": FORMAT, "version": 1, **{k: _jsonable(v) for k, v in meta.items()}, "turns": turns}


def to_markdown(doc: dict[str, Any]) -> str:
    """Markdown rendering of the JSON document from :func:`to_json`."""
    lines = [f"# {doc.get('title') or 'voiceassist conversation'}", ""]
    about = [f"saved {doc['saved_at']}"] if doc.get("saved_at") else []
    if doc.get("model"):
        about.append(f"model: {doc['model']}")
    if about:
        lines += ["_" + " · ".join(about) + "_", ""]
    for rec in doc["turns"]:
        clips = " ".join(f"[audio {a['seconds']:.1f} s]({a['file']})" for a in rec["audio"])
        lines.append(f"**You** (turn {rec['turn']}): {clips}".rstrip())
        if rec["text"]:
            lines += [""] + [f"> {line}" for line in rec["text"].splitlines()]
        lines.append("")
        mark = " _(interrupted)_" if rec.get("interrupted") else ""
        lines += [f"**Assistant:**{mark}", "", rec["reply"] or "_(no reply)_", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # a crash never leaves half a transcript under the real name


def save_transcript(
    history: list[dict[str, Any]],
    dest: str | os.PathLike[str] | None = None,
    *,
    meta: dict[str, Any] | None = None,
    audio: bool = True,
) -> SavedTranscript:
    """Write the transcript (Markdown + JSON) and, if ``audio``, each user clip as a 16-bit WAV file.
    Raises ``VoiceAssistError`` (one line) when the place cannot be written."""
    import soundfile as sf

    now = dt.datetime.now(dt.UTC).astimezone()
    md, js, clip_dir = _targets(dest, now)
    try:
        md.parent.mkdir(parents=True, exist_ok=True)
        _check_replaceable(md, js)
        names: list[list[str]] = []
        written: list[Path] = []
        for n, turn in enumerate(history, start=1):
            clip_names = []
            for i, clip in enumerate(_audios(turn) if audio else [], start=1):
                path = clip_dir / f"turn-{int(turn.get('turn', n)):03d}-{i}.wav"
                clip_dir.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), np.clip(np.asarray(clip, dtype=np.float32), -1, 1), SAMPLE_RATE, subtype="PCM_16")
                written.append(path)
                clip_names.append(os.path.relpath(path, js.parent))
            names.append(clip_names)
        doc = to_json(
            history,
            names,
            {"title": "voiceassist conversation", "saved_at": now.isoformat(timespec="seconds"), **(meta or {})},
        )
        _write_text(js, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        _write_text(md, to_markdown(doc))
    except OSError as err:
        raise VoiceAssistError(
            f"cannot save the transcript to {md.parent}: {err.strerror or err}; choose a writable path"
        ) from None
    return SavedTranscript(md, js, tuple(written))
