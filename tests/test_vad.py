"""The segmenter on real espeak-ng speech whose truth is known: counts, onsets, ends, pauses, noise, the cap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from support.audio_scenes import Scene, build, noise, phrase
from support.speech import SR, mix_at_snr, rms

from voiceassist.config import VadConfig
from voiceassist.events import AudioBlock, SpeechPaused, SpeechResumed, SpeechStarted, Utterance
from voiceassist.vad import Segmenter, VadState

CFG = VadConfig()
T0 = 1000.0  # capture-clock time of the first sample in these tests, s
ONSET_SLACK = 0.05  # s: a segment may start at most this late (the "speech start + 50 ms")
PHRASES = (
    "Turn on the kitchen lights, please.",
    "What is the weather like tomorrow?",
    "Remind me to call my sister at six.",
)


def run(audio: np.ndarray, cfg: VadConfig = CFG, block: int = 320, t0: float = T0) -> list:
    seg = Segmenter(cfg)
    events: list = []
    for i in range(0, len(audio), block):
        events += seg.feed(AudioBlock(audio[i : i + block], t0 + i / SR))
    events += seg.flush()
    assert seg.state is VadState.QUIET
    return events


def spans(events: list, t0: float = T0) -> list[tuple[float, float]]:
    """(start, end of audio) of each utterance on the scene's timeline, s."""
    return [(u.start_t - t0, u.start_t - t0 + sum(u.durations)) for u in events if isinstance(u, Utterance)]


def check_against_truth(events: list, scene: Scene, cfg: VadConfig = CFG) -> None:
    found = spans(events)
    assert len(found) == len(scene.truth), f"found {found}, truth {scene.truth}"
    for (start, end), (s0, s1) in zip(found, scene.truth):
        assert start <= s0 + ONSET_SLACK, f"onset clipped: segment {start:.3f} s, speech {s0:.3f} s"
        assert start >= s0 - 1.2, f"segment starts far too early: {start:.3f} s, speech {s0:.3f} s"
        assert s1 - 0.1 <= end <= s1 + cfg.hangover_ms / 1000, f"end {end:.3f} s, speech end {s1:.3f} s"


def three_utterances(voice: str) -> Scene:
    # The second utterance has a 300 ms pause inside: shorter than the hang-over, so it must stay one.
    first, second = PHRASES[1].split(" like ")
    return build(
        [
            1.0,
            phrase(PHRASES[0], voice),
            1.5,
            phrase(first, voice),
            0.3,
            phrase("like " + second, voice),
            1.4,
            phrase(PHRASES[2], voice),
            1.0,
        ],
        group_gap_s=0.5,
    )


@pytest.mark.parametrize("voice", ["en-us", "en-gb", "en-us+f3", "en-gb-scotland"])
def test_utterances_onsets_and_ends_in_silence(voice):
    scene = three_utterances(voice)
    events = run(scene.audio)
    check_against_truth(events, scene)
    for u in events:
        if isinstance(u, Utterance):
            assert u.reasons == ("silence",)
            assert all(c.dtype == np.float32 for c in u.chunks)


def test_speech_from_the_very_first_sample_is_found():
    scene = build([phrase(PHRASES[1], "en-gb"), 1.0, phrase(PHRASES[2], "en-gb"), 1.0])
    check_against_truth(run(scene.audio), scene)


def test_event_order_and_timestamps_follow_the_capture_clock():
    scene = three_utterances("en-us")
    events = run(scene.audio, t0=T0)
    kinds = [type(e).__name__ for e in events]
    # every SpeechStarted is followed by exactly one Utterance
    assert kinds.count("SpeechStarted") == kinds.count("Utterance") == 3
    text = "".join(
        {"SpeechStarted": "S", "SpeechPaused": "P", "SpeechResumed": "R", "Utterance": "U"}[k] for k in kinds
    )
    assert text.replace("PR", "") in ("SPUSPUSPU", "SUSUSU".replace("U", "PU"))
    for e, (_, s1) in zip([e for e in events if isinstance(e, Utterance)], scene.truth):
        assert abs(e.end_t - T0 - s1) < 0.1  # end_t is the end of speech, not of the hang-over
        assert e.end_t < e.start_t + sum(e.durations)  # the tail after it is in the audio
    starts = [e.t - T0 for e in events if isinstance(e, SpeechStarted)]
    for t, (s0, _) in zip(starts, scene.truth):
        assert s0 - 0.3 <= t <= s0 + 0.3


