"""A room for the echo tests: a loudspeaker, a reverberant room and a user, on the private PulseAudio server.

The pure part (used offline too): :func:`impulse_response` (a direct path, then an exponentially decaying
diffuse tail with a given RT60 and direct-to-reverberant ratio), :func:`loudspeaker` (a small speaker's soft
clipping), :func:`echo_of` (the whole echo path on an array).

The live part: :class:`Room` runs ``python -m support.room`` as its own process. It reads the assistant's
output sink's monitor with parec (16 kHz mono float), passes it through the loudspeaker, the delay and the
impulse response (a streaming FFT convolution), scales it, adds the user's speech when told to, and plays the
sum into the microphone sink with pacat; the assistant records that sink's monitor as its microphone. Commands
on its stdin: ``say PATH`` (mix a 16 kHz mono WAV in from the next block); it answers on stdout
``said PATH T`` with T the capture-clock time (``time.monotonic``, shared by all processes) at which the
speech's first sample was written into the microphone sink.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16000
BLOCK = 160  # 10 ms: the room's processing block
PLAY_BUFFER_MS = 60  # what the room keeps queued towards the microphone sink (part of the echo's delay)
# A real room's echo path never changes; this one lengthens for good at each underrun of its playback queue
# (the room process starved on a loaded 2-core machine: measured jumps of 20–500 ms, which no canceller's stamps
# can see). Hence the raised priority (root in CI; ignored where not allowed). A deeper queue would push the
# device-stamped path (~400 ms here: PulseAudio's monitor and input latencies, parec, the convolver, this queue)
# past what AEC3 covers (500 ms).
ROOM_NICE = -10


@dataclass(frozen=True)
class RoomSpec:
    delay_ms: float = 60.0  # loudspeaker → microphone delay added by the room, ms (on top of the servers' own)
    rt60_s: float = 0.45  # reverberation time, s
    drr_db: float = 0.0  # direct-to-reverberant energy ratio, dB (0: a kiosk's speaker beside the microphone
    # in a hard room; a desk at arm's length is nearer −5)
    echo_gain: float = 1.0  # scale of the echo at the microphone (1.0: espeak at full level ≈ a user's speech)
    seed: int = 1


def impulse_response(rt60_s: float, drr_db: float, seed: int = 1) -> np.ndarray:
    """Unit-energy room response: a direct path at sample 0, then from 1 ms a diffuse tail that decays by
    60 dB in ``rt60_s`` (amplitude ∝ exp(−6.91·t/RT60)), ``drr_db`` below the direct path in energy."""
    rng = np.random.default_rng(seed)
    n = int(rt60_s * 1.2 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60_s)
    tail[: SR // 1000] = 0.0
    tail /= np.sqrt(np.sum(tail**2))
    h = tail * 10 ** (-drr_db / 20)
    h[0] += 1.0
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def loudspeaker(x: np.ndarray) -> np.ndarray:
    """A small speaker driven hard: soft clipping (tanh), linear below ~0.2, 0.5 at most."""
    return (np.tanh(2.0 * x) / 2.0).astype(np.float32)


def echo_of(far: np.ndarray, spec: RoomSpec) -> np.ndarray:
    """The echo of ``far`` (16 kHz) at the microphone: loudspeaker → delay → room → gain; same length."""
    y = np.convolve(loudspeaker(far), impulse_response(spec.rt60_s, spec.drr_db, spec.seed))[: len(far)]
    d = int(round(spec.delay_ms * SR / 1000))
    y = np.concatenate((np.zeros(d, np.float32), y))[: len(far)]
    return (spec.echo_gain * y).astype(np.float32)


class StreamingConvolver:
    """Overlap-add FFT convolution of a stream with a fixed response, ``BLOCK`` samples at a time."""

    def __init__(self, h: np.ndarray, block: int = 2048) -> None:
        self.h, self.block = h, block
        self.nfft = 1 << int(np.ceil(np.log2(len(h) + block)))
        self.H = np.fft.rfft(h, self.nfft)
        self.tail = np.zeros(self.nfft, np.float64)
        self.pending = np.zeros(0, np.float32)
        self.out = np.zeros(0, np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Returns ``len(x)`` samples, delayed by ``block`` (the convolver's own latency)."""
        self.pending = np.concatenate((self.pending, x))
        while len(self.pending) >= self.block:
            seg, self.pending = self.pending[: self.block], self.pending[self.block :]
            y = np.fft.irfft(np.fft.rfft(seg, self.nfft) * self.H, self.nfft)
            self.tail += y
            self.out = np.concatenate((self.out, self.tail[: self.block].astype(np.float32)))
            self.tail = np.concatenate((self.tail[self.block :], np.zeros(self.block)))
        if len(self.out) < len(x):  # priming: the first block's worth is silence
            self.out = np.concatenate((np.zeros(len(x) - len(self.out), np.float32), self.out))
        y, self.out = self.out[: len(x)], self.out[len(x) :]
        return y


