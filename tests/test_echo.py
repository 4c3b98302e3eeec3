"""The echo canceller and its far-end reference, on espeak speech through a simulated room (real AEC3)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import soxr
from support.audio_scenes import phrase
from support.echo_path import RoomSpec, echo_of
from support.speech import SR, rms, silence

from voiceassist.audio.echo import EchoCanceller
from voiceassist.audio.farend import ArrayReference, FarEndReference
from voiceassist.audio.sources import MicrophoneSource
from voiceassist.config import VadConfig
from voiceassist.errors import ConfigError
from voiceassist.events import AudioBlock, Utterance
from voiceassist.vad import Segmenter

pytest.importorskip("pywebrtc_audio")

T0 = 5000.0  # capture-clock time of sample 0 in these scenes, s


def reply(seconds: float = 14.0) -> np.ndarray:
    """The assistant's voice: espeak sentences with short pauses, about ``seconds`` long, peak 0.5."""
    parts = []
    texts = [
        "Here is the weather for today. It will be sunny in the morning.",
        "In the afternoon clouds come in from the west, with light rain by the evening.",
        "Tomorrow looks much the same, a little warmer, with wind from the south.",
    ]
    while sum(len(p) for p in parts) < seconds * SR:
        for text in texts:
            parts += [phrase(text, "en-gb"), silence(0.25)]
    x = np.concatenate(parts)[: int(seconds * SR)]
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def feed_player(
    ref: FarEndReference, far16: np.ndarray, t0: float, timed: bool = True, guessed: tuple[int, float] = (0, 0.0)
) -> list:
    """Blocks as the player's callback would write them: 20 ms at 48 kHz stereo, stamped when heard.
    ``guessed`` (k, error s): the first k carry no DAC time, their stamps (the write time + a nominal latency)
    ``error`` s later than when they are heard; they are written by when they are heard, as a player does."""
    far48 = soxr.resample(far16, SR, 48000).astype(np.float32)
    k, error = guessed
    return [
        (np.repeat(far48[i : i + 960, None], 2, axis=1), 48000, t0 + i / 48000 + error, False, t0 + i / 48000)
        if i < k * 960
        else (np.repeat(far48[i : i + 960, None], 2, axis=1), 48000, t0 + i / 48000, timed)
        for i in range(0, len(far48) - 959, 960)
    ]


def run(
    ec: EchoCanceller, mic: np.ndarray, pending: list, ref: FarEndReference | None, block: int = 320, skew: float = 0.0
) -> np.ndarray:
    """Mic blocks through the canceller in real-time order: the player's blocks are written ~60 ms before
    they are heard (their stamp, or a 5th item: when heard), the mic's are processed once captured; ``skew``:
    error of the mic's stamps, s."""
    out = []
    ECHO_FLAGS.clear()
    CONVERGENCE.clear()
    for i in range(0, len(mic), block):
        t = T0 + i / SR
        while ref is not None and pending and pending[0][-1 if len(pending[0]) > 4 else 2] < t + block / SR + 0.06:
            ref.write(*pending.pop(0)[:4])
        out.append(ec.process(AudioBlock(mic[i : i + block], t + skew)).samples)
        ECHO_FLAGS.append(ec.echo_active)
        CONVERGENCE.append(ec.state().convergence)
    out.append(ec.flush().samples)
    return np.concatenate(out)


ECHO_FLAGS: list[bool] = []  # EchoCanceller.echo_active after each block of the last run()
CONVERGENCE: list[str] = []  # EchoCanceller.state().convergence after each block of the last run()


def erle(mic: np.ndarray, out: np.ndarray, from_s: float) -> float:
    a, b = mic[int(from_s * SR) :], out[int(from_s * SR) :]
    return 10 * np.log10(np.mean(a.astype(np.float64) ** 2) / (np.mean(b.astype(np.float64) ** 2) + 1e-12))


