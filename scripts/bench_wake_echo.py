#!/usr/bin/env python3
"""The wake word said over the assistant's spoken reply, with echo cancellation on (issue 13); writes the
``## Wake word over a spoken reply`` section of BENCHMARKS.md.

Offline, on the live classes: the far end is an espeak reply (the player's exact samples, ``ArrayReference``);
the microphone is its echo through the test room of ``tests/support/room.py`` (loudspeaker soft clipping, 60 ms,
RT60 0.45 s, DRR 0 dB, the echo as loud as the user's voice) — or nothing, for a headset — plus wake words in
espeak voices and speeds. The chain is the App's: ``LinearWakeTap`` → ``EchoCanceller`` (AEC3 + noise
suppression, as ``echo_cancel = "on"`` builds it) → ``WakeListener`` with both detectors, in 20 ms blocks.

Counted per wake word (a hit: a detection between the word's start and 1 s after its end), for the detector on
AEC3's output alone (the chain before the fix), the one on the linear canceller's output alone, and the
listener (either: the fix):

- steady: a wake word every 3 s over a 60 s reply (the canceller has converged);
- onset: a fresh canceller, the wake word 1 s into the first reply (the App test's case: AEC3 not converged);
- self: the assistant's reply says the wake word itself (8 times): detections here are false (should be 0).

Usage: python scripts/bench_wake_echo.py [--word okay_nabu] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from _sections import replace_section  # noqa: E402 (scripts/ is on sys.path when run)
from support.room import RoomSpec, echo_of  # noqa: E402
from support.speech import SR, silence, speech_16k  # noqa: E402

from voiceassist.audio.echo import EchoCanceller  # noqa: E402
from voiceassist.audio.farend import ArrayReference  # noqa: E402
from voiceassist.events import AudioBlock  # noqa: E402
from voiceassist.wake.detector import build  # noqa: E402
from voiceassist.wake.gate import WakeGate  # noqa: E402
from voiceassist.wake.linear import LinearWakeTap  # noqa: E402
from voiceassist.wake.live import WakeListener  # noqa: E402

PHRASES = {"okay_nabu": "Okay Nabu", "hey_jarvis": "Hey Jarvis", "alexa": "Alexa", "hey_mycroft": "Hey Mycroft"}
VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+f2", "en-gb-x-rp")
SPEEDS = (140, 180)
BLOCK = 320  # 20 ms, as the microphone gives
STORY = (
    "Once upon a time there was a little village by the sea, where the fishermen went out every morning before "
    "the sun came up and returned in the evening with their boats full of fish. The children played on the beach "
    "and the old women mended the nets, telling stories of storms and of sailors who had never come back. "
    "One winter a stranger arrived with a map of an island that nobody had ever seen, and the whole village "
    "gathered in the tavern to hear him tell of its forests, its rivers and the gold hidden under its hills."
)
ROOMS = {
    "headset (no echo)": None,
    "room (echo as loud as the user)": RoomSpec(),
    # As in the live PulseAudio room, where the echo comes 150-900 ms after the player's stamps (its buffering):
    # beyond AEC3's 250 ms and the linear filter's 300 ms until re-aligned (the measurement searches ±500 ms)
    "room, echo 400 ms late": RoomSpec(delay_ms=400.0),
}


def listener(word: str) -> WakeListener:
    w = WakeListener(build(word), WakeGate(5.0, 0.0))
    w.add_linear_branch()
    return w


class Chain:
    """The App's processor chain for one stream, recording each detector's detections separately."""

    def __init__(self, word: str, far: np.ndarray) -> None:
        self.wake = listener(word)
        self.ec = EchoCanceller(ArrayReference(far, 0.0), noise_suppression=True)
        self.tap = LinearWakeTap(self.ec, self.wake)
        self.cpu = 0.0

    def run(self, mic: np.ndarray) -> list[float]:
        found: list[float] = []
        t0 = time.process_time()
        for i in range(0, len(mic), BLOCK):
            block = AudioBlock(mic[i : i + BLOCK], i / SR)
            self.wake.process(self.ec.process(self.tap.process(block)))
            got, _ = self.wake.detections(i / SR)
            found += [d.t for d in got]
        self.cpu += time.process_time() - t0
        return found


def traced(word: str, far: np.ndarray, mic: np.ndarray) -> tuple[list[float], list[float], list[float], float]:
    """(the listener's detections, AEC3-branch detections, linear-branch detections, CPU s) on one stream."""
    c = Chain(word, far)
    assert c.wake.linear is not None
    c.wake.detector.trace, c.wake.linear.trace = [], []
    both = c.run(mic)
    th = c.wake.detector.threshold

    def fired(trace: list[tuple[float, float]]) -> list[float]:
        from voiceassist.wake.detector import Trigger

        trig = Trigger(th, c.wake.detector.trigger.refractory_s)
        return [t for t, p in trace if trig.fires(t, p)]

    return both, fired(c.wake.detector.trace), fired(c.wake.linear.trace), c.cpu


def hits(times: list[float], words: list[tuple[float, float]]) -> int:
    return sum(any(s <= t <= e + 1.0 for t in times) for s, e in words)


def heard_alone(word: str, wake: np.ndarray) -> bool:
    det = build(word)
    mic = np.concatenate([silence(1.0), wake, silence(1.5)])
    return any(det.process(AudioBlock(mic[i : i + BLOCK], i / SR)) for i in range(0, len(mic), BLOCK))


def run(word: str, tmp: Path) -> dict:
    story = speech_16k(STORY, tmp, voice="en-us", speed=110)
    far = np.concatenate([silence(0.5), story, silence(0.3), story])[: 60 * SR]
    rendered = [speech_16k(PHRASES[word], tmp, voice=v, speed=s) for v in VOICES for s in SPEEDS]
    # Only the renderings the detector hears said alone, in quiet: the others are espeak's limit (the Wake word
    # section), not the echo's, and would only blur what this measures.
    wakes = [w for w in rendered if heard_alone(word, w)]
    phrase = PHRASES[word]
    own = speech_16k(
        f"Sure. My wake word is {phrase}. You say {phrase}, and then I listen. {phrase} is what wakes me. "
        f"{phrase}? Yes, {phrase}. {phrase}, {phrase}, {phrase}.",
        tmp,
        voice="en-us",
        speed=160,
    )
    out: dict = {"n_voices": len(wakes), "n_rendered": len(rendered), "rooms": {}}
    for room, spec in ROOMS.items():
        r: dict = {}
        echo = np.zeros(len(far), np.float32) if spec is None else echo_of(far, spec)
        # steady: every 3 s from 3 s on
        mic = echo.copy()
        placed = []
        for k, start in enumerate(np.arange(3.0, len(far) / SR - 2.0, 3.0)):
            w = wakes[k % len(wakes)]
            s = int(start * SR)
            mic[s : s + len(w)] += w
            placed.append((start, start + len(w) / SR))
        both, aec, lin, cpu = traced(word, far, mic)
        r["steady"] = {"n": len(placed), "aec": hits(aec, placed), "linear": hits(lin, placed)}
        r["steady"]["both"] = hits(both, placed)
        r["cpu_per_s"] = cpu / (len(mic) / SR)
        # onset: a fresh canceller each time, the wake word 1 s into the reply
        o = {"n": 0, "aec": 0, "linear": 0, "both": 0}
        for w in wakes:
            f = far[: 4 * SR]
            m = (np.zeros(len(f), np.float32) if spec is None else echo_of(f, spec)).copy()
            s = int(1.5 * SR)  # the reply starts at 0.5 s
            m[s : s + len(w)] += w
            b, a, li, _ = traced(word, f, m)
            span = [(1.5, 1.5 + len(w) / SR)]
            o["n"] += 1
            o["aec"] += hits(a, span)
            o["linear"] += hits(li, span)
            o["both"] += hits(b, span)
        r["onset"] = o
        # self: the assistant says the wake word; the microphone hears only its echo
        if spec is not None:
            f = np.concatenate([far[: 6 * SR], own, far[6 * SR : 12 * SR]])
            b, a, li, _ = traced(word, f, echo_of(f, spec))
            r["self"] = {"n": 8, "aec": len(a), "linear": len(li), "both": len(b)}
        out["rooms"][room] = r
    return out


def report(res: dict, word: str, command: str) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "## Wake word over a spoken reply",
        "",
        f"Command: `{command}` ({when}, {platform.machine()}, load average {os.getloadavg()[0]:.1f}; counts, not "
        "timings: no quiet lock needed).",
        "",
        f'`{word}` said over the assistant\'s spoken reply (espeak, 110 wpm) with `[audio] echo_cancel = "on"`: '
        f"the {res['n_voices']} of {res['n_rendered']} renderings (espeak voices {', '.join(VOICES)} × {SPEEDS} wpm) "
        "that the detector hears when said alone in quiet (the rest is espeak's limit, see the Wake word "
        "section), through the chain the App builds (20 ms blocks, AEC3 + noise suppression, the real "
        "detectors). *steady*: a wake word every 3 s "
        "over a 60 s reply; *onset*: a fresh canceller and the wake word 1 s into the first reply; *self*: the "
        f'reply itself says "{PHRASES[word]}" 8 times and the microphone hears only its echo (detections there '
        "are false). Columns: the detector on AEC3's output alone (the chain before this fix), the one on the "
        "linear canceller's output alone (`wake/linear.py`), and the listener, which fires on either (the fix).",
        "",
        "| room | case | n | AEC3 output (before) | linear output | either (now) |",
        "|---|---|---|---|---|---|",
    ]
    for room, r in res["rooms"].items():
        for case in ("steady", "onset", "self"):
            if case not in r:
                continue
            c = r[case]
            lines.append(f"| {room} | {case} | {c['n']} | {c['aec']} | {c['linear']} | **{c['both']}** |")
    lines.append("")
    cpu = ", ".join(f"{room}: {r['cpu_per_s']:.3f}" for room, r in res["rooms"].items())
    lines += [
        f"CPU of the whole chain (both cancellers, both detectors) per second of audio: {cpu} s (process time, "
        "shared machine).",
        "",
        "Why AEC3's output alone misses them: its suppressor, after the linear filter, takes down the bands and "
        "frames where it expects residual echo, the user's voice over the reply included: by 30-40 dB in the "
        "first seconds of playback (before it has learned the echo path, or that there is none: the headset), "
        "and by a few dB on average with deep per-band notches during double talk in the loud room. The linear "
        "canceller passes the near end untouched and leaves more echo (≈16 dB ERLE here); the assistant's own "
        "voice saying the wake word stays below the cutoff through it (the *self* row). *onset* stays poor in the "
        "loud room: in the first seconds of the first reply neither canceller knows the room yet (after that the "
        "canceller keeps what it learned across replies).",
        "",
        "Live (by hand, not by this script): the App in the PulseAudio loudspeaker room of `tests/support/room.py` "
        "(6 runs of the stop test, 2 wake words each, 2026-12-01) stopped the reply 2 times of 12 (0 of 4 in the "
        "last 2 runs, with the linear branch following the delay measurement). There the echo "
        "came 150-900 ms after the player's stamps and moved between replies (the canceller re-aligned 1-4 times "
        "per run, each time AEC3 and the linear filter start again), and the linear filter reached only 1-10 dB "
        "of ERLE on a recording of it (13-16 dB on the simulated room): the room process's buffering moves the "
        "echo path. That is the live room, not the wake word: the live App test therefore uses the headset "
        "(main's failing case, now passing: 1 s into the first reply), the loud room is tested offline "
        "(`tests/test_wake_echo.py`).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--word", default="okay_nabu", choices=sorted(PHRASES))
    ap.add_argument("--no-write", action="store_true", help="print only; do not change BENCHMARKS.md")
    args = ap.parse_args()
    res = run(args.word, Path(tempfile.mkdtemp(prefix="bench_wake_echo-")))
    text = report(res, args.word, ("python scripts/bench_wake_echo.py " + " ".join(sys.argv[1:])).strip())
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", text, "## Wake word over a spoken reply")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
