"""Writing a benchmark's own section of BENCHMARKS.md: ``replace_section`` replaces the section under ``head``
(a ``## `` heading, matched as a whole line, up to the next ``## ``) with ``text``, or appends it the first time;
the other sections stay exactly as they are, one blank line between sections, one newline at the end.

Used by every scripts/bench_*.py that writes a section (``scripts/`` is on ``sys.path`` when a script runs).
Kept apart from _benchlib.py, which imports the App (and with it torch) that most of these scripts do not need.
"""

from __future__ import annotations

from pathlib import Path


def replace_section(bench: Path, text: str, head: str) -> None:
    """Replace the ``head`` section of ``bench`` with ``text`` (append it if there is none)."""
    old = bench.read_text(encoding="utf-8") if bench.exists() else "# Benchmarks\n"
    body = text.strip("\n") + "\n"
    # As a whole line: "## Model session" must not match inside "### Model session" or a longer heading.
    lines = old.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.rstrip("\n") == head), None)
    if at is None:
        new = old.rstrip("\n") + "\n\n" + body
    else:
        end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:at]) + body + ("\n" + rest if rest else "")
    bench.write_text(new.rstrip("\n") + "\n", encoding="utf-8")