@pytest.mark.parametrize("delay_ms", [20, 80, 150, 400])
def test_echo_only_is_cancelled_by_30_db_after_convergence_and_the_delay_is_measured(delay_ms):
    far = reply()
    spec = RoomSpec(delay_ms=delay_ms, rt60_s=0.5)
    mic = echo_of(far, spec) + np.random.default_rng(3).normal(0, 3e-4, len(far)).astype(np.float32)
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)  # as the capture chain runs it (noise_suppression "auto")
    out = run(ec, mic, feed_player(ref, far, T0), ref)
    assert len(out) == len(mic) + ec.latency  # nothing dropped: WebRTC's delay comes out at the end
    out = out[ec.latency :]
    got = erle(mic, out, 5.0)
    state = ec.state()
    print(f"delay {delay_ms} ms: ERLE {got:.1f} dB, state {state}")
    assert got >= 30.0
    assert state.convergence == "converged" and state.timing == "device"
    assert state.delay_ms is not None and abs(state.delay_ms - delay_ms) <= 2.0
    assert state.realigned == 0  # inside AEC3's range (500 ms measured): moving the reference would only hurt


def segments(audio: np.ndarray, echo_flags: list[bool] | None = None) -> list[tuple[float, float]]:
    """(start, end) s of each utterance the live segmenter cuts from ``audio`` (speech extent: pre-roll/tail off);
    ``echo_flags``: the canceller's echo_active per 320-sample block, passed on as the capture chain does."""
    seg = Segmenter(VadConfig())
    utts = []
    for k, i in enumerate(range(0, len(audio), 320)):
        if echo_flags is not None:
            seg.set_echo_active(echo_flags[min(k, len(echo_flags) - 1)])
        utts += [e for e in seg.feed(AudioBlock(audio[i : i + 320], i / SR)) if isinstance(e, Utterance)]
    utts += [e for e in seg.flush() if isinstance(e, Utterance)]
    return [(u.start_t + 0.3, u.end_t) for u in utts]


def test_over_the_echo_only_the_users_speech_is_heard_and_it_survives_double_talk():
    far = reply()
    user = phrase("Stop, I would like to ask about something else instead.", "en-us")
    echo = echo_of(far, RoomSpec(delay_ms=60))
    at = int(8.0 * SR)  # after convergence, in the middle of the reply
    clean = 0.5 * user / np.max(np.abs(user))  # as loud as the echo's source
    mic = echo.copy()
    mic[at : at + len(user)] += clean
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)  # as the capture chain runs it (noise_suppression "auto")
    out = run(ec, mic, feed_player(ref, far, T0), ref)[ec.latency :]  # output j is input j − latency
    raw_segs, out_segs = segments(mic), segments(out, list(ECHO_FLAGS))
    truth = (at / SR, (at + len(user)) / SR)
    print(f"user speech {truth}; segments without AEC {raw_segs}; with AEC {out_segs}")
    assert sum(b - a for a, b in raw_segs) > 10.0  # without cancellation the assistant's own voice is a turn
    late = [s for s in out_segs if s[1] > 6.0]  # after convergence
    assert len(late) == 1
    start, end = late[0]
    assert abs(start - truth[0]) < 0.1 and end >= truth[1] - 0.15
    seg = slice(at, at + len(user))
    kept = rms(out[seg]) / rms(clean)
    assert 0.4 < kept < 1.5  # the user's level is kept (AEC3 backs off its suppression in double talk)
    # Converged before the user speaks, and still for 1.5 s of double talk: it lowers ERLE (the user is in the
    # output) without the canceller being worse, and full duplex must not fall back to half duplex before the
    # barge-in (barge_in_ms = 500 ms) has stopped the reply.
    k0, k1 = at // 320, at // 320 + round(1.5 * SR / 320)
    assert CONVERGENCE[k0] == "converged" and set(CONVERGENCE[k0:k1]) == {"converged"}, CONVERGENCE[k0:k1]


