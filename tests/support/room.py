"""A room for the echo tests: a loudspeaker, a reverberant room and a user, on the private PulseAudio server.

The pure part, the echo path on arrays (used offline too: :class:`RoomSpec`, :func:`impulse_response`,
:func:`loudspeaker`, :func:`echo_of`, :class:`PartitionedConvolver`), is tests/support/echo_path.py; ``RoomSpec``
is also importable from here, with :class:`Room`.

The live part, this module: :class:`Room` runs ``python -m support.room`` as its own process, a *time-indexed* room on
PortAudio (ALSA's ``pulse`` PCM, at 16 kHz mono): one input stream on the assistant's output sink's monitor, one
output stream on the microphone sink (chosen with ``PULSE_SOURCE`` / ``PULSE_SINK``, so that they stay there when
the server's defaults change); the assistant records the microphone sink's monitor as its microphone.

Why by time: the echo path the assistant sees runs from its player's DAC time to its microphone's ADC time. A
room that passes blocks along (the previous one: parec → convolver → pacat) adds whatever its pipes and queues
hold, and each stall of the room process lengthens that for good (measured: 200–800 ms instead of 40–150, moving
by 20–500 ms at each stall; AEC3 then re-learns for seconds). A real room's path never moves. Here the input
callback stamps each block with its ADC time; a worker thread passes it through the loudspeaker and the room's
response and writes the echo into a ring indexed by capture-clock sample (``round(t · 16000)``, ``t`` on
``time.monotonic``); the output callback, for the block whose DAC time is T, plays the echo that entered at
T − delay. Both sides count samples contiguously from an anchor, and re-anchor on their stamps only after an
overflow / underflow, when a stamp is more than REANCHOR_S off the count (the input: off where its stamps have
lately been, since they walk), or when a smaller deviation persists (IN_STEP, OUT_STEP): a stall then loses echo
(zeros, counted) but never moves it, one late stamp moves nothing, and neither does the input stamps' slow walk
(those rules, and the measurements behind them: tests/support/sample_clock.py).
Hand-written because it is a test fixture and no library does a time-indexed room; the convolution is the
textbook partitioned one (scipy's convolutions do not stream).

Commands on its stdin: ``say PATH`` (mix a 16 kHz mono WAV into the microphone, after any speech still
playing); it answers on stdout ``said PATH T`` with T the capture-clock time (``time.monotonic``, shared by all
processes) at which the speech's first sample plays into the microphone sink (its DAC time). ``stats`` answers
one JSON line of counters (:class:`Counters`); ``trace PATH`` saves both clocks' recent stamps and deviations
(:meth:`Room.trace`) and answers ``traced PATH``; ``quit`` ends it.
"""

from __future__ import annotations

import collections
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from support.echo_path import SR, PartitionedConvolver, RoomSpec, impulse_response, loudspeaker
from support.sample_clock import IN_STEP, OUT_STEP, SampleClock

