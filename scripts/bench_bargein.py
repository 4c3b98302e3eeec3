#!/usr/bin/env python3
"""Full-duplex barge-in over an open loudspeaker (#12), end to end; writes ``## Barge-in over the loudspeaker``.

The App as a user runs it with ``echo_cancel = "on"`` and ``full_duplex = true``: real PortAudio devices on a
private PulseAudio server, the room process of the tests between the assistant's sink and the microphone
(tests/support/room.py: loudspeaker soft clipping, 60 ms, RT60 0.45 s, the echo as loud as the user), espeak-ng
speaking the replies of the tiny random-weight Qwen2-Audio (noise text; spoken anyway). One App, one conversation:

(a) barge-in, ``--barge N`` replies: the user says a sentence over each reply, 2–6 s after its first sound.
    Per reply: confirmed = the capture stage stops the reply (StopSpeaking "barge_in", wall clock) − the user's
    onset (when the speech's first sample plays into the microphone sink: its DAC time, from the room);
    stopped = the last sample of the reply heard (the player's DAC time) − the
    confirmation; kept = the user's words are the next turn (one utterance of 1–5 s, turn + 1) and the history
    marks the reply interrupted with the heard part kept. Target: confirmed ≤ barge_in_ms + 200 ms in ≥ 19 of
    20, stopped ≤ 150 ms, words kept.
(b) no false barge-in, ``--quiet N`` replies spoken to the end with nobody talking: no barge-in, no turn; over
    every other one a backchannel ("Yeah." 0.38 s / "Uh-huh." 0.43 s, shorter than barge_in_ms) that must
    neither stop the reply nor become a turn.

Usage: flock -s /work/coord/quiet.lock env PYTHONPATH=. .venv/bin/python scripts/bench_bargein.py
       [--barge 20] [--quiet 20] [--max-tokens 120] [--quiet-tokens 40] [--no-write] [--record NPZ]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _benchlib import pump_events  # noqa: E402 (scripts/ is on sys.path when run)
from support.pulse import PulseServer  # noqa: E402
from support.room import Room, RoomSpec  # noqa: E402
from support.speech import SR, silence, speech_16k  # noqa: E402

USER = ["Stop please, I have another question.", "Wait, tell me about the weather instead.", "Hold on, that is wrong."]
BACKCHANNELS = ["Yeah.", "Uh-huh."]


class Run:
    """One App in the room, with the capture stage's barge-in decisions timed (wall clock)."""

    def __init__(self, max_tokens: int) -> None:
        from voiceassist.app import App
        from voiceassist.audio.sources import MicrophoneSource
        from voiceassist.config import Config, with_overrides
        from voiceassist.openers import open_backend
        from voiceassist.speech import Speaker

        self.cfg = with_overrides(
            Config(),
            {
                "model.name": "tiny",
                "generation.temperature": 0.0,
                "generation.max_new_tokens": max_tokens,
                "tts.enabled": True,
                "tts.rate": 150,
                "audio.echo_cancel": "on",
                "audio.full_duplex": True,
            },
        )
        self.speaker = Speaker(self.cfg.tts, self.cfg.audio.output_device)
        assert self.speaker.wait_ready(15), "speech worker / output device did not come up"
        self.session = open_backend(self.cfg)
        self.app = App(self.cfg, MicrophoneSource(None), self.session, speaker=self.speaker)
        self.stops: list[tuple[float, dict]] = []  # (wall clock, echo state) of each barge-in decision
        capture, orig = self.app.capture, self.app.capture._speech

        def speech(msg: object) -> None:
            if getattr(msg, "reason", "") == "barge_in":
                self.stops.append((time.monotonic(), self.app.echo_state() or {}))
            orig(msg)

        capture._speech = speech
        self.events: list = []
        self.rec: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []  # with --record: (t, mic, far, out)
        self.said: list[tuple[float, float, str]] = []  # (onset, duration, kind) of what the room said

    def record(self) -> None:
        """Keep what the echo canceller is handed and gives (for replaying a run offline, ``--record``)."""
        aec = next(p for p in self.app.capture.processors.processors if type(p).__name__ == "EchoCanceller")
        run_orig = aec._run

        def run(near: np.ndarray, t: float) -> np.ndarray:
            out = run_orig(near, t)
            far = aec.reference.read(t + aec.reference_lead_s, len(near))
            self.rec.append((t, near.copy(), far, out.copy()))
            return out

        aec._run = run

    def save(self, path: Path) -> None:
        """The recording as arrays from the first frame's time (gaps as zeros), and what was said when."""
        t0 = self.rec[0][0]
        n = round((self.rec[-1][0] - t0) * SR) + len(self.rec[-1][1])
        arrays = {k: np.zeros(n, np.float32) for k in ("mic", "far", "out")}
        for t, *blocks in self.rec:
            i = round((t - t0) * SR)
            for key, b in zip(("mic", "far", "out"), blocks):
                arrays[key][i : i + len(b)] = b[: max(0, n - i)]
        stops = np.array([w for w, _ in self.stops])
        said = np.array([(t, d) for t, d, _ in self.said]).reshape(-1, 2)
        kinds = np.array([k for _, _, k in self.said])
        np.savez_compressed(path, t0=t0, stops=stops, said=said, kinds=kinds, **arrays)
        self._spoke = 0.0  # when the speaker last said it was speaking (wall clock)

    def pump(self, seconds: float, until=None) -> None:
        pump_events(self.app, self.events, seconds, until)

    def wait_heard(self, after: int, timeout: float = 60) -> tuple[int, float | None]:
        """The first reply turn after ``after`` that is heard, and when its first sample was (None: none)."""

        def heard() -> bool:
            turn = self.speaker._turn
            return turn is not None and turn > after and self.speaker.first_heard(turn) is not None

        self.pump(timeout, heard)
        turn = self.speaker._turn
        if turn is None or turn <= after:
            return after + 1, None
        return turn, self.speaker.first_heard(turn)

    def ended(self, turn: int) -> bool:
        """The reply of ``turn`` is over: generated, and nothing spoken for 0.5 s (between two sentences the
        speaker may say it is not speaking for a moment)."""
        now = time.monotonic()
        if self.speaker.speaking():
            self._spoke = now
        return now - self._spoke > 0.5 and bool(self.of("reply_done", turn))

    def new_reply(self, turn: int) -> None:
        """Ask for the next reply once the one of ``turn`` is over (a turn submitted while a reply still plays
        waits behind it, and the trials after would time the wrong reply)."""
        self.pump(180, lambda: self.ended(turn))
        self.app.submit_text("Tell me a long story.")

    def reply_tokens(self, n: int) -> None:
        """Replies from now on are at most ``n`` tokens (the session reads its generation settings per turn)."""
        import dataclasses

        self.session.generation = dataclasses.replace(self.session.generation, max_new_tokens=n)

    def converged(self) -> bool:
        return (self.app.echo_state() or {}).get("convergence") == "converged"

    def of(self, kind: str, turn: int | None = None) -> list:
        return [e for e in self.events if e.kind == kind and (turn is None or getattr(e, "turn", None) == turn)]


