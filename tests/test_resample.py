"""The streaming resampler: block edges invisible, no aliasing, downmix, integer input."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from voiceassist.audio.resample import TARGET_RATE, StreamingResampler, downmix


def stream(x: np.ndarray, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """Resample ``x`` in blocks of random sizes (1..4000 frames), then flush."""
    r = StreamingResampler(rate, channels)
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 4000))
        out.append(r.process(x[i : i + n]))
        i += n
    out.append(r.flush())
    return np.concatenate(out)


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_blocks_of_any_size_give_the_one_piece_result_aligned_in_time(rate):
    x = tone(440.0, rate)
    y = stream(x, rate, 1)
    assert y.dtype == np.float32
    assert abs(len(y) - TARGET_RATE) <= 1
    ref = x if rate == TARGET_RATE else soxr.resample(x, rate, TARGET_RATE, quality="HQ")
    np.testing.assert_allclose(y, ref[: len(y)], atol=1e-6)
    # aligned: output sample j is the tone at time j/16000 (no delay, no click), away from the two ends
    ideal = tone(440.0, TARGET_RATE)[: len(y)]
    assert np.max(np.abs(y[200:-200] - ideal[200:-200])) < 2e-3


def test_no_aliasing_from_above_the_new_nyquist():
    x = tone(12000.0, 48000)  # would fold to 4 kHz without a proper low-pass
    y = stream(x, 48000, 1)
    level_db = 20 * np.log10(np.sqrt(np.mean(y[400:-400] ** 2)) / np.sqrt(np.mean(x**2)))
    assert level_db < -60


def test_stereo_is_downmixed_by_the_mean():
    s = tone(300.0, 44100)
    same = stream(np.stack([s, s], axis=1), 44100, 2)
    np.testing.assert_allclose(same, stream(s, 44100, 1), atol=1e-6)
    opposite = stream(np.stack([s, -s], axis=1), 44100, 2)
    assert np.max(np.abs(opposite)) < 1e-6


@pytest.mark.parametrize("channels", [2, 3, 7, 8])
def test_the_downmix_of_float_channels_is_numpys_mean_to_the_bit(channels):
    # downmix sums 2–7 float32 channels itself (numpy's mean over a short axis is ~8x slower): the same sums in
    # the same order, so the same bits, in any memory layout.
    x = np.random.default_rng(channels).normal(0, 0.3, (4801, channels)).astype(np.float32)
    for block in (x, np.asfortranarray(x), x[::3]):
        got = downmix(block)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, block.mean(axis=1))


def test_integer_pcm_is_scaled_to_unit_range():
    x = np.array([[-32768], [0], [16384]], dtype=np.int16)
    np.testing.assert_allclose(downmix(x), [-1.0, 0.0, 0.5])


@pytest.mark.parametrize("channels", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.float64])
def test_every_pcm_type_and_channel_count_gives_the_float32_mean_of_its_unit_range_samples(dtype, channels):
    # Integer PCM is scaled by its full scale (unsigned PCM, 8-bit WAV, is centred on its mid-code first) before
    # the channels are mixed, whatever their count: the same float32 as the equivalent float32 block.
    rng = np.random.default_rng(channels)
    if dtype == np.float64:
        x = rng.uniform(-1.0, 1.0, (481, channels))
        unit = x.astype(np.float32)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, (481, channels), endpoint=True).astype(dtype)
        unsigned = info.min == 0
        scale = (int(info.max) + 1) // 2 if unsigned else -int(info.min)  # 2**15 for int16, 2**31 int32, 128 uint8
        mid = scale if unsigned else 0  # the code of silence: 128 for uint8
        unit = ((x.astype(np.float64) - mid) / scale).astype(np.float32)
    got = downmix(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, downmix(unit))
    assert np.max(np.abs(got)) <= 1.0


def test_bad_format_is_refused():
    with pytest.raises(ValueError):
        StreamingResampler(0, 1)
