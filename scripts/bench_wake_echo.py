#!/usr/bin/env python3
"""The wake word said over the assistant's spoken reply, with echo cancellation on (issue 13); writes the
``## Wake word over a spoken reply`` section of BENCHMARKS.md.

Offline, on the live classes: the far end is an espeak reply (the player's exact samples, ``ArrayReference``);
the microphone is its echo through the test room of ``tests/support/echo_path.py`` (loudspeaker soft clipping, 60 ms,
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
import json
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
from support.echo_path import RoomSpec, echo_of  # noqa: E402
from support.speech import SR, silence, speech_16k  # noqa: E402
from support.wake_clips import heard_alone  # noqa: E402

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


def own_text(word: str) -> str:
    """The assistant's reply that says the wake word 8 times (the *self* case)."""
    phrase = PHRASES[word]
    return (
        f"Sure. My wake word is {phrase}. You say {phrase}, and then I listen. {phrase} is what wakes me. "
        f"{phrase}? Yes, {phrase}. {phrase}, {phrase}, {phrase}."
    )


def renderings(word: str, tmp: Path) -> tuple[list[np.ndarray], int, list[str]]:
    """The wake word's espeak renderings the detector hears said alone, in quiet (the others are espeak's limit
    (the Wake word section), not the echo's, and would only blur what this measures); how many were made; and
    the kept ones' "voice/wpm"."""
    made = [(f"{v}/{s}", speech_16k(PHRASES[word], tmp, voice=v, speed=s)) for v in VOICES for s in SPEEDS]
    kept = [(name, w) for name, w in made if heard_alone(word, w)]
    return [w for _, w in kept], len(made), [name for name, _ in kept]


def run(word: str, tmp: Path) -> dict:
    story = speech_16k(STORY, tmp, voice="en-us", speed=110)
    far = np.concatenate([silence(0.5), story, silence(0.3), story])[: 60 * SR]
    wakes, n_rendered, _ = renderings(word, tmp)
    own = speech_16k(own_text(word), tmp, voice="en-us", speed=160)
    out: dict = {"n_voices": len(wakes), "n_rendered": n_rendered, "rooms": {}}
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


def report(res: dict, word: str, command: str, when: str) -> str:
    lines = [
        "## Wake word over a spoken reply",
        "",
        f"Command: `{command}` ({when}; counts, not timings: no quiet lock needed).",
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
        "Live: the subsection below (`--live N`); the live App test uses the headset (main's failing case: 1 s "
        "into the first reply), the loud room is tested offline (`tests/test_wake_echo.py`).",
        "",
    ]
    if "live" in res:
        lines += [
            "### Live, in the loudspeaker room",
            "",
            LIVE_TEXT,
            "",
            live_report(res["live"], word),
            "",
            LIVE_FINDINGS,
            "",
        ]
    return "\n".join(lines)


LIVE_TEXT = (
    'The App as a kiosk runs it (`scripts/_wake_live.py`): `[wake] word`, `echo_cancel = "on"` (half duplex), '
    "speech output on (espeak, 110 wpm, the tiny random-weight model's replies, max_new_tokens 400), real "
    "PortAudio devices on a private PulseAudio server and the time-indexed room of `tests/support/room.py` "
    "(60 ms, RT60 0.45 s, the echo as loud as the user) between the assistant's sink and the microphone; the "
    "wake word mixed into the microphone by the room's `say` (same renderings as above). *onset*: a fresh App "
    "(canceller) per wake word, said 1 s into its first reply; *converged*: one App, one reply per wake word, "
    "said once the canceller reports converged and 3-6 s into the reply; *self*: the reply itself says the "
    "wake word (a FAKE backend speaks a fixed text: the tiny model cannot be made to) in a converged App. A stop: "
    "exactly one `interrupted` (reason wake) for the turn and its sound off within 2 s. The peaks are each "
    "detector's highest probability from the word's start to 1.5 s after its end (cutoff 0.85); the room's "
    "losses are its output underflows and echo samples missing during the trial. The machine was shared (shared "
    "lock; other helpers' runs)."
)


LIVE_FINDINGS = (
    "Not reliable live, converged or not (target ≥ 90 %), so no live loud-room App test yet. An earlier "
    "`--live-only` run the same hour (lower load): onset 4 of 4, converged 5 of 11 (turns 1-4 stopped, 1 of 7 "
    "after), self 0 (linear peak 0.77). Why, measured on the run's recordings (the microphone and far end "
    "the linear canceller was handed, both detectors' inputs): (1) the linear branch cancels almost nothing live: "
    "0-3 dB (7 dB at best) before each wake word, against 17.8 dB for the simulated room on the *same recorded far "
    "end*, so the echo is not a fixed linear function of the reference it is handed; its lag behind that reference "
    "(GCC-PHAT per 1 s window) moves between 12 and 52 ms within the run, partly the branch re-aligning on the "
    "canceller's delay measurement (7 times; it read 4-88 ms while the room's path is 60 ms), partly moves of "
    "a few ms that are not explained yet (the room re-anchored its output 182 times after underflows on the shared "
    "machine; the player's DAC stamps jitter too). (2) AEC3's branch, converged (ERLE 25-59 dB), still takes the "
    "wake word down by 3-13 dB with per-band notches; its peak was 0.17-0.99, below the cutoff in 6 of 12. "
    "(3) *self*: one false stop (both peaks at the cutoff, 0.85) and 0.77 the run before: the margin is thin. "
    "One converged trial (en-us+f3/140) heard the word (0.91) just after the reply ended: a listen, not a stop."
)