def test_a_device_without_latency_falls_back_to_the_cancellers_own_estimate_and_says_so_once():
    far = reply()
    spec = RoomSpec(delay_ms=40)
    mic = echo_of(far, spec)
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)  # as the capture chain runs it (noise_suppression "auto")
    # The player could not tell its latency: blocks are stamped at write time, 90 ms before they are heard.
    pending = feed_player(ref, far, T0 - 0.09, timed=False)
    out = run(ec, mic, pending, ref)[ec.latency :]
    notices = ec.notices()
    assert len(notices) == 1 and "reports no latency" in notices[0]
    assert ec.notices() == []  # said once
    assert ec.state().timing == "estimated"
    assert erle(mic, out, 6.0) >= 30.0


def test_stamps_far_off_are_re_aligned_from_the_measured_delay():
    far = reply()
    mic = echo_of(far, RoomSpec(delay_ms=30))
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)  # as the capture chain runs it (noise_suppression "auto")
    # The microphone's stamps say its audio came 200 ms before it really did (a device that overstates its
    # input latency): the echo then arrives before its reference.
    out = run(ec, mic, feed_player(ref, far, T0), ref, skew=-0.2)[ec.latency :]
    state = ec.state()
    print(state, ec.notices())
    assert state.realigned == 1
    assert erle(mic, out, 8.0) >= 30.0


def test_dac_times_after_a_guessed_first_stamp_do_not_move_the_reference_twice():
    # The CI flake of test_echo_devices: the player's first callback had no DAC time, its guessed stamp 90 ms
    # late. The far end's timeline refined that away after 1 s, under a delay measurement that had seen it; the
    # canceller then re-aligned on it too, read the reference past what was written, and cancelled nothing
    # (0.2 dB). Now DAC times re-anchor the run, and a placement move discards the measurement window.
    far = reply()
    mic = echo_of(far, RoomSpec(delay_ms=40))
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)
    out = run(ec, mic, feed_player(ref, far, T0, guessed=(1, 0.09)), ref)[ec.latency :]
    state = ec.state()
    got = erle(mic, out, 6.0)
    print(f"ERLE {got:.1f} dB; {state}; {ec.notices()}")
    assert state.realigned == 0 and state.convergence == "converged" and state.delay_ms == pytest.approx(40, abs=2)
    assert got >= 30.0


def test_a_re_alignment_the_far_end_then_outruns_is_pulled_back():
    # 3 s of guessed stamps 300 ms late: the canceller re-aligns to them, rightly. Then DAC times arrive and
    # place the far end where it really is; the re-aligned reference now reads 300 ms past what was written
    # (silence: before, it stayed there for good, 0.2 dB). It is pulled back and cancels again.
    far = reply(20.0)
    mic = echo_of(far, RoomSpec(delay_ms=40))
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)
    out = run(ec, mic, feed_player(ref, far, T0, guessed=(150, 0.3)), ref)[ec.latency :]
    state, notices = ec.state(), ec.notices()
    got = erle(mic, out, 9.0)
    print(f"ERLE {got:.1f} dB; {state}; {notices}")
    assert state.realigned == 2 and state.convergence == "converged" and state.delay_ms == pytest.approx(40, abs=2)
    assert sum("pulled back" in n for n in notices) == 1
    assert got >= 30.0


@pytest.mark.parametrize("block", [1, 157, 320, 1000])
def test_every_sample_comes_out_for_any_block_size_and_across_a_reset(block):
    rng = np.random.default_rng(0)
    mic = rng.normal(0, 0.05, SR * 2).astype(np.float32)
    ec = EchoCanceller(ArrayReference(np.zeros(0, np.float32), T0), noise_suppression=False)
    total, ts = 0, []
    for i in range(0, len(mic), block):
        if i >= SR and not ec.state().resets:
            ec.reset()
        b = ec.process(AudioBlock(mic[i : i + block], T0 + i / SR))
        if len(b.samples):
            ts.append((b.t, total))
        total += len(b.samples)
    total += len(ec.flush().samples)
    assert total == len(mic) + ec.latency
    for t, pos in ts:  # each output block is stamped with the capture time of its first sample
        assert abs(t - (T0 + (pos - ec.latency) / SR)) < 1e-6