def test_pause_utterance_is_exactly_the_emitted_one_and_ends_tail_after_speech():
    scene = build([0.8, phrase(PHRASES[0]), 2.0])
    events = run(scene.audio)
    paused = [e for e in events if isinstance(e, SpeechPaused)]
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(paused) >= 1 and len(utterances) == 1
    assert paused[-1].utterance is utterances[0]
    after = next(i for i, e in enumerate(events) if e is paused[-1]) + 1
    assert events[after] is utterances[0]  # no SpeechResumed in between
    u = utterances[0]
    audio_end = u.start_t + sum(u.durations)
    assert audio_end - u.end_t == pytest.approx(CFG.tail_ms / 1000, abs=1e-6)


def test_a_pause_longer_than_speculation_but_shorter_than_hangover_resumes():
    a, b = phrase("Set a timer"), phrase("for ten minutes")
    scene = build([0.8, a, 0.45, b, 1.5], group_gap_s=0.5)
    events = run(scene.audio)
    kinds = [type(e) for e in events]
    assert kinds.count(Utterance) == 1
    assert SpeechPaused in kinds and SpeechResumed in kinds
    assert kinds.index(SpeechPaused) < kinds.index(SpeechResumed) < kinds.index(Utterance)
    resumed = next(e for e in events if isinstance(e, SpeechResumed))
    assert abs(resumed.t - T0 - (0.8 + len(a) / SR + 0.45)) < 0.15
    check_against_truth(events, scene)


def test_same_result_for_any_block_size():
    scene = three_utterances("en-gb")
    ref = run(scene.audio)
    rng = np.random.default_rng(5)
    seg, got, pos = Segmenter(CFG), [], 0
    while pos < len(scene.audio):
        n = int(rng.integers(1, 2000))
        got += seg.feed(AudioBlock(scene.audio[pos : pos + n], T0 + pos / SR))
        pos += n
    got += seg.flush()
    assert [type(e) for e in got] == [type(e) for e in ref]
    for a, b in zip(got, ref):
        if isinstance(a, Utterance):
            assert a.reasons == b.reasons and a.start_t == pytest.approx(b.start_t)
            assert all(np.array_equal(x, y) for x, y in zip(a.chunks, b.chunks))


