"""Writing a benchmark's own section of BENCHMARKS.md: ``replace_section`` replaces the section under ``head``
(up to the next ``## ``) with ``text``, or appends it the first time; the other sections stay exactly as they are.

Used by scripts/bench_frontend.py, bench_wake.py and bench_wake_echo.py (``scripts/`` on ``sys.path``, as when
run). Kept apart from _benchlib.py, which imports the App (and with it torch) that these scripts do not need.
"""

from __future__ import annotations

from pathlib import Path


def replace_section(bench: Path, text: str, head: str) -> None:
    """Replace the ``head`` section of ``bench`` with ``text`` (append it if there is none)."""
    old = bench.read_text(encoding="utf-8") if bench.exists() else "# Benchmarks\n"
    start = old.find(head + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(head))
        rest = old[nxt + 1 :] if nxt >= 0 else ""
        new = old[:start] + text + ("\n" + rest if rest else "")
    bench.write_text(new, encoding="utf-8")