@pytest.mark.parametrize("ns", [False, True])
def test_output_stamps_account_for_webrtcs_own_delay(ns):
    x = phrase("Testing the delay of the canceller with a whole sentence.")
    ec = EchoCanceller(ArrayReference(np.zeros(0, np.float32), T0), noise_suppression=ns)
    out = np.concatenate([ec.process(AudioBlock(x[i : i + 320], T0 + i / SR)).samples for i in range(0, len(x), 320)])
    out = np.concatenate((out, ec.flush().samples))
    lags = [float(np.dot(out[lag : lag + SR], x[:SR])) for lag in range(0, 400)]
    assert int(np.argmax(np.abs(lags))) == ec.latency


def test_reference_is_resampled_and_aligned_to_the_sample_and_silence_around_it():
    ref = FarEndReference()
    far = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32) * 0.3
    for item in feed_player(ref, far, T0):
        ref.write(*item)
    got = ref.read(T0 - 0.1, 2 * SR)
    lead = got[: int(0.1 * SR) - 10]
    assert np.all(lead == 0.0)  # before anything was played
    body = got[int(0.1 * SR) + 100 : int(1.0 * SR)]
    expect = far[100 : int(0.9 * SR)]
    assert np.max(np.abs(body - expect)) < 0.01
    assert np.all(got[int(1.2 * SR) :] == 0.0)  # after the end


def test_reads_across_the_rings_wrap_give_the_samples_written_exactly():
    # 16 kHz mono in: no resampling, so what comes out must be what went in, sample for sample, also where a
    # read spans the end and the start of the ring (4 s of history: a 2**16-sample ring, indexed by the absolute
    # position round(t * SR)).
    ref = FarEndReference()
    far = np.random.default_rng(7).uniform(-0.5, 0.5, 6 * SR).astype(np.float32)
    for i in range(0, len(far), 320):
        ref.write(far[i : i + 320], SR, T0 + i / SR)
    wrap = -round(T0 * SR) % 65536 + 65536  # far[wrap] lands at ring index 0 (in the last 4 s written)
    start = wrap - 1000  # the read wraps after 1000 samples
    np.testing.assert_array_equal(ref.read(T0 + start / SR, 3000), far[start : start + 3000])
    got = ref.read(T0 + 1.0, SR)  # older than the ring holds: silence, then the samples still there
    held = len(far) - 65536 - SR
    assert np.all(got[:held] == 0.0)
    np.testing.assert_array_equal(got[held:], far[len(far) - 65536 : 2 * SR])


