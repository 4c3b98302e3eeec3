#!/usr/bin/env python3
"""Echo cancellation benchmark, on real devices in the test room; writes ``## Echo cancellation`` to BENCHMARKS.md.

1. ERLE in the room (private PulseAudio server; tests/support/room.py: the assistant's sink → loudspeaker soft
   clipping → delay → RT60 room → the microphone sink, the echo as loud as a user). The same espeak reply
   (~12 s, played twice) through, side by side in one run:
   - ours: the Player writes the far end (DAC-stamped), the MicrophoneSource's ADC-stamped blocks go through
     ``audio.echo.EchoCanceller`` (AEC3 + noise suppression, as ``echo_cancel = "auto"`` runs it);
   - PulseAudio's ``module-echo-cancel aec_method=webrtc`` between the same sinks (the player plays into its
     sink, the processed microphone is its source), with its noise suppression on and its gain control off.
   ERLE = 10·log10(energy of the raw microphone / energy after cancellation) over the frames where the echo
   is present (raw above −50 dBFS), after convergence (from 8 s on). Raw and processed are recorded at the same
   time (parec on the microphone sink's monitor). Target (#12): ≥ 30 dB; the best published peer figure: 24.8 dB.
2. Cost on one core: CPU seconds per second of audio of EchoCanceller (AEC3 + NS) + Segmenter (default engine)
   on 20 ms blocks of the recorded microphone, and pywebrtc-audio's AudioProcessor alone, side by side.
   Target: AEC + VAD ≤ 0.03. Beside it, the live far end those read from an array here: FarEndReference fed
   as the player feeds it (48 kHz stereo blocks: downmix, soxr, the ring) and read by 20 ms.
3. The callbacks: Player._callback with the far-end reference attached (a copy and an append more), and
   MicrophoneSource._callback, called directly on real blocks; target < 1 ms.

Usage: flock -s /work/coord/quiet.lock env PYTHONPATH=. .venv/bin/python scripts/bench_aec.py [--rooms 3] [--no-write]
       flock -x /work/coord/quiet.lock env PYTHONPATH=. .venv/bin/python scripts/bench_aec.py --cost-only  (short)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.audio_scenes import phrase  # noqa: E402
from support.pulse import PulseServer, start_player  # noqa: E402
from support.room import Room, RoomSpec  # noqa: E402
from support.speech import SR, silence  # noqa: E402

ROOMS = [  # (delay ms, RT60 s): across the range
    RoomSpec(delay_ms=40, rt60_s=0.3),
    RoomSpec(delay_ms=90, rt60_s=0.45),
    RoomSpec(delay_ms=150, rt60_s=0.6),
]
CONVERGED_FROM_S = 8.0


def reply() -> np.ndarray:
    parts = []
    for text in (
        "Here is the weather for today. It will be sunny in the morning, and warm.",
        "In the afternoon clouds come in from the west, with light rain by the evening.",
        "Tomorrow looks much the same, a little warmer, with a light wind from the south.",
    ):
        parts += [phrase(text, "en-gb"), silence(0.3)]
    x = np.concatenate(parts * 2)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


class Parec:
    """parec of a source at 16 kHz mono float, read on a thread (a full pipe would stall parec)."""

    def __init__(self, pulse: PulseServer, source: str) -> None:
        self.proc = subprocess.Popen(
            ["parec", f"--device={source}", "--format=float32le", "--rate=16000", "--channels=1", "--raw"],
            env=dict(os.environ, **pulse.env),
            stdout=subprocess.PIPE,
        )
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read(640):
            self.chunks.append(chunk)

    def stop(self) -> np.ndarray:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.thread.join(timeout=5)
        return np.frombuffer(b"".join(self.chunks), np.float32)


def erle(raw: np.ndarray, out: np.ndarray) -> float:
    """ERLE over the 10 ms frames from CONVERGED_FROM_S on where the raw echo is above −50 dBFS."""
    n = min(len(raw), len(out)) // 160 * 160
    a = raw[int(CONVERGED_FROM_S * SR) : n].reshape(-1, 160).astype(np.float64)
    b = out[int(CONVERGED_FROM_S * SR) : n].reshape(-1, 160).astype(np.float64)
    active = (a**2).mean(axis=1) > 1e-5
    return float(10 * np.log10((a[active] ** 2).sum() / ((b[active] ** 2).sum() + 1e-12)))


def run_ours(pulse: PulseServer, audio: np.ndarray) -> tuple[float, dict, np.ndarray]:
    import soxr

    from voiceassist.audio.echo import EchoCanceller
    from voiceassist.audio.farend import FarEndReference
    from voiceassist.audio.sources import MicrophoneSource
    from voiceassist.speech.player import Player, Segment

    player = Player(None)
    start_player(player)
    ref = FarEndReference()
    player.set_reference(ref)
    mic = MicrophoneSource(None, block_ms=20, stall_s=5.0)  # a loaded 2-core machine stalls the server
    mic.start()
    ec = EchoCanceller(ref, noise_suppression=True, mic_timed=lambda: mic.timing_reported, mic_echo=mic.observe_echo)
    raw, out = [], []
    player.enqueue(Segment.make(1, "reply", soxr.resample(audio, SR, player.rate).astype(np.float32)))
    deadline = time.monotonic() + len(audio) / SR + 0.5
    try:
        while time.monotonic() < deadline:
            block = mic.read(timeout=0.5)
            if block is not None:
                raw.append(block.samples)
                out.append(ec.process(block).samples)
    finally:
        mic.close()
        player.close()
    tl = mic._timeline  # what kind of moves the microphone's timeline made (each moves the echo for AEC3)
    print(f"microphone timeline: refined {tl.refine_moves}, jumps {tl.jumps}, drift steps {tl.drift_steps}", flush=True)
    raw_a = np.concatenate(raw)
    out_a = np.concatenate(out)[ec.latency :]
    return erle(raw_a, out_a), ec.state().as_dict(), raw_a


PULSE_FAIR = "extended_filter=1"  # webrtc-audio-processing 0.3's AEC for delays its latency estimate misses


def run_pulse(pulse: PulseServer, audio: np.ndarray, wav: Path, extra: str = "") -> float:
    import soundfile as sf

    module = pulse._run(
        "pactl",
        "load-module",
        "module-echo-cancel",
        "aec_method=webrtc",
        "source_master=va_mic.monitor",
        "sink_master=va_sink",
        "source_name=aec_src",
        "sink_name=aec_sink",
        # its AGC off (ours runs without one): otherwise its gain, not its cancellation, is what is measured
        f'aec_args="analog_gain_control=0 digital_gain_control=0 noise_suppression=1 {extra}"',
    ).strip()
    try:
        time.sleep(0.5)
        sf.write(str(wav), audio, SR)
        raw_rec, out_rec = Parec(pulse, "va_mic.monitor"), Parec(pulse, "aec_src")
        time.sleep(0.3)
        pulse.play(wav, sink="aec_sink")
        time.sleep(0.5)
        raw, out = raw_rec.stop(), out_rec.stop()
    finally:
        pulse._run("pactl", "unload-module", module, check=False)
    return erle(raw, out)


def cost(mic_audio: np.ndarray, far: np.ndarray) -> dict[str, float]:
    """CPU s per s of audio (process_time, one thread) of each piece on 20 ms blocks."""
    import soxr
    from pywebrtc_audio import AudioProcessor

    from voiceassist.audio.echo import EchoCanceller
    from voiceassist.audio.farend import ArrayReference, FarEndReference
    from voiceassist.config import VadConfig
    from voiceassist.events import AudioBlock
    from voiceassist.vad import Segmenter

    n = min(len(mic_audio), len(far))
    mic_audio, far = mic_audio[:n], far[:n]
    seconds = n / SR
    blocks = [AudioBlock(mic_audio[i : i + 320], i / SR) for i in range(0, n - 319, 320)]
    res = {}
    ap = AudioProcessor(SR, echo_cancellation=True, noise_suppression=True)
    t0 = time.process_time()
    for i in range(0, n - 319, 320):
        ap.process(mic_audio[i : i + 320], far[i : i + 320])
    res["pywebrtc AudioProcessor (AEC3+NS) alone"] = (time.process_time() - t0) / seconds
    ec = EchoCanceller(ArrayReference(far, 0.0), noise_suppression=True)
    seg = Segmenter(VadConfig())
    t0 = time.process_time()
    outs = [ec.process(b) for b in blocks]
    t1 = time.process_time()
    for b in outs:
        seg.set_echo_active(False)
        seg.feed(b)
    t2 = time.process_time()
    res["EchoCanceller (AEC3+NS, reference, delay, ERLE)"] = (t1 - t0) / seconds
    res[f"Segmenter, engine {VadConfig().engine}"] = (t2 - t1) / seconds
    res["echo cancellation + VAD"] = (t2 - t0) / seconds
    # The live far end (not in the figures above, which read an ArrayReference): what the player's callback
    # writes, 20 ms at 48 kHz stereo, and the capture thread's read of 20 ms of it (downmix, soxr, the ring).
    ref, far48 = FarEndReference(), np.repeat(soxr.resample(far, SR, 48000).astype(np.float32)[:, None], 2, axis=1)
    t0 = time.process_time()
    for i in range(0, len(far48) - 959, 960):
        ref.write(far48[i : i + 960], 48000, i / 48000)
        ref.read(i / 48000 - 0.1, 320)
    res["far end as the player feeds it (FarEndReference write + read, 48 kHz stereo)"] = (
        time.process_time() - t0
    ) / seconds
    return res


def callbacks() -> dict[str, str]:
    from voiceassist.audio.farend import FarEndReference
    from voiceassist.audio.sources import MicrophoneSource
    from voiceassist.speech.player import Player, Segment

    player = Player(None)
    player.rate, player.latency_s = 48000, 0.04
    player.set_reference(FarEndReference())
    player._stream = object()  # as if open: the callback itself is what is timed
    player.enqueue(Segment.make(1, "x", (0.3 * np.sin(np.arange(48000 * 60) / 7)).astype(np.float32)))
    out = np.zeros((960, 2), np.float32)
    ti = SimpleNamespace(outputBufferDacTime=10.04, currentTime=10.0)
    st = SimpleNamespace(output_underflow=False)
    us = []
    for _ in range(3000):
        t0 = time.perf_counter()
        player._callback(out, 960, ti, st)
        us.append((time.perf_counter() - t0) * 1e6)
    mic = MicrophoneSource(None)
    mic.rate = 48000.0
    block = np.zeros((960, 2), np.float32)
    ti2 = SimpleNamespace(inputBufferAdcTime=9.98, currentTime=10.0)
    st2 = SimpleNamespace(input_overflow=False)
    us2 = []
    for _ in range(3000):
        t0 = time.perf_counter()
        mic._callback(block, 960, ti2, st2)
        us2.append((time.perf_counter() - t0) * 1e6)
        if mic._queue.full():
            mic._queue.get_nowait()

    def fmt(v: list[float]) -> str:
        a = np.array(v)
        return f"median {np.median(a):.0f} µs, p99 {np.percentile(a, 99):.0f} µs, max {a.max():.0f} µs"

    return {"Player._callback + far-end write": fmt(us), "MicrophoneSource._callback": fmt(us2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rooms", type=int, default=len(ROOMS))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cost-only", action="store_true", help="only the CPU cost and the callbacks (for flock -x)")
    args = ap.parse_args()
    audio = reply()
    if args.cost_only:
        from support.echo_path import RoomSpec as _Spec
        from support.echo_path import echo_of

        mic = echo_of(audio, _Spec(delay_ms=60, rt60_s=0.45)) + np.random.default_rng(1).normal(0, 3e-4, len(audio))
        c = cost(mic.astype(np.float32), audio)
        cb = callbacks()
        for k, v in {**c, **cb}.items():
            print(f"| {k} | {v if isinstance(v, str) else f'{v:.4f}'} |")
        return 0
    rows = []
    last_raw = None
    for spec in ROOMS[: args.rooms]:
        pulse = PulseServer().start()
        try:
            import sounddevice as sd

            sd._terminate()
            sd._initialize()
            pulse.load_sink("va_mic")
            # Defaults before the room starts: changing them later moves the room's own streams too.
            pulse._run("pactl", "set-default-source", "va_mic.monitor")
            room = Room(pulse, "va_sink", "va_mic", spec)
            try:
                ours, state, last_raw = run_ours(pulse, audio)
                theirs = run_pulse(pulse, audio, pulse.runtime / "reply.wav")
                fair = run_pulse(pulse, audio, pulse.runtime / "reply.wav", PULSE_FAIR)
                # the room's own moves (re-anchors, steps) move the echo path the cancellers see
                moved = {k: v for k, v in room.stats().items() if k.endswith(("reanchors", "steps", "flows"))}
                print("room:", moved, flush=True)
            finally:
                room.close()
        finally:
            pulse.stop()
        rows.append((spec, ours, theirs, fair, state))
        print(spec, f"ours {ours:.1f} dB, module-echo-cancel {theirs:.1f} / {fair:.1f} dB", state, flush=True)
    c = cost(last_raw if last_raw is not None else audio, audio)
    cb = callbacks()
    for k, v in {**c, **cb}.items():
        print(k, v)
    lines = [
        "## Echo cancellation",
        "",
        "`flock -s /work/coord/quiet.lock env PYTHONPATH=. .venv/bin/python scripts/bench_aec.py` "
        f"({time.strftime('%Y-%m-%d')}, "
        "one run; the rooms side by side, ours then PulseAudio's in the same room). Real PortAudio devices on the "
        "private PulseAudio server; the room process between the assistant's sink and the microphone sink "
        "(tests/support/room.py: loudspeaker soft clipping, delay, RT60, the echo as loud as a user's speech); "
        f"an espeak reply of {len(audio) / SR:.0f} s; ERLE over the frames with echo from {CONVERGED_FROM_S:g} s "
        "on. Target ≥ 30 dB (the best published peer figure: 24.8 dB, GLaDOS with WebRTC AEC3).",
        "",
        "| room: delay, RT60 | ours: ERLE | PulseAudio module-echo-cancel (webrtc): ERLE | ... with "
        f"`{PULSE_FAIR}` | ours: measured delay, state |",
        "|---|---|---|---|---|",
    ]
    for spec, ours, theirs, fair, state in rows:
        lines.append(
            f"| {spec.delay_ms:g} ms, {spec.rt60_s:g} s | {ours:.1f} dB | {theirs:.1f} dB | {fair:.1f} dB | "
            f"{state['delay_ms']} ms (device-stamped; the room keeps its delay), {state['convergence']}, "
            f"timing {state['timing']} |"
        )
    lines += [
        "",
        "Cost, CPU seconds per second of audio on one core (process_time, the recorded microphone in 20 ms "
        "blocks; target: echo cancellation + VAD ≤ 0.03):",
        "",
        "| piece | CPU s / s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in c.items()]
    lines += ["", "Callbacks (3000 direct calls on 20 ms blocks at 48 kHz; target < 1 ms):", ""]
    lines += [f"- {k}: {v}" for k, v in cb.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        sys.path.insert(0, str(ROOT / "scripts"))
        from _sections import replace_section

        replace_section(ROOT / "BENCHMARKS.md", text, "## Echo cancellation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
