"""audio/timeline.py: a stream's timeline moves for jumps and real clock drift, not for its stamps' wander."""

from __future__ import annotations

import numpy as np
import pytest

from voiceassist.audio.timeline import DRIFT_S, StampTimeline

RATE = 16000
BLOCK_S = 0.02


def follow(
    stamps_off: np.ndarray, confirm: int = 2, echo: np.ndarray | None = None, seed: int = 0
) -> tuple[StampTimeline, np.ndarray]:
    """Feed blocks whose stamps are ``stamps_off`` (s) off the true sample count; returns the timeline and, per
    block, how far the timeline then is from the truth (s). ``echo``: per block, how far the stream's sound is
    truly heard from its sample count (s; NaN: nothing heard), measured once a second as the canceller does
    (GCC-PHAT: 0.25 ms steps, ±0.35 ms, a false peak now and then)."""
    tl = StampTimeline(RATE, confirm)
    rng = np.random.default_rng(seed)
    pos, err = 0.0, []
    for k, off in enumerate(stamps_off):
        pos += tl.update(off - pos, BLOCK_S)
        err.append(pos)
        if echo is not None and k % 50 == 49 and not np.isnan(echo[k]):
            lag = ECHO_LAG + echo[k] - pos + rng.uniform(-0.00035, 0.00035)
            if rng.random() < 0.05:
                lag += rng.uniform(-0.5, 0.5)  # one of espeak's false peaks
            tl.observe_echo(round(lag * 4000) / 4000)
    return tl, np.array(err)


ECHO_LAG = 0.080  # s: the room's echo path behind the sound leaving the speaker


@pytest.mark.parametrize(("confirm", "jitter"), [(2, 0.001), (10, 0.003)])  # the far end's DAC, the mic's ADC
def test_stamp_jitter_and_a_wander_of_some_ms_move_nothing_after_the_refinement(confirm, jitter):
    rng = np.random.default_rng(3)
    n = int(60 / BLOCK_S)
    t = np.arange(n) * BLOCK_S
    # what the null-sink room showed: ms of jitter (a few stamps 15 ms late), the stamps 4 ms away from the
    # sample count over 4 s and back over 20 s, all on one clock (the echo never moved)
    wander = -0.004 * np.clip(t / 4, 0, 1) * np.clip((24 - t) / 20, 0, 1)
    off = 0.002 + wander + rng.uniform(-jitter, jitter, n)
    off[::97] += 0.015
    tl, err = follow(off, confirm)
    print("moves", tl.moves, "jumps", tl.jumps, "drift", tl.drift_steps, "final error ms", err[-1] * 1000)
    assert tl.refine_moved and tl.jumps == 0 and tl.drift_steps == 0
    assert abs(err[-1] - 0.002) < 0.001  # refined onto the stamps' median, then left there


def test_a_real_drift_is_followed_one_sample_at_a_time():
    n = int(120 / BLOCK_S)
    off = 150e-6 * np.arange(n) * BLOCK_S  # two sound cards 150 ppm apart: 18 ms in 2 minutes
    tl, err = follow(off)
    lag = off - err
    print("drift steps", tl.drift_steps, "largest lag behind the stamps ms", lag.max() * 1000)
    assert tl.jumps == 0 and tl.drift_steps > 150
    assert np.all(np.abs(np.diff(err)) <= 1 / RATE + 1e-12)  # never more than a sample at once
    assert lag.max() < DRIFT_S + 0.002  # kept within DRIFT_S (+ the median's lag) of the stamps


def test_a_confirmed_jump_steps_at_once_and_a_short_burst_does_not():
    n = 300
    off = np.zeros(n)
    off[100:104] = 0.012  # four late stamps (a loaded machine): not confirmed by ten
    off[200:] = 0.030  # 30 ms of samples lost: every stamp after it agrees
    tl, err = follow(off, confirm=10)
    assert tl.jumps == 1 and abs(err[-1] - 0.030) < 1 / RATE and np.all(err[:200] == err[99])
    assert np.argmax(err > 0.02) == 209  # on the tenth agreeing block