# Both streams' callback block and the convolver's partition, samples: 5 ms, or 2.5 ms for delays under
# SMALL_BLOCK_BELOW_MS (the output's latency is ~3 blocks at least, so a smaller block allows a shorter delay; it
# costs more callbacks: measured 0.10 of a core for the room process at 5 ms, 0.14 at 2.5 ms).
BLOCK, SMALL_BLOCK = 80, 40
SMALL_BLOCK_BELOW_MS = 50.0
PCM = "pulse"  # the PortAudio device: ALSA's pulse plugin, routed by PULSE_SOURCE / PULSE_SINK
# Input latency "low": a block reaches the callback ~5 ms (its own length) after its ADC time (measured).
IN_LATENCY = "low"
# The output latency requested grows with the delay (more room against underruns when the delay allows it):
# DAC time − callback time measured ≈ the request + 10 ms (5 ms → 15, 20 → 30, 40 → 50).
OUT_LATENCY_S = (0.005, 0.04)  # smallest, largest request, s: (delay − OUT_LATENCY_FROM_MS) / 2 between them
OUT_LATENCY_FROM_MS = 30.0
# The echo for an output block must be in the ring when its callback runs: delay ≥ the input's lag (one block) +
# the output's (~3 blocks at least) + one block + the worker's turn. Measured (the ``ready`` line, each start
# measures it again; :attr:`Room.min_delay_ms`): 13–19 ms with 2.5 ms blocks, 29–37 ms with 5 ms blocks. A room
# asked for less than it can honour says so at its start (Room raises) instead of playing the echo late.
MIN_DELAY_MS = 20.0  # the smallest delay_ms to ask for (2.5 ms blocks)
MARGIN_MS = 5.0  # slack kept on top of the measured minimum (the worker's scheduling on a loaded machine), ms
RING_S = 4.0  # s of echo kept (far more than any delay)
SETTLE_S = 0.5  # both streams keep time with enough slack for this long before the room says ready, s
START_TIMEOUT_S = 6.0  # per attempt: a stream through ALSA's pulse plugin can stay silent for ~1.7 s at first, s
START_ATTEMPTS = 3  # a stream opened right after the server started may get no callbacks at all: reopen
# No callback for this long (while this process ran): the streams are reopened. Longer than a new output
# stream's first silence (~1.7 s, see START_TIMEOUT_S), or a reopening would call for the next one.
STALL_S = 3.0
# The room process must not be starved on a loaded machine (it loses echo then, zeros in the microphone):
# raised priority (root in CI; ignored where not allowed).
ROOM_NICE = -10
CLOCK_MATCH_S = 1.0  # PortAudio's currentTime this close to a clock of ours is on that clock, s (as audio.sources)
DEFAULT_SPEC = RoomSpec()  # a Room's room unless told (frozen: one instance serves every Room)


class EchoRing:
    """Echo samples by capture-clock sample index (``round(t · SR)``). Writer: the worker thread; reader: the
    output callback. Each slot remembers its index, so a read tells the samples that were never written."""

    def __init__(self, seconds: float = RING_S) -> None:
        size = 1 << math.ceil(math.log2(seconds * SR))
        self.values = np.zeros(size, np.float32)
        self.index = np.full(size, -1, np.int64)
        self.end = 0  # one past the last index written

    def write(self, start: int, values: np.ndarray) -> None:
        idx = start + np.arange(len(values))
        slots = idx % len(self.values)
        self.values[slots] = values
        self.index[slots] = idx  # after the values: a slot read in between counts as missing, not as stale
        self.end = start + len(values)

    def read(self, start: int, n: int) -> tuple[np.ndarray, int]:
        """``n`` samples from ``start`` (0 where missing) and how many were missing."""
        idx = start + np.arange(n)
        slots = idx % len(self.values)
        ok = self.index[slots] == idx
        return np.where(ok, self.values[slots], np.float32(0.0)), int(n - np.count_nonzero(ok))


@dataclass
class Counters:
    """What the room saw since it said ready (plain numbers: written by the audio threads, read by ``stats``)."""

    in_blocks: int = 0
    out_blocks: int = 0
    in_reanchors: int = 0  # input count re-anchored on its ADC stamp (an overflow, or a jump > REANCHOR_S)
    out_reanchors: int = 0  # output count re-anchored on its DAC stamp (an underflow, or a stamp > REANCHOR_S off)
    in_steps: int = 0  # input count moved by a persistent deviation (IN_STEP)
    out_steps: int = 0
    overflows: int = 0
    underflows: int = 0
    missing: int = 0  # echo samples not ready when their output block was due (played as zeros)
    min_slack_ms: float = math.inf  # least time by which an output block's echo was ready before it was due, ms
    max_in_dev_ms: float = 0.0  # largest |ADC stamp − sample count| that did not re-anchor, ms
    max_out_dev_ms: float = 0.0  # largest |DAC stamp − sample count| that did not re-anchor, ms
    restarts: int = 0  # streams reopened after STALL_S without callbacks
    out_latency_ms: float = 0.0  # output latency requested, ms
    block: int = BLOCK  # the streams' block, samples
    min_delay_ms: float = 0.0  # smallest delay this room could honour, measured at its start, ms


