#!/usr/bin/env python3
"""Speech output latency; writes the ``## Speech output`` section of BENCHMARKS.md.

Real parts: the Speaker (pyttsx3 + espeak-ng in its worker process), PortAudio playback into a private
PulseAudio null sink (this machine has no sound card), and a PortAudio capture of that sink's monitor as an
independent witness of when sound really was there.

1. Last token of the first sentence → first sample played. A reply is fed token by token (as the model worker
   does); the clock starts when the token that completes the first sentence is fed. "Played" is the PortAudio
   DAC time of the first sample (the callback's ``outputBufferDacTime`` on the capture clock); also shown:
   when that sample was handed to the device, and when it showed up in the monitor capture (adds the
   monitor's own capture latency, so it is an upper bound). Target ≤ 150 ms.
2. Barge-in confirmed → playback stopped. The App calls ``Speaker.stop()`` at the moment barge-in speech is
   confirmed, so the clock starts at that call, during speech; "stopped" is the DAC time of the last
   sample (``quiet_since()``), and, as a witness, the end of sound in the monitor capture. Target ≤ 150 ms
   (and the spec's stop within 100 ms).

Usage: .venv/bin/python scripts/bench_speech.py [--trials 20] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from _sections import replace_section  # noqa: E402 (scripts/ is on sys.path when run)
from support.pulse import PulseServer  # noqa: E402

from voiceassist.config import TtsConfig  # noqa: E402

SECTION = "## Speech output"
LOUD = 0.01  # RMS of a 5 ms frame above this is sound
WORDS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()


class MonitorCapture:
    """PortAudio capture of the default source (the null sink's monitor), stamped on the capture clock."""

    def __init__(self) -> None:
        import sounddevice as sd

        self.rate = 48000
        self.frames: list[tuple[float, np.ndarray]] = []  # (time of the first sample, samples)
        self.lock = threading.Lock()

        def callback(indata, frames, time_info, status):  # only copies
            ago = time_info.currentTime - time_info.inputBufferAdcTime
            t = time.monotonic() - (ago if 0 <= ago < 1 else 0.0)
            with self.lock:
                self.frames.append((t, indata[:, 0].copy()))

        self.stream = sd.InputStream(
            device="pulse", samplerate=self.rate, channels=1, blocksize=240, latency="low", callback=callback
        )
        self.stream.start()

    def sound_times(self, t0: float, t1: float) -> np.ndarray:
        """Capture-clock times of 5 ms frames with sound between t0 and t1."""
        with self.lock:
            frames = list(self.frames)
        out = []
        for t, x in frames:
            if t1 >= t >= t0 - 0.1:
                n = len(x) // 240
                for k in range(n):
                    if np.sqrt(np.mean(x[k * 240 : (k + 1) * 240] ** 2)) > LOUD:
                        out.append(t + k * 240 / self.rate)
        return np.array(out)

    def close(self) -> None:
        self.stream.abort()
        self.stream.close()


def tokens(text: str) -> list[str]:
    return re.findall(r" ?[A-Za-z']+| ?\d| ?[^\sA-Za-z\d]+|\s+", text)


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


def stats(xs: list[float]) -> str:
    a = np.array(xs) * 1000
    return f"median {np.median(a):.0f} ms, p95 {np.percentile(a, 95):.0f} ms, max {a.max():.0f} ms"


def run(trials: int) -> dict:
    from voiceassist.speech import Speaker

    sp = Speaker(TtsConfig(rate=175))
    if not sp.wait_ready(20):
        raise SystemExit(f"speech output did not come up: {list(sp.errors.queue)}")
    mon = MonitorCapture()
    time.sleep(2.5)  # past the null sink's first wake-up (it sleeps up to 2 s before it serves a new stream)
    first_dac, first_dev, first_mon = [], [], []
    stop_dac, stop_mon, stop_call = [], [], []
    for k in range(trials):
        turn = 2 * k + 1
        # 1. first sentence: tokens arrive 30 ms apart, like a fast model; the rest follows later.
        first = f"Here is the {WORDS[k % len(WORDS)]} answer."  # (a number before the full stop would wait)
        for piece in tokens(first)[:-1]:
            sp.feed(turn, piece)
            time.sleep(0.03)
        t_last = time.monotonic()
        sp.feed(turn, tokens(first)[-1])
        if not wait_for(lambda turn=turn: sp.first_heard(turn) is not None, 5):
            raise SystemExit(f"trial {k}: nothing played ({list(sp.errors.queue)})")
        first_dac.append(sp.first_heard(turn) - t_last)
        first_dev.append(sp._player.first_delivered(turn) - t_last)
        time.sleep(0.4)
        heard = mon.sound_times(t_last, time.monotonic())
        if len(heard):
            first_mon.append(float(heard[0]) - t_last)
        sp.stop()
        wait_for(lambda: not sp.speaking(), 2)
        time.sleep(0.3)
        # 2. barge-in: stop() in the middle of a long sentence.
        turn += 1
        sp.feed(
            turn,
            "This long sentence keeps going on and on so that it is surely still playing when the"
            " user barges in over it.",
        )
        sp.end_reply(turn)
        wait_for(lambda turn=turn: sp.first_heard(turn) is not None, 5)
        time.sleep(0.6 + 0.05 * (k % 5))
        t_stop = time.monotonic()
        sp.stop()
        stop_call.append(time.monotonic() - t_stop)
        wait_for(lambda: not sp.speaking(), 2)
        stop_dac.append(sp.quiet_since() - t_stop)
        time.sleep(0.5)
        sound = mon.sound_times(t_stop - 0.5, time.monotonic())
        # The witness only counts when the monitor still had sound right after the call (it lags the output
        # by ~30 ms); a stop that fell in a pause between words has no "end of sound" to time.
        if len(sound) and np.any((sound >= t_stop) & (sound < t_stop + 0.03)):
            stop_mon.append(float(sound[-1]) + 0.005 - t_stop)
        time.sleep(0.1)
    engine = sp.engine
    sp.close()
    mon.close()
    return dict(
        engine=engine,
        first_dac=first_dac,
        first_dev=first_dev,
        first_mon=first_mon,
        stop_dac=stop_dac,
        stop_mon=stop_mon,
        stop_call=stop_call,
    )


def report(r: dict, trials: int, command: str) -> str:
    load = os.getloadavg()[0]
    lines = [
        SECTION,
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores "
        f"shared with other jobs: load average {load:.1f}). Engine: {r['engine']} (espeak-ng on CPU), 175 "
        "words/min; output: PortAudio → PulseAudio null sink (no sound card here), 20 ms blocks, `latency='low'`.",
        "",
        f"- Last token of the first sentence → first sample played ({trials} replies, tokens 30 ms apart): "
        f"**{stats(r['first_dac'])}** (PortAudio DAC time); handed to the device: {stats(r['first_dev'])}; "
        + (
            f"seen in a capture of the sink's monitor: {stats(r['first_mon'])}"
            if r["first_mon"]
            else "monitor capture: no data"
        )
        + ". Target ≤ 150 ms.",
        f"- Barge-in confirmed (`Speaker.stop()` called during speech) → playback stopped ({trials} stops): "
        f"**{stats(r['stop_dac'])}** (DAC time of the last sample); end of sound in the monitor capture: "
        + (
            f"{stats(r['stop_mon'])} ({len(r['stop_mon'])} stops that fell on sound; one that falls just before"
            " a pause between words ends sooner)"
            if r["stop_mon"]
            else "no data"
        )
        + f"; `stop()` itself returns in {stats(r['stop_call'])}. Target ≤ 150 ms "
        "(spec: stop within 100 ms).",
        "",
        "How: the first figure is synthesis of the sentence in the worker process (~10-20 ms for espeak), the "
        "hand-over to the player (≤ one 20 ms block) and the device's output latency (~45 ms through "
        "PulseAudio). A stop fades out over 5 ms at the next block, so sound ends one block plus the output "
        "latency after the call. The monitor figures include the monitor capture's own latency, so they are "
        "upper bounds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")
    args = ap.parse_args()
    command = ".venv/bin/python scripts/bench_speech.py" + (f" --trials {args.trials}" if args.trials != 20 else "")
    with PulseServer():
        import sounddevice as sd

        sd._terminate()
        sd._initialize()
        r = run(args.trials)
    text = report(r, args.trials, command)
    print({k: [round(x * 1000) for x in v] for k, v in r.items() if isinstance(v, list)}, file=sys.stderr)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", text, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