def _main(argv: list[str]) -> int:
    """The room process: ``python -m support.room OUT_SINK MIC_SINK DELAY_MS RT60 DRR GAIN``."""
    import select

    import soundfile as sf

    out_sink, mic_sink = argv[0], argv[1]
    try:
        os.nice(ROOM_NICE)
    except OSError:
        pass
    spec = RoomSpec(float(argv[2]), float(argv[3]), float(argv[4]), float(argv[5]))
    conv_block = 640  # 40 ms: the convolver's latency is part of the room's delay (subtracted below)
    conv = StreamingConvolver(impulse_response(spec.rt60_s, spec.drr_db, spec.seed), conv_block)
    # The convolver's block and the playback buffer are part of the delay; the rest is a delay line.
    extra = max(0, int(round(spec.delay_ms * SR / 1000)) - conv_block - PLAY_BUFFER_MS * SR // 1000)
    delay_line = np.zeros(extra, np.float32)
    fmt = ["--format=float32le", f"--rate={SR}", "--channels=1", "--raw"]
    rec = subprocess.Popen(["parec", f"--device={out_sink}.monitor", *fmt, "--latency-msec=10"], stdout=subprocess.PIPE)
    # The playback side keeps PLAY_BUFFER_MS queued: on a loaded machine a late block then never underruns
    # (each underrun would lengthen the echo path for good, and a canceller cannot follow a path that jumps).
    play = subprocess.Popen(
        ["pacat", "--playback", f"--device={mic_sink}", *fmt, f"--latency-msec={PLAY_BUFFER_MS}"],
        stdin=subprocess.PIPE,
    )
    assert rec.stdout is not None and play.stdin is not None
    play.stdin.write(np.zeros(PLAY_BUFFER_MS * SR // 1000, np.float32).tobytes())
    user: list[np.ndarray] = []  # speech being mixed in
    print("ready", flush=True)
    try:
        while True:
            while select.select([sys.stdin], [], [], 0)[0]:
                line = sys.stdin.readline()
                if not line:
                    return 0
                cmd, _, arg = line.strip().partition(" ")
                if cmd == "say":
                    data, _sr = sf.read(arg, dtype="float32")
                    user.append(np.asarray(data, np.float32).reshape(-1))
                    print(f"said {arg} {time.monotonic():.6f}", flush=True)
                elif cmd == "quit":
                    return 0
            raw = rec.stdout.read(BLOCK * 4)
            if not raw:
                return 0
            x = np.frombuffer(raw, np.float32)
            y = conv.process(loudspeaker(x))
            if extra:
                delay_line = np.concatenate((delay_line, y))
                y, delay_line = delay_line[: len(x)], delay_line[len(x) :]
            y = spec.echo_gain * y
            if user:
                u = user[0][: len(y)]
                y[: len(u)] += u
                user[0] = user[0][len(u) :]
                if not len(user[0]):
                    user.pop(0)
            play.stdin.write(np.clip(y, -1, 1).astype(np.float32).tobytes())
            play.stdin.flush()
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    finally:
        rec.terminate()
        play.terminate()


class Room:
    """The room process, started against a :class:`~support.pulse.PulseServer` that has both sinks."""

    def __init__(self, pulse: object, out_sink: str, mic_sink: str, spec: RoomSpec = RoomSpec()) -> None:
        env = dict(os.environ, **pulse.env)  # type: ignore[attr-defined]
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
        args = [str(a) for a in (out_sink, mic_sink, spec.delay_ms, spec.rt60_s, spec.drr_db, spec.echo_gain)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.room", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"room process did not start: {line!r}")

    def say(self, wav: str | os.PathLike[str]) -> float:
        """Mix a 16 kHz mono WAV into the microphone from now on; returns when its first sample went in."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"say {wav}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline().split()[-1])

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