def _monotonic(stamp: float, current: float) -> float | None:
    """A PortAudio stream time (``current`` the stream's clock now) on the capture clock; None if unusable."""
    now, wall = time.monotonic(), time.time()
    if stamp <= 0:
        return None
    if abs(current - wall) < CLOCK_MATCH_S:  # ALSA, PulseAudio: the wall clock
        return stamp + (now - wall)
    if abs(current - now) < CLOCK_MATCH_S:
        return stamp
    return None


@dataclass
class _Speech:
    samples: np.ndarray
    pos: int = 0
    t: float = 0.0  # capture-clock time its first sample plays, s
    started: threading.Event = field(default_factory=threading.Event)


class LiveRoom:
    """The room process's streams and worker (see the module docstring)."""

    def __init__(self, spec: RoomSpec) -> None:
        self.spec = spec
        self.delay = spec.delay_ms / 1000
        lo, hi = OUT_LATENCY_S
        self.out_latency = min(hi, max(lo, (spec.delay_ms - OUT_LATENCY_FROM_MS) / 2000))
        self.ring = EchoRing()
        self.block = SMALL_BLOCK if spec.delay_ms < SMALL_BLOCK_BELOW_MS else BLOCK
        self.conv = PartitionedConvolver(impulse_response(spec.rt60_s, spec.drr_db, spec.seed), self.block)
        # Producer: the input callback (put); consumer: the worker. Items: (block, ADC time, overflow flag).
        self.inbox: queue.SimpleQueue[tuple[np.ndarray, float, bool]] = queue.SimpleQueue()
        self.in_clock = SampleClock(IN_STEP, walks=True)  # the input's samples by ADC time (worker thread)
        self.out_clock = SampleClock(OUT_STEP)  # the echo due with the output's samples, by DAC time − delay (callback)
        self.c = Counters(out_latency_ms=self.out_latency * 1000)
        self.ready = False
        self.last_in = self.last_out = 0.0  # capture clock of the latest callbacks, s
        self.window_slack = math.inf  # least slack since the settling window began, s
        self.speech: collections.deque[_Speech] = collections.deque()  # said, not yet playing
        self.playing: _Speech | None = None
        self.streams: list[Any] = []
        self.base = (0, 0, 0, 0)  # the clocks' re-anchor and step counts when the room said ready
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="room-worker", daemon=True)

    # ---- the PortAudio threads ------------------------------------------------------------------------------
    def _in_callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = _monotonic(time_info.inputBufferAdcTime, time_info.currentTime)
        self.last_in = time.monotonic()
        if t is None:
            t = self.last_in - frames / SR
        self.inbox.put((indata[:, 0].copy(), t, bool(status.input_overflow)))

    def _out_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        self.last_out = now
        t = _monotonic(time_info.outputBufferDacTime, time_info.currentTime)
        want = (now + self.out_latency if t is None else t) - self.delay  # when this block's echo entered
        c = self.c
        c.out_blocks += 1
        flagged = bool(status.output_underflow)
        c.underflows += flagged
        i = self.out_clock.block(want, frames, flagged)
        slack = (self.ring.end - (i + frames)) / SR
        self.window_slack = min(self.window_slack, slack)
        out, missing = self.ring.read(i, frames)
        if not self.ready:
            outdata[:, 0] = 0.0
            return
        c.missing += missing
        c.min_slack_ms = min(c.min_slack_ms, slack * 1000)
        filled = 0
        while filled < frames:
            sp = self.playing
            if sp is None:
                if not self.speech:
                    break
                sp = self.playing = self.speech.popleft()
                sp.t = (i + filled) / SR + self.delay  # on the output's count: its DAC time, without the jitter
                sp.started.set()
            n = min(frames - filled, len(sp.samples) - sp.pos)
            out[filled : filled + n] += sp.samples[sp.pos : sp.pos + n]
            sp.pos += n
            filled += n
            if sp.pos >= len(sp.samples):
                self.playing = None
        outdata[:, 0] = np.clip(out, -1.0, 1.0)

    # ---- the worker: loudspeaker → room → gain, into the ring at the block's ADC time ----------------------
    def _work(self) -> None:
        while not self.stopping:
            try:
                x, t, overflow = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            c = self.c
            c.in_blocks += 1
            c.overflows += overflow
            i = self.in_clock.block(t, len(x), overflow)
            self.ring.write(i, self.spec.echo_gain * self.conv.process(loudspeaker(x)))

    # ---- the main thread -------------------------------------------------------------------------------------
    def _open(self) -> None:
        import sounddevice as sd

        from voiceassist.audio.devices import resolve_device

        common: dict[str, Any] = {"samplerate": SR, "channels": 1, "dtype": "float32", "blocksize": self.block}
        ins = sd.InputStream(
            device=resolve_device(PCM, "input")["index"], latency=IN_LATENCY, callback=self._in_callback, **common
        )
        outs = sd.OutputStream(
            device=resolve_device(PCM, "output")["index"],
            latency=self.out_latency,
            callback=self._out_callback,
            **common,
        )
        self.streams = [ins, outs]
        self.last_in = self.last_out = time.monotonic()
        ins.start()
        outs.start()

    def _close_streams(self) -> None:
        for s in self.streams:
            try:
                s.abort()
                s.close()
            except Exception:  # noqa: BLE001  (a stream of a vanished server)
                pass
        self.streams = []

    def start(self) -> float:
        """Open the streams and wait until both keep time with the echo ready before it is due. Returns the
        smallest delay this room can honour (ms); raises RuntimeError (one line) if ``delay_ms`` is below it."""
        self.worker.start()
        best = -math.inf  # most slack seen over a settled window, s
        for _ in range(START_ATTEMPTS):
            self._open()
            began = time.monotonic()
            window = began
            self.window_slack = math.inf
            while time.monotonic() - began < START_TIMEOUT_S:
                time.sleep(0.05)
                now = time.monotonic()
                if max(self.in_clock.changed_at, self.out_clock.changed_at) > window:  # a side moved: start again
                    window, self.window_slack = now, math.inf
                settled = self.in_clock.settled and self.out_clock.settled
                if settled and now - window >= SETTLE_S and now - min(self.last_in, self.last_out) < 0.1:
                    best = max(best, self.window_slack)
                    if self.window_slack >= MARGIN_MS / 1000:
                        self.c = Counters(out_latency_ms=self.out_latency * 1000, block=self.block)
                        self.c.min_delay_ms = self.spec.delay_ms - self.window_slack * 1000 + MARGIN_MS
                        ic, oc = self.in_clock, self.out_clock
                        self.base = (ic.reanchors, oc.reanchors, ic.steps, oc.steps)
                        self.in_clock.max_dev = self.out_clock.max_dev = 0.0
                        self.ready = True
                        return self.c.min_delay_ms
                    window, self.window_slack = now, math.inf
            self._close_streams()
            if best > -math.inf:  # it kept time but the echo was late: the delay is too short, not a dead stream
                break
        if best == -math.inf:
            raise RuntimeError("the room's PortAudio streams never kept time (no callbacks, or stamps jumping)")
        raise RuntimeError(
            f"a room delay of {self.spec.delay_ms:g} ms is below what this room can honour "
            f"(~{self.spec.delay_ms - best * 1000 + MARGIN_MS:.0f} ms here: the streams' latencies + a block)"
        )

    def watch(self, last_turn: float) -> None:
        """Called by the main loop: reopen the streams if the callbacks stopped while this process ran."""
        now = time.monotonic()
        if now - last_turn < 0.5 and now - min(self.last_in, self.last_out) > STALL_S:
            print(
                f"room: no callbacks for {now - min(self.last_in, self.last_out):.1f} s: reopening the streams",
                file=sys.stderr,
                flush=True,
            )
            self._close_streams()
            self.c.restarts += 1
            self._open()

    def say(self, samples: np.ndarray) -> float:
        """Queue speech; returns the capture-clock time its first sample plays (waits for it)."""
        waiting = sum(len(s.samples) - s.pos for s in [*([self.playing] if self.playing else []), *self.speech])
        sp = _Speech(np.asarray(samples, np.float32).reshape(-1))
        self.speech.append(sp)
        if not sp.started.wait(timeout=2.0 + waiting / SR):
            raise RuntimeError("the room's output stream did not play the speech")
        return sp.t

    def counters(self) -> dict[str, float]:
        c = self.c
        c.in_reanchors = self.in_clock.reanchors - self.base[0]
        c.out_reanchors = self.out_clock.reanchors - self.base[1]
        c.in_steps, c.out_steps = self.in_clock.steps - self.base[2], self.out_clock.steps - self.base[3]
        c.max_in_dev_ms, c.max_out_dev_ms = self.in_clock.max_dev * 1000, self.out_clock.max_dev * 1000
        return asdict(c)

    def close(self) -> None:
        self.stopping = True
        self._close_streams()