def test_an_output_underrun_steps_the_reference_at_once_and_one_late_stamp_does_not():
    ref = FarEndReference()
    tt = np.arange(3 * SR) / SR
    far = (0.3 * np.sin(2 * np.pi * (200 * tt + 300 * tt**2))).astype(np.float32)  # a sweep: no shift looks alike
    items = feed_player(ref, far, T0)
    k = len(items) // 2  # an underrun here: 30 ms of silence went out, everything after is heard 30 ms later
    items = [
        (b, r, t + (0.03 if i >= k else 0.0) + (0.015 if i == k // 2 else 0.0), tm)
        for i, (b, r, t, tm) in enumerate(items)
    ]
    for item in items:  # block k // 2 carries one stamp 15 ms late (a jittery DAC time), not a real move
        ref.write(*item)
    split = k * 960 // 3  # the first 16 kHz sample of block k
    before = ref.read(T0 + 0.2, int(0.5 * SR))
    assert np.max(np.abs(before - far[int(0.2 * SR) : int(0.7 * SR)])) < 0.02  # the late stamp moved nothing
    after = ref.read(T0 + split / SR + 0.03 + 0.1, SR // 2)  # from 0.1 s after the step
    expect = far[split + SR // 10 : split + SR // 10 + SR // 2]
    assert np.max(np.abs(after - expect)) < 0.02 and ref.jumps == 1 and ref.reanchors == 1


def test_the_players_stamp_is_its_dac_time_however_late_the_callback_runs():
    import time
    from types import SimpleNamespace

    from voiceassist.speech.player import Player

    class Catch:
        def write(self, samples, rate, t, timed=True):
            self.t = t

    player = Player(None)
    player.rate, player.latency_s, player._stream = 48000, 0.04, object()
    ref = Catch()
    player.set_reference(ref)
    wall = time.time()
    # PortAudio read its (wall) clock 80 ms before this callback got to run; the block is heard 40 ms after that.
    info = SimpleNamespace(currentTime=wall - 0.08, outputBufferDacTime=wall - 0.04)
    mono = time.monotonic()
    player._callback(np.zeros((960, 1), np.float32), 960, info, SimpleNamespace(output_underflow=False))
    assert abs(ref.t - (mono - 0.04)) < 0.005, ref.t - mono  # not mono + 0.04, as `now + ahead` had it


def test_the_writer_never_blocks_and_loses_nothing_while_the_reader_reads():
    ref = FarEndReference()
    n_blocks = 1500
    block = np.ones(320, np.float32) * 0.25

    def writer() -> None:
        for k in range(n_blocks):
            ref.write(block, SR, T0 + k * 0.02)

    th = threading.Thread(target=writer)
    th.start()
    while th.is_alive():
        ref.read(T0, 320)
    th.join()
    got = ref.read(T0 + (n_blocks - 150) * 0.02, 150 * 320)  # the last 3 s
    assert np.all(got == 0.25)


def test_array_reference_shorter_than_the_recording_is_silence_after_its_end():
    ref = ArrayReference(np.ones(SR, np.float32), T0 + 0.5)
    got = ref.read(T0, 3 * SR)
    assert np.all(got[: SR // 2] == 0) and np.all(got[SR // 2 : SR + SR // 2] == 1) and np.all(got[-SR:] == 0)


def test_missing_pywebrtc_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    with pytest.raises(ConfigError) as err:
        EchoCanceller(None)
    assert "voiceassist[aec]" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("echo_cancel", "tts", "aec", "ns"),
    [("auto", True, True, True), ("auto", False, False, False), ("off", True, False, False), ("on", False, True, True)],
)
def test_config_decides_the_chain(echo_cancel, tts, aec, ns):
    from voiceassist.audio.echo import NS_LATENCY, from_config
    from voiceassist.config import AudioConfig

    ref = FarEndReference()
    ec, notices = from_config(AudioConfig(echo_cancel=echo_cancel), speech_output=tts, reference=ref)
    assert notices == []
    if not (aec or ns):
        assert ec is None
        return
    assert ec is not None and (ec.reference is ref) == aec
    assert (ec.latency >= NS_LATENCY) == ns  # noise suppression "auto": on exactly with echo cancellation


def test_config_without_pywebrtc(monkeypatch):
    from voiceassist.audio.echo import from_config
    from voiceassist.config import AudioConfig

    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    ec, notices = from_config(AudioConfig(echo_cancel="auto"), speech_output=True, reference=FarEndReference())
    assert ec is None and len(notices) == 1 and "voiceassist[aec]" in notices[0]
    with pytest.raises(ConfigError) as err:
        from_config(AudioConfig(echo_cancel="on"), speech_output=True, reference=FarEndReference())
    assert "voiceassist[aec]" in str(err.value)


@pytest.mark.parametrize("clocks", ["one", "two"])
def test_the_reference_moves_slowly_only_when_the_echo_moves_too(clocks):
    # "one": the room's case. The player's DAC stamps walk 12 ms from its sample count over 40 s while the echo
    # stays put (one clock): the reference must not follow them. "two": a DAC 150 ppm slower than the ADC, the
    # stamps honest; the echo really drifts (9 ms over the minute), and the reference must follow it.
    far = reply(60.0)
    spec = RoomSpec(delay_ms=80, rt60_s=0.4)
    drift = 150e-6 if clocks == "two" else 0.0
    heard = soxr.resample(far, SR, SR * (1 + drift)).astype(np.float32) if drift else far
    mic = echo_of(heard, spec)[: len(far)] + np.random.default_rng(4).normal(0, 3e-4, len(far)).astype(np.float32)
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True)
    items = []
    for b, r, t, tm in feed_player(ref, far, T0):
        since = t - T0
        off = since * drift if drift else 0.012 * min(since / 40, 1.0)
        items.append((b, r, t + off, tm))
    out = run(ec, mic, items, ref)[ec.latency :]
    got = erle(mic[: 40 * SR], out[: 40 * SR], 20.0), erle(mic, out, 45.0)
    tl = ref._timeline
    print(
        f"{clocks}: ERLE 20-40 s {got[0]:.1f} dB, 45-60 s {got[1]:.1f} dB; drift steps {tl.drift_steps}, "
        f"jumps {tl.jumps}, held {tl.held}, {ec.state()}"
    )
    if clocks == "one":
        assert tl.drift_steps == 0 and tl.jumps == 0 and tl.held > 50
    else:
        assert tl.drift_steps > 30 and tl.jumps == 0 and tl.held == 0
    assert min(got) >= 30.0


@pytest.mark.parametrize("clocks", ["one", "two"])
def test_the_microphone_moves_slowly_only_when_the_echo_moves_too(clocks):
    # "one": the microphone's ADC stamps walk 12 ms from its sample count over 40 s while the echo stays put (one
    # clock; an 8-min room run followed such a walk with 370 drift steps): its timeline must hold. "two": an ADC
    # 150 ppm slower than the DAC, the stamps honest; the echo really drifts and the microphone must follow it.
    # The microphone's timeline is the real MicrophoneSource's, driven as its read() drives it (no stream here).
    far = reply(60.0)
    spec = RoomSpec(delay_ms=80, rt60_s=0.4)
    drift = 150e-6 if clocks == "two" else 0.0
    echo = echo_of(far, spec)[: len(far)]
    mic = soxr.resample(echo, SR, SR * (1 - drift)).astype(np.float32) if drift else echo
    mic = mic[: len(far) - SR] + np.random.default_rng(5).normal(0, 3e-4, len(far) - SR).astype(np.float32)
    src = MicrophoneSource(None)
    ref = FarEndReference()
    ec = EchoCanceller(ref, noise_suppression=True, mic_echo=src.observe_echo)
    pending, out, offset, block = feed_player(ref, far, T0), [], None, 320
    for i in range(0, len(mic) - block + 1, block):
        true = T0 + i / (SR * (1 - drift))  # when sample i was captured, s
        stamp = true + (0.012 * min((i / SR) / 40, 1.0) if not drift else 0.0)
        measured = stamp - i / SR  # capture clock − stream position, as MicrophoneSource.read measures it
        if offset is None:
            offset = measured
            src._timeline.restart()
        else:
            offset += src._timeline.update(measured - offset, block / SR)
        while pending and pending[0][2] < true + block / SR + 0.06:
            ref.write(*pending.pop(0)[:4])
        out.append(ec.process(AudioBlock(mic[i : i + block], offset + i / SR)).samples)
    got_out = np.concatenate(out)[ec.latency :]
    n = len(got_out)
    got = erle(mic[: 40 * SR], got_out[: 40 * SR], 20.0), erle(mic[:n], got_out, 45.0)
    tl = src._timeline
    print(
        f"{clocks}: ERLE 20-40 s {got[0]:.1f} dB, 45-59 s {got[1]:.1f} dB; microphone drift steps "
        f"{tl.drift_steps}, jumps {tl.jumps}, held {tl.held}; far end {ref._timeline.drift_steps} steps; {ec.state()}"
    )
    if clocks == "one":
        assert tl.drift_steps == 0 and tl.jumps == 0 and tl.held > 50
    else:
        assert tl.drift_steps > 30 and tl.jumps == 0
    assert min(got) >= 30.0