def test_end_of_input_in_mid_speech_closes_the_utterance():
    speech = phrase(PHRASES[2])
    scene = build([0.6, speech[: len(speech) // 2]])
    events = run(scene.audio)
    (u,) = [e for e in events if isinstance(e, Utterance)]
    assert u.reasons == ("end_of_input",)
    assert u.start_t - T0 <= 0.6 + ONSET_SLACK
    assert u.start_t - T0 + sum(u.durations) == pytest.approx(scene.duration, abs=0.001)


@pytest.mark.parametrize("kind", ["pink", "hum", "clicks"])
def test_noise_alone_gives_nothing(kind):
    events = run(noise(kind, 20.0, rms=0.03))
    assert events == []


def test_blips_shorter_than_min_speech_are_ignored():
    rng = np.random.default_rng(7)
    t = np.arange(int(0.12 * SR)) / SR
    blip = (0.3 * np.sin(2 * np.pi * 180 * t) * np.hanning(len(t))).astype(np.float32)  # 120 ms "cough"
    word = phrase("hey")
    parts: list = [0.7]
    for _ in range(6):
        parts += [blip + 0.05 * rng.standard_normal(len(blip)).astype(np.float32), 0.9]
    assert len(word) / SR > CFG.min_speech_ms / 1000  # the positive control is long enough
    events = run(build(parts).audio)
    assert events == []
    events = run(build(parts + [word, 1.0]).audio)
    assert len([e for e in events if isinstance(e, Utterance)]) == 1


@pytest.mark.parametrize("voice", ["en-us", "en-gb", "en-us+f3", "en-gb-scotland"])
@pytest.mark.parametrize("kind", ["pink", "hum", "clicks"])
def test_speech_at_10_db_snr_is_found_with_onset_and_noise_never_holds_it_open(kind, voice):
    scene = three_utterances(voice)
    # Noise throughout, and 6 s more of it after the last word: the last utterance must still end.
    scene = build([scene.audio, 6.0])
    scene.truth = three_utterances(voice).truth
    n = noise(kind, scene.duration, rms=0.02)
    if kind == "clicks":
        mixed = (scene.audio + n).astype(np.float32)  # clicks: typing at a fixed, loud level
    else:
        mixed = mix_at_snr(scene.audio, n, 10.0)
        active = scene.audio[np.abs(scene.audio) > 0.01]
        assert 20 * np.log10(rms(active) / rms(mixed - scene.audio)) == pytest.approx(10.0, abs=0.1)
    events = run(mixed)
    check_against_truth(events, scene)


@pytest.mark.parametrize("kind", ["pink", "hum"])
def test_a_loud_noise_starting_right_after_speech_is_learned_and_closes_the_utterance(kind):
    speech = phrase(PHRASES[0])
    scene = build([1.0, speech, 0.05])
    level = rms(speech[np.abs(speech) > 0.01]) / 2  # noise only 6 dB below the speech
    audio = np.concatenate([scene.audio, noise(kind, 12.0, rms=level)])
    found = spans(run(audio))
    assert len(found) == 1, found  # the noise itself never becomes an utterance
    end_of_speech = scene.truth[0][1]
    # closed once the new noise is learned (noise_rise_s) and the hang-over passed, not 5 s later
    assert found[0][1] <= end_of_speech + CFG.noise_rise_s + CFG.hangover_ms / 1000


def long_speech() -> Scene:
    sentences = [
        "Once upon a time there was a small village at the edge of a great forest.",
        "Every morning the baker opened his shop and the smell of bread filled the streets.",
        "The children ran to school along the river, counting the boats that drifted by.",
        "In the evening the old men played cards in the square until the lamps were lit.",
        "Nobody remembered when the tall clock in the tower had last been wound.",
        "One winter a stranger arrived with a wooden box and a map of the mountains.",
    ]
    parts: list = [1.0]
    for i, s in enumerate(sentences * 3):
        parts += [phrase(s, "en-us" if i % 2 else "en-gb"), 0.15]
    return build(parts + [1.5], group_gap_s=0.5)


def test_long_speech_is_cut_into_chunks_of_at_most_30_s_at_quiet_points_one_turn():
    scene = long_speech()
    ((s0, s1),) = scene.truth
    assert s1 - s0 > 65  # the scene really is longer than two chunks
    events = run(scene.audio)
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(utterances) == 1 and [type(e) for e in events].count(SpeechStarted) == 1
    u = utterances[0]
    assert u.reasons == ("cap", "cap", "silence") and u.capped
    assert all(d <= CFG.max_chunk_s + 1e-9 for d in u.durations)
    assert u.durations[0] >= CFG.max_chunk_s - CFG.cut_search_s
    # together the chunks cover the speech, contiguously
    start = u.start_t - T0
    assert start <= s0 + ONSET_SLACK and start + sum(u.durations) >= s1
    joined = np.concatenate(u.chunks)
    first = int(round(start * SR))
    np.testing.assert_array_equal(joined, scene.audio[first : first + len(joined)])
    # each cut is at a quiet point of its last 2 s: quieter than 90 % of that stretch's 30 ms frames
    pos = first
    for d in u.durations[:-1]:
        pos += int(round(d * SR))
        window = scene.audio[pos - int(CFG.cut_search_s * SR) : pos + 240]
        levels = np.array([rms(window[i : i + 480]) for i in range(0, len(window) - 480, 480)])
        assert rms(scene.audio[pos - 240 : pos + 240]) <= np.percentile(levels, 10) + 1e-4


def test_long_speech_beyond_max_chunks_per_turn_continues_as_a_new_turn_nothing_dropped():
    scene = long_speech()
    cfg = dataclasses.replace(CFG, max_chunks_per_turn=1, max_chunk_s=20.0)
    events = run(scene.audio, cfg)
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(utterances) >= 4
    assert [u.reasons for u in utterances] == [("cap",)] * (len(utterances) - 1) + [("silence",)]
    assert [type(e) for e in events].count(SpeechStarted) == len(utterances)
    for a, b in zip(utterances, utterances[1:]):
        assert b.start_t == pytest.approx(a.start_t + sum(a.durations), abs=1e-6)  # contiguous: nothing lost
    assert all(d <= 20.0 for u in utterances for d in u.durations)


def test_bad_sample_rate_is_refused():
    with pytest.raises(ValueError, match="webrtcvad"):
        Segmenter(CFG, sample_rate=22050)


def test_after_flush_the_segmenter_goes_on_with_the_next_input():
    scene = three_utterances("en-us")
    seg, events = Segmenter(CFG), []
    for rep in range(2):
        t0 = T0 + rep * 100.0
        for i in range(0, len(scene.audio) - 77, 320):  # an odd length: flush sees a partial frame
            events += seg.feed(AudioBlock(scene.audio[i : i + 320], t0 + i / SR))
        events += seg.flush()
    found = spans(events)
    assert len(found) == 6
    for (a0, a1), (b0, b1) in zip(found[:3], found[3:]):
        assert b0 - 100.0 == pytest.approx(a0, abs=0.031) and b1 - 100.0 == pytest.approx(a1, abs=0.031)


def test_memory_stays_bounded_while_quiet():
    seg = Segmenter(CFG)
    quiet = noise("pink", 1.0, rms=0.01)
    for s in range(120):
        seg.feed(AudioBlock(quiet, T0 + s))
    assert seg._audio.end - seg._audio.base < 8 * SR  # a few seconds, not two minutes
    assert len(seg._anchors) <= 300