def _main(argv: list[str]) -> int:
    """The room process: ``python -m support.room OUT_SINK MIC_SINK DELAY_MS RT60 DRR GAIN`` (the sinks are
    reached through PULSE_SOURCE=OUT_SINK.monitor and PULSE_SINK=MIC_SINK, set by :class:`Room`)."""
    import select

    import soundfile as sf

    try:
        os.nice(ROOM_NICE)  # before the streams: PortAudio's threads inherit it
    except OSError:
        pass
    room = LiveRoom(RoomSpec(float(argv[2]), float(argv[3]), float(argv[4]), float(argv[5])))
    try:
        min_ms = room.start()
    except RuntimeError as err:
        print(f"error {err}", flush=True)
        room.close()
        return 2
    print(f"ready {min_ms:.1f}", flush=True)
    last_turn = time.monotonic()
    try:
        while True:
            room.watch(last_turn)
            last_turn = time.monotonic()
            if not select.select([sys.stdin], [], [], 0.1)[0]:
                continue
            line = sys.stdin.readline()
            if not line:
                return 0
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "say":
                data, _sr = sf.read(arg, dtype="float32")
                try:
                    print(f"said {arg} {room.say(data):.6f}", flush=True)
                except RuntimeError as err:
                    print(f"error {err}", flush=True)
            elif cmd == "trace":  # the clocks' recent stamps and deviations, for diagnosing a moved path
                np.savez(arg, inp=np.array(room.in_clock.trace), out=np.array(room.out_clock.trace))
                print(f"traced {arg}", flush=True)
            elif cmd == "stats":
                print(json.dumps(room.counters()), flush=True)
            elif cmd == "quit":
                return 0
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    finally:
        room.close()


