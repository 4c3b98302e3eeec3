"""`voiceassist wake FILE` and `voiceassist segment FILE --wake-word NAME`: exact JSON, the live chain's turns,
one-line errors. Audio: espeak-ng speech (okay_nabu on en-us fires at the model's own cutoff; measured in
scripts/bench_wake.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from support.audio_scenes import phrase
from support.speech import SR, silence

from voiceassist.cli import main
from voiceassist.wake.detector import BUILTIN_WORDS

pytest.importorskip("pymicro_wakeword")


def at(parts: list) -> tuple[np.ndarray, list[float]]:
    """Concatenate arrays and silences (floats, s); also return where each array starts, s."""
    pieces, starts, pos = [], [], 0
    for p in parts:
        a = silence(p) if isinstance(p, float) else p
        if not isinstance(p, float):
            starts.append(pos / SR)
        pieces.append(a)
        pos += len(a)
    return np.concatenate(pieces), starts


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A passer-by's sentence; the wake word, a pause, a question; the wake word and a question in one breath;
    a passer-by again 8 s later (past the listening window)."""
    wake = phrase("Okay Nabu", "en-us")
    audio, starts = at(
        [
            1.0,
            phrase("Could you tell me where the conference room is?", "en-us"),  # 0: not a turn
            1.5,
            wake,  # 1
            1.2,
            phrase("Where is the nearest train station?", "en-us"),  # 2: turn (after a pause)
            2.0,
            wake,  # 3
            0.25,
            phrase("Turn on the lights in the kitchen.", "en-us"),  # 4: turn (same breath)
            8.0,
            phrase("Let's grab a coffee after the meeting.", "en-us"),  # 5: not a turn
            1.0,
        ]
    )
    path = tmp_path_factory.mktemp("wakecli") / "scene.wav"
    sf.write(str(path), audio, SR)
    return path, starts, len(wake) / SR


def run_json(capsys, *argv) -> dict:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert out.count("\n") == 1  # exactly one JSON object on one line
    return json.loads(out)


def test_wake_json_lists_each_wake_word_with_time_word_probability(capsys, scene):
    path, starts, wake_s = scene
    got = run_json(capsys, "wake", str(path), "--wake-word", "okay_nabu", "--json")
    assert set(got) == {"file", "duration_s", "detections"} and got["file"] == str(path)
    dets = got["detections"]
    assert [set(d) for d in dets] == [{"time", "word", "probability"}] * 2, dets
    for d, start in zip(dets, (starts[1], starts[3])):
        assert d["word"] == "okay_nabu" and 0.85 < d["probability"] <= 1.0
        assert start + wake_s <= d["time"] <= start + wake_s + 0.4, (d, start + wake_s)


def test_wake_without_a_word_listens_for_every_built_in_one(capsys, scene):
    path, starts, wake_s = scene
    got = run_json(capsys, "wake", str(path), "--json")
    assert all(d["word"] in BUILTIN_WORDS for d in got["detections"])
    assert [d["time"] for d in got["detections"] if d["word"] == "okay_nabu"] == [
        d["time"] for d in run_json(capsys, "wake", str(path), "--wake-word", "okay_nabu", "--json")["detections"]
    ]


def test_segment_with_the_wake_word_prints_only_the_turns(capsys, scene):
    path, starts, wake_s = scene
    plain = run_json(capsys, "segment", str(path), "--json")
    assert len({s["turn"] for s in plain["segments"]}) == 5  # without the gate every utterance is a turn
    got = run_json(capsys, "segment", str(path), "--wake-word", "okay_nabu", "--json")
    segs = got["segments"]
    assert [s["turn"] for s in segs] == [1, 2], segs
    first, second = segs
    # After a pause: the question's own utterance; its wake time is the wake word's.
    assert first["via"] == "listen" and starts[1] + wake_s <= first["wake"] <= starts[1] + wake_s + 0.4
    assert abs(first["start"] - (starts[2] - 0.3)) < 0.15, first  # the segmenter's 300 ms pre-roll
    # In one breath: cut between the wake word and the question (none of "Okay Nabu" is sent).
    assert second["via"] == "wake" and starts[3] + wake_s <= second["wake"] <= starts[3] + wake_s + 0.4
    assert starts[3] + wake_s - 0.03 <= second["start"] <= starts[4] + 0.03, (second, starts[3] + wake_s, starts[4])
    # Every segment carries the keys of plain `segment --json`, plus "wake" and "via".
    assert set(plain["segments"][0]) | {"wake", "via"} == set(first)
    assert [d["time"] for d in got["detections"]] == [first["wake"], second["wake"]]


def test_segment_wake_table(capsys, scene):
    path, _, _ = scene
    assert main(["segment", str(path), "--wake-word", "okay_nabu"]) == 0
    out = capsys.readouterr().out
    assert "2 wake word(s), 2 turn(s)" in out and "listen" in out and "wake" in out


def test_unknown_word_is_one_line_listing_the_built_in_ones(capsys, scene):
    path, _, _ = scene
    for argv in (["wake", str(path), "--wake-word", "hey_siri"], ["segment", str(path), "--wake-word", "hey_siri"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "hey_siri" in err and all(w in err for w in BUILTIN_WORDS), err


def test_a_missing_audio_file_is_one_line(capsys, tmp_path):
    assert main(["wake", str(tmp_path / "nope.wav"), "--wake-word", "okay_nabu"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_a_wake_word_with_push_to_talk_is_refused_in_one_line():
    from voiceassist import config as cfg
    from voiceassist.errors import ConfigError
    from voiceassist.wake import check_config

    both = cfg.from_dict({"wake": {"word": "okay_nabu"}, "ui": {"mode": "ptt"}})
    with pytest.raises(ConfigError) as err:
        check_config(both)
    assert "push-to-talk" in str(err.value) and "--wake-word ''" in str(err.value)
    check_config(cfg.with_overrides(both, {"wake.word": ""}))  # the fix the message gives works
    check_config(cfg.with_overrides(both, {"ui.mode": "handsfree"}))