def barge_trials(run: Run, room: Room, n: int, tmp: Path, rng: random.Random) -> list[dict]:
    import soundfile as sf

    wavs = []
    for i, text in enumerate(USER):
        speech = speech_16k(text, tmp)
        path = tmp / f"user{i}.wav"
        sf.write(path, np.concatenate([speech, silence(0.3)]), SR)
        wavs.append((path, len(speech) / SR))
    rows = []
    run.app.submit_text("Tell me a long story.")
    turn = 0
    for k in range(n):
        turn, first = run.wait_heard(turn)
        row: dict = {"turn": turn, "ok": False}
        rows.append(row)
        if first is None:
            row["why"] = "no sound"
            print(f"barge {k + 1}/{n}: {row}", flush=True)
            run.new_reply(turn)
            continue
        # The user talks once the canceller has converged (full duplex; before, the half-duplex gate holds and
        # no barge-in is possible) and at least `at` s into the reply.
        at = rng.uniform(1.5, 4.0)
        run.pump(60, lambda f=first, a=at, t=turn: (time.monotonic() >= f + a and run.converged()) or run.ended(t))
        row["after_s"] = round(time.monotonic() - first, 1)
        if run.ended(turn):
            row["why"] = f"reply ended ({row['after_s']} s) before the canceller converged: {run.app.echo_state()}"
            print(f"barge {k + 1}/{n}: {row}", flush=True)
            run.new_reply(turn)
            continue
        n_stops = len(run.stops)
        row["false_before"] = len(run.of("interrupted", turn))
        path, dur = wavs[k % len(wavs)]
        onset = room.say(path)
        run.said.append((onset, dur, "barge"))
        run.pump(10, lambda n0=n_stops: len(run.stops) > n0)
        run.pump(30, lambda t=turn: bool(run.of("utterance", t + 1)))
        run.pump(2.0, lambda t=turn: bool(run.of("interrupted", t)))
        if len(run.stops) == n_stops:
            row["why"] = f"no barge-in; state {run.app.echo_state()}"
        else:
            wall, state = run.stops[n_stops]
            row["confirm_ms"] = (wall - onset) * 1000
            row["stopped_ms"] = (run.speaker._player.last_audio_end() - wall) * 1000
            row["state"] = state
        inter = run.of("interrupted", turn)
        utt = run.of("utterance", turn + 1)
        hist = run.app.history()
        entry = hist[turn - 1] if len(hist) >= turn else {}
        row["kept"] = bool(
            len(inter) == 1
            and inter[0].reason == "barge_in"
            and entry.get("interrupted")
            and entry.get("reply") == inter[0].kept_text
            and len(utt) == 1
            and len(utt[0].durations) == 1
            and 1.0 < utt[0].durations[0] < 5.0
        )
        row["utt"] = [round(d, 2) for u in utt for d in u.durations]
        limit = run.cfg.tts.barge_in_ms + 200
        row["ok"] = bool(row["kept"] and row.get("confirm_ms", 1e9) <= limit and row.get("stopped_ms", 1e9) <= 150)
        print(f"barge {k + 1}/{n}: {row}", flush=True)
        # the user's words are turn + 1, and its reply (heard as turn + 1) the next trial's; without a
        # barge-in the reply plays on and the user's words were its echo's: the next trial asks again
        if len(run.stops) == n_stops or not utt:
            run.new_reply(turn)
    return rows