def test_a_restart_anchors_a_new_run_and_keeps_counting_the_moves():
    # the far end and the microphone restart their timeline at each re-anchor: the new run refines its own anchor
    # (its first stamps may be late too) and its jumps start from an empty window, while moves counts every run's
    tl, _ = follow(np.r_[np.full(60, 0.002), np.full(40, 0.030)], confirm=2)  # refined 2 ms, then a 28 ms jump
    assert (tl.refine_moves, tl.jumps, tl.moves) == (1, 1, 2)
    tl.update(0.020, BLOCK_S)  # one late stamp: a jump pending, not yet confirmed
    tl.restart(jumps=False)  # stamps that are guesses from now on
    assert not tl.refined and not tl.refine_moved and not tl.jumps_allowed
    pos, shifts = 0.0, []
    for _ in range(60):
        shift = tl.update(0.001 - pos, BLOCK_S)  # the new run's stamps are 1 ms off its anchor
        pos += shift
        shifts.append(shift)
    assert shifts[0] == 0.0 and abs(pos - 0.001) < 1 / RATE  # the pending jump was dropped; refined once, anew
    assert (tl.refine_moves, tl.jumps, tl.moves) == (2, 1, 3)
    assert tl.update(0.050, BLOCK_S) == 0.0 and tl.update(0.050, BLOCK_S) == 0.0  # no jumps in this run


def walk(n: int) -> np.ndarray:
    """What the player's DAC stamps did in the room over 3 minutes of replies (one clock, the echo steady):
    a walk to 19 ms from the sample count, with 1 ms of jitter."""
    t = np.arange(n) * BLOCK_S
    rng = np.random.default_rng(5)
    return 0.019 * np.clip(t / 150, 0, 1) + rng.uniform(-0.001, 0.001, n)


def test_stamps_that_walk_while_the_echo_holds_still_move_nothing():
    n = int(180 / BLOCK_S)
    tl, err = follow(walk(n), echo=np.zeros(n))
    print("moves", tl.moves, "jumps", tl.jumps, "drift", tl.drift_steps, "held", tl.held, "err ms", err[-1] * 1000)
    # the old rule followed the stamps: 216 one-sample steps moved the reference against a steady echo
    assert tl.drift_steps == 0 and tl.jumps == 0 and tl.held > 100
    assert abs(err[-1]) < 0.001  # where the refinement put it


def test_without_an_echo_measured_the_stamps_decide_alone():
    n = int(180 / BLOCK_S)
    tl, err = follow(walk(n))  # a headset: nothing of the stream is heard by the microphone
    print("drift", tl.drift_steps, "jumps", tl.jumps, "err ms", err[-1] * 1000)
    assert tl.drift_steps > 150 and tl.jumps == 0 and tl.held == 0


def test_a_real_drift_that_the_echo_shows_is_followed():
    n = int(120 / BLOCK_S)
    off = 150e-6 * np.arange(n) * BLOCK_S  # two sound cards 150 ppm apart: the echo drifts with the stamps
    tl, err = follow(off, echo=off)
    lag = off - err
    print("drift steps", tl.drift_steps, "held", tl.held, "largest lag behind the echo ms", lag.max() * 1000)
    assert tl.jumps == 0 and tl.drift_steps > 150
    assert lag.max() < DRIFT_S + 0.002


def test_a_drift_through_a_long_silence_is_caught_up_once_the_echo_is_heard_again():
    # 150 ppm: 20 s of reply, 5 minutes of silence (45 ms of drift, nothing heard to confirm it), a reply again
    n = int(340 / BLOCK_S)
    off = 150e-6 * np.arange(n) * BLOCK_S
    heard = off.copy()
    heard[int(20 / BLOCK_S) : int(320 / BLOCK_S)] = np.nan
    tl, err = follow(off, echo=heard)
    lag = off - err
    back = int(320 / BLOCK_S)
    caught = back + int(np.argmax(np.abs(lag[back:]) < DRIFT_S + 0.001))
    print(
        "held",
        tl.held,
        "jumps",
        tl.jumps,
        "lag at the reply ms",
        lag[back] * 1000,
        "caught up after s",
        (caught - back) * BLOCK_S,
    )
    assert lag[back] > 0.030  # held through the silence: the stamps alone were not enough
    assert tl.jumps == 1 and (caught - back) * BLOCK_S < 4.0  # stepped once the echo showed it
    assert np.abs(lag[caught:]).max() < DRIFT_S + 0.002