class Room:
    """The room process, started against a :class:`~support.pulse.PulseServer` that has both sinks. Raises
    RuntimeError if it cannot keep ``spec.delay_ms`` (below :attr:`min_delay_ms`) or its streams do not run."""

    def __init__(self, pulse: object, out_sink: str, mic_sink: str, spec: RoomSpec = DEFAULT_SPEC) -> None:
        env = dict(os.environ, **pulse.env)  # type: ignore[attr-defined]
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
        env["PULSE_SOURCE"], env["PULSE_SINK"] = f"{out_sink}.monitor", mic_sink  # libpulse's default devices
        args = [str(a) for a in (out_sink, mic_sink, spec.delay_ms, spec.rt60_s, spec.drr_db, spec.echo_gain)]
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.room", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ready "):
            self.close()
            raise RuntimeError(f"room process did not start: {line.removeprefix('error ') or 'no answer'}")
        self.min_delay_ms = float(line.split()[1])  # smallest delay the room could honour at its start, ms

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if not line or line.startswith("error"):
            raise RuntimeError(f"room: {line or 'no answer'} (to {command!r})")
        return line

    def say(self, wav: str | os.PathLike[str]) -> float:
        """Mix a 16 kHz mono WAV into the microphone; returns the capture-clock time its first sample plays."""
        return float(self._ask(f"say {wav}").split()[-1])

    def stats(self) -> dict[str, float]:
        """The room's :class:`Counters` since it said ready."""
        return dict(json.loads(self._ask("stats")))

    def trace(self, path: str | os.PathLike[str]) -> None:
        """Save the clocks' recent (stamp, stamp − count) pairs, s, to ``path`` (npz: ``inp``, ``out``)."""
        self._ask(f"trace {path}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=3)
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait(timeout=3)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
