"""The test room (tests/support/room.py) keeps a fixed echo path, as a real room does.

The echo path the assistant sees runs from its player's DAC time to its microphone's ADC time; the room must
make it exactly ``RoomSpec.delay_ms`` and keep it there, also after the room process itself stalls (its
streams then underrun and back up; a room that passed blocks along lengthened the path for good each time).
Measured here with the real Player (a far-end reference stamped from its DAC times) and the real
MicrophoneSource (ADC-stamped blocks): noise bursts into the assistant's sink, their echo found in the
microphone by cross-correlation, burst by burst (tests/support/room_probe.py, which scripts/trace_room.py runs too).
"""

from __future__ import annotations

import numpy as np
import pytest
from support.echo_path import PartitionedConvolver, impulse_response
from support.room import RoomSpec
from support.room_probe import BURST_S, SR, stall_run
from support.sample_clock import IN_STEP, OUT_STEP, SampleClock

TOLERANCE_MS = 3.0


def test_the_partitioned_convolver_is_the_convolution():
    h = impulse_response(0.45, 0.0)
    x = np.random.default_rng(0).standard_normal(80 * 300).astype(np.float32)
    conv = PartitionedConvolver(h, 80)
    y = np.concatenate([conv.process(x[i : i + 160]) for i in range(0, len(x), 160)])
    assert np.max(np.abs(y - np.convolve(x, h)[: len(x)])) < 1e-4


def clock_run(
    step: tuple[float, float, float], offsets_ms: list[float], walks: bool = False, frames: int = 80
) -> tuple[SampleClock, list[int]]:
    """A SampleClock fed blocks whose stamps are the true time + offsets_ms[k] (a real clock at 1000 s); returns
    it and, per block, its count's error against the truth, samples."""
    clock, errors = SampleClock(step, walks), []
    for k, off in enumerate(offsets_ms):
        true = 1000 * SR + k * frames  # the block's true ring index
        errors.append(clock.block((true + off * SR / 1000) / SR, frames, False) - true)
    return clock, errors


def test_the_output_clock_follows_samples_the_server_inserted_within_20_ms_and_ignores_one_late_stamp():
    # 0.5 s settled; one stamp 6 ms late; then the server inserts 6.2 ms (every later stamp that much off).
    offsets = [0.0] * 100 + [6.0] + [0.0] * 100 + [6.2] * 200
    clock, errors = clock_run(OUT_STEP, offsets)
    assert errors[:201] == [0] * 201 and clock.steps == 1, (errors[:201], clock.steps)  # the late stamp moved nothing
    followed = next(k for k in range(201, 401) if errors[k] == round(6.2 * SR / 1000))
    assert (followed - 201) * 80 / SR <= 0.025, followed  # within 20 ms (+ the block that completes them)
    assert set(errors[followed:]) == {round(6.2 * SR / 1000)}, errors[followed:]


def test_the_input_clock_ignores_a_backlog_and_a_stamp_walk_and_follows_a_persistent_deviation_after_2_s():
    # After a stall the backlog's stamps sit 4.5 ms early for 150 ms, then come back (the echo did not move).
    clock, errors = clock_run(IN_STEP, [0.0] * 100 + [-4.5] * 30 + [0.0] * 100, walks=True)
    assert set(errors) == {0} and clock.steps == 0, errors
    # The stamps walk 4 ms away over 5 s and back (the server's latency estimate; the samples keep time).
    walk = [4.0 * min(k, 1000 - k) / 500 for k in range(1000)]
    clock, errors = clock_run(IN_STEP, [0.0] * 100 + walk, walks=True)
    assert set(errors) == {0} and clock.steps == 0, (clock.steps, sorted(set(errors)))
    clock, errors = clock_run(IN_STEP, [0.0] * 100 + [-6.0] * 500, walks=True)  # samples really dropped: followed
    assert clock.steps == 1 and errors[-1] == round(-6.0 * SR / 1000), (clock.steps, errors[-1])
    assert errors.index(errors[-1]) * 80 / SR - 100 * 80 / SR <= 2.01, errors


def test_the_input_clock_ignores_a_slow_walk_past_reanchor_s_and_re_anchors_on_a_jump():
    # The stamps walk 30 ms away over 2 min (the server's latency estimate; the samples keep time), one in 50 of
    # them 4 ms early (the scatter that keeps the 2 s rule from following a walk), then jump 25 ms at once.
    n = 24000  # blocks of 5 ms
    walk = [30.0 * k / n - (4.0 if k % 50 == 7 else 0.0) for k in range(n)]
    jump = [55.0 - (4.0 if k % 50 == 7 else 0.0) for k in range(400)]
    clock, errors = clock_run(IN_STEP, [0.0] * 100 + walk + jump, walks=True)
    walked = errors[: 100 + n]
    assert set(walked) == {0}, (clock.reanchors, clock.steps, sorted(set(walked)))
    # anchored at the first block and at the jump, and then counting from where the stamps jumped to
    assert clock.reanchors == 2 and errors[-1] == round(55.0 * SR / 1000), (clock.reanchors, errors[-1])


@pytest.mark.pulse
def test_the_room_echo_arrives_after_its_delay_and_stays_there_across_a_stall_of_the_room(pulse):
    spec = RoomSpec(delay_ms=60, rt60_s=0.3)
    run = stall_run(pulse, spec)
    found, stall_at, stats = run.found, run.stall_at, run.room
    seen = [(round(t - stall_at, 2), round(d, 2), round(p)) for t, d, p in found]
    print(f"bursts (s from the stall, echo delay ms, peak/median): {seen}; room {stats}; mic {run.mic}")
    assert len(found) >= 18, seen
    # Bursts whose echo overlaps the stall (the room played nothing then) are not measured.
    measured = [(t, d) for t, d, p in found if not stall_at - BURST_S - 0.15 < t < stall_at + 0.35]
    before = [d for t, d in measured if t < stall_at]
    after = [d for t, d in measured if t > stall_at]
    assert len(before) >= 6 and len(after) >= 8, seen
    assert all(abs(d - spec.delay_ms) <= TOLERANCE_MS for d in before + after), seen
    assert max(before + after) - min(before + after) <= 2.0, seen  # one path, before and after the stall
    assert stats["out_reanchors"] + stats["in_reanchors"] >= 1, stats  # the stall was seen, and undone