def live_report(live: dict, word: str) -> str:
    """The live rows (``--live``): stops per wake word, each detector's peak, the self case."""
    from voiceassist.config import Config
    from voiceassist.wake.live import LINEAR_MAX_DROP

    own = build(word).trigger.threshold
    drop = Config().wake.over_reply_drop
    cut_aec, cut_lin = round(own - drop, 2), round(own - min(drop, LINEAR_MAX_DROP), 2)  # while the reply plays
    lines = [
        '| case | wake words | stopped (one `interrupted` "wake", sound off ≤ 2 s) | '
        f"AEC3 branch ≥ its cutoff ({cut_aec}) | linear branch ≥ its cutoff ({cut_lin}) |",
        "|---|---|---|---|---|",
    ]
    for case in ("onset", "first", "converged"):
        rows = live.get(case, [])
        if not rows:
            continue
        lines.append(
            f"| {case} | {len(rows)} | **{sum(r['ok'] for r in rows)}** | "
            f"{sum(r.get('p_aec', 0) >= cut_aec for r in rows)} | "
            f"{sum(r.get('p_linear', 0) >= cut_lin for r in rows)} |"
        )
    sc = live["self"]
    lines += [
        "",
        f"*self* (the reply says the wake word {sc.get('n')} times, converged canceller): {sc.get('wakes')} wake "
        f"detections, {sc.get('stops')} stops (peaks: AEC3 branch {sc.get('p_aec')}, linear {sc.get('p_linear')}).",
        "",
    ]
    lines += [
        "| case | voice | s into reply | stopped | peak AEC3 branch | peak linear branch | canceller (ERLE dB, delay "
        "ms) | linear re-aligned | room: underflows / missing echo samples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in ("onset", "first", "converged"):
        for r in live.get(case, []):
            if "p_aec" not in r:
                lines.append(f"| {case} | {r.get('voice')} | | no trial: {r.get('why')} | | | | | |")
                continue
            e, lost = r["echo"], r.get("lost", {})
            lines.append(
                f"| {case} | {r['voice']} | {r['after_s']} | {'yes' if r['ok'] else 'no'} | {r['p_aec']} | "
                f"{r['p_linear']} | {e.get('convergence')}, {e.get('erle_db')}, {e.get('delay_ms')} | "
                f"{r['tap_realigned']} | {lost.get('underflows')} / {lost.get('missing')} |"
            )
    room = live.get("room", {})
    lines += [
        "",
        f"The room over the whole run: {room.get('underflows')} output underflows, {room.get('out_reanchors')} output "
        f"re-anchors, {room.get('missing')} echo samples missing; {live.get('skipped', 0)} replies ended before a "
        "trial (not counted).",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--word", default="okay_nabu", choices=sorted(PHRASES))
    ap.add_argument("--no-write", action="store_true", help="print only; do not change BENCHMARKS.md")
    ap.add_argument("--live", type=int, default=0, metavar="N", help="also N wake words live, converged canceller")
    ap.add_argument("--onset", type=int, default=6, help="with --live: wake words 1 s into a fresh App's reply")
    ap.add_argument(
        "--first", type=int, default=0, help="with --live: wake words 3 s into a fresh App's converged first reply"
    )
    ap.add_argument("--report-from", metavar="JSON", help="rewrite the section from a run's results.json")
    ap.add_argument("--live-only", action="store_true", help="with --live: skip the offline part (implies --no-write)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_wake_echo-"))
    if args.live_only:
        from _wake_live import run_live

        wakes, _, names = renderings(args.word, tmp)
        print(
            live_report(
                run_live(args.word, wakes, names, own_text(args.word), args.live, args.onset, tmp, args.first),
                args.word,
            )
        )
        return 0
    if args.report_from:  # the section again from a run's saved results (its text changed, not the figures)
        saved = json.loads(Path(args.report_from).read_text())
        res, command, when = saved["res"], saved["command"].replace(" --no-write", ""), saved["when"]
    else:
        res = run(args.word, tmp)
        if args.live:
            from _wake_live import run_live

            wakes, _, names = renderings(args.word, tmp)
            res["live"] = run_live(args.word, wakes, names, own_text(args.word), args.live, args.onset, tmp, args.first)
        argv = [a for a in sys.argv[1:] if a != "--no-write"]
        command = ("python scripts/bench_wake_echo.py " + " ".join(argv)).strip()
        when = f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, load average {os.getloadavg()[0]:.1f}"
        (tmp / "results.json").write_text(json.dumps({"res": res, "command": command, "when": when}, default=str))
        print(f"results in {tmp / 'results.json'}", flush=True)
    text = report(res, args.word, command, when)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", text, "## Wake word over a spoken reply")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
