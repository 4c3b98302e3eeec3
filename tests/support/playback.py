"""A FAKE PlaybackTimeline for offline tests (no Speaker there): the reply plays throughout."""

from __future__ import annotations


class AlwaysSpeaking:
    """A fake PlaybackTimeline: the reply plays throughout."""

    def speaking(self) -> bool:
        return True

    def output_on(self) -> bool:
        return True

    def quiet_since(self) -> float | None:
        return None

    def echo_overlaps(self, start_t: float, end_t: float) -> bool:
        return True