def quiet_trials(run: Run, room: Room, n: int, tmp: Path, rng: random.Random, turn: int) -> list[dict]:
    """``turn``: the last turn so far."""
    import soundfile as sf

    bc = []
    for i, text in enumerate(BACKCHANNELS):
        path = tmp / f"bc{i}.wav"
        sf.write(path, speech_16k(text, tmp), SR)
        bc.append(path)
    rows = []
    for k in range(n):
        n_stops = len(run.stops)
        # The last turn asked for (the barge-in part's last user words may still be waiting for their reply):
        # its reply ends before the next is asked for, so each trial times its own reply.
        turn = max([turn] + [e.turn for e in run.of("utterance")])
        run.pump(120, lambda t=turn: t == 0 or run.ended(t))
        run.app.submit_text("Tell me a long story.")
        turn, first = run.wait_heard(turn)
        row: dict = {"turn": turn, "backchannel": k % 2 == 1, "ok": False}
        if first is None:
            row["why"] = "no sound"
            rows.append(row)
            continue
        if row["backchannel"]:
            at = rng.uniform(1.5, 4.0)
            run.pump(30, lambda f=first, a=at, t=turn: time.monotonic() >= f + a or run.ended(t))
            row["bc_during_reply"] = run.speaker.speaking()
            run.said.append((room.say(bc[(k // 2) % len(bc)]), 0.4, "backchannel"))
        run.pump(120, lambda t=turn: run.ended(t))
        run.pump(1.5)  # the echo's tail and the segmenter's hang-over
        row["heard_s"] = round(run.speaker._player.last_audio_end() - first, 1)
        row["barge_ins"] = len(run.stops) - n_stops
        row["interrupted"] = len(run.of("interrupted", turn))
        # microphone turns only (the next trial's typed request is an utterance event too)
        heard = [e for e in run.of("utterance", turn + 1) if e.durations]
        row["turns"] = len(heard)
        if heard:  # when, from the reply's end (+: after it): residual echo at the end, or a backchannel
            row["turn_at_s"] = [round(e.speech_end_t - run.speaker._player.last_audio_end(), 2) for e in heard]
        row["ok"] = row["barge_ins"] == 0 and row["interrupted"] == 0 and row["turns"] == 0
        print(f"quiet {k + 1}/{n}: {row} state {run.app.echo_state()}", flush=True)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--barge", type=int, default=20)
    ap.add_argument("--quiet", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=120, help="longest reply of the barge-in part, tokens")
    ap.add_argument(
        "--quiet-tokens", type=int, default=40, help="longest reply of the quiet part, tokens (~0.3 s of speech each)"
    )
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--record", metavar="NPZ", help="save the canceller's input, reference and output there")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    spec = RoomSpec(delay_ms=60, rt60_s=0.45)
    pulse = PulseServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="bargein-"))
    t_start = time.monotonic()
    try:
        import sounddevice as sd

        sd._terminate()
        sd._initialize()
        pulse.load_sink("va_mic")
        pulse._run("pactl", "set-default-source", "va_mic.monitor")  # before the room: it moves default streams
        room = Room(pulse, "va_sink", "va_mic", spec)
        try:
            run = Run(args.max_tokens)
            if args.record:
                run.record()
            run.app.start()
            try:
                barge = barge_trials(run, room, args.barge, tmp, rng)
                run.reply_tokens(args.quiet_tokens)
                quiet = quiet_trials(run, room, args.quiet, tmp, rng, run.speaker._turn or 0)
            finally:
                run.app.stop()
                run.speaker.close()
                if args.record and run.rec:
                    run.save(Path(args.record))
            room_stats = room.stats()
            print(f"room: {room_stats}", flush=True)
        finally:
            room.close()
    finally:
        pulse.stop()
    took = time.monotonic() - t_start
    text = report(barge, quiet, spec, run.cfg.tts.barge_in_ms, took)
    print(text)
    if not args.no_write:
        from _sections import replace_section

        replace_section(ROOT / "BENCHMARKS.md", text, "## Barge-in over the loudspeaker")
    return 0


def report(barge: list[dict], quiet: list[dict], spec: RoomSpec, barge_in_ms: int, took: float) -> str:
    conf = np.array([r["confirm_ms"] for r in barge if "confirm_ms" in r])
    stop = np.array([r["stopped_ms"] for r in barge if "stopped_ms" in r])
    ok = sum(r["ok"] for r in barge)
    kept = sum(bool(r.get("kept")) for r in barge)
    within = int(np.sum(conf <= barge_in_ms + 200)) if len(conf) else 0
    bcs = [r for r in quiet if r["backchannel"]]

    def stats(a: np.ndarray) -> str:
        if not len(a):
            return "none"
        return f"median {np.median(a):.0f} ms, max {a.max():.0f} ms"

    lines = [
        "## Barge-in over the loudspeaker",
        "",
        "`flock -s /work/coord/quiet.lock env PYTHONPATH=. .venv/bin/python scripts/bench_bargein.py` "
        f"({time.strftime('%Y-%m-%d')}, one run of {took / 60:.0f} min, shared lock: other tests may run). The App "
        '(`echo_cancel = "on"`, `full_duplex = true`, barge_in_ms '
        f"{barge_in_ms}) on real devices, the room process ({spec.delay_ms:g} ms, RT60 {spec.rt60_s:g} s, the "
        "echo as loud as the user) between its sink and its microphone, espeak speaking the tiny random-weight "
        "model's replies; one conversation.",
        "",
        "| measure | target | result |",
        "|---|---|---|",
        f"| (a) barge-in confirmed ≤ barge_in_ms + 200 ms of the user's onset | ≥ 19 of 20 | {within} of "
        f"{len(barge)} ({stats(conf)}) |",
        f"| (a) the reply's sound stopped after the confirmation | ≤ 150 ms | {stats(stop)} |",
        f"| (a) the user's words kept as the next turn, the heard part kept | all | {kept} of {len(barge)} |",
        f"| (a) all three | | {ok} of {len(barge)} |",
        f"| (b) false barge-ins / turns over replies spoken to the end | 0 | "
        f"{sum(r.get('barge_ins', 0) + r.get('turns', 0) for r in quiet)} in {len(quiet)} replies "
        f"({sum(r.get('heard_s', 0) for r in quiet):.0f} s of speech) |",
        f"| (b) a backchannel (< barge_in_ms) stopped the reply or became a turn | never | "
        f"{sum(not r['ok'] for r in bcs)} of {len(bcs)} |",
        "",
        "Confirmation is from the user's first sample in the microphone sink (its DAC time) and includes the "
        "capture stage's 20 ms blocks; "
        "stopped is the player's DAC time of the last sample (the 5 ms fade and the device latency).",
    ]
    bad = [r for r in barge + quiet if not r.get("ok")]
    if bad:
        lines += ["", "Failures:", ""] + [f"- {r}" for r in bad]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
