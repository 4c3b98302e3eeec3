"""The one backoff policy: doubling pauses between attempts, capped (the App's turn retries, the thin client's
request retries)."""

from __future__ import annotations


def backoff_pause(attempt: int, first_s: float, max_s: float) -> float:
    """The pause before retry number ``attempt`` (1, 2, ...): ``first_s`` doubled each retry, at most ``max_s``, s."""
    return min(first_s * 2 ** (attempt - 1), max_s)
