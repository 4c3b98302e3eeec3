"""`voiceassist segment FILE [--json]`: the exact JSON, the same segments at every rate, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
from support.audio_scenes import build, phrase
from support.speech import SR

from voiceassist.cli import main
from voiceassist.config import VadConfig

HANGOVER_S = VadConfig().hangover_ms / 1000


@pytest.fixture(scope="module")
def scene():
    return build(
        [
            1.0,
            phrase("Call the office and say I will be late.", "en-us+f3"),
            1.3,
            phrase("Thank you very much.", "en-gb"),
            1.0,
        ]
    )


def segment_json(capsys, path, *extra):
    code = main(["segment", str(path), "--json", *extra])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out.count("\n") == 1  # exactly one JSON object on one line
    return json.loads(out)


def test_json_is_exactly_the_documented_shape(tmp_path, capsys, scene):
    path = tmp_path / "two.wav"
    sf.write(str(path), scene.audio, SR)
    doc = segment_json(capsys, path)
    assert list(doc) == ["file", "duration_s", "segments"]
    assert doc["file"] == str(path) and doc["duration_s"] == pytest.approx(scene.duration, abs=1e-3)
    assert len(doc["segments"]) == 2
    for k, (seg, (s0, s1)) in enumerate(zip(doc["segments"], scene.truth), start=1):
        assert list(seg) == ["start", "end", "duration", "turn", "reason"]
        assert seg["turn"] == k and seg["reason"] == "silence"
        assert seg["start"] <= s0 + 0.05 and s1 <= seg["end"] <= s1 + HANGOVER_S
        assert seg["duration"] == pytest.approx(seg["end"] - seg["start"], abs=0.002)


def test_plain_output_is_a_table(tmp_path, capsys, scene):
    path = tmp_path / "two.flac"
    sf.write(str(path), scene.audio, SR)
    assert main(["segment", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("2 segment(s) in 2 turn(s)") and len(out) == 4


@pytest.mark.parametrize("rate,channels", [(8000, 1), (22050, 1), (44100, 2), (48000, 2)])
def test_every_rate_and_stereo_gives_the_same_segments(tmp_path, capsys, scene, rate, channels):
    ref_path = tmp_path / "ref.wav"
    sf.write(str(ref_path), scene.audio, SR)
    ref = segment_json(capsys, ref_path)["segments"]
    x = soxr.resample(scene.audio, SR, rate).astype(np.float32)
    if channels == 2:  # a slightly different right channel, so the downmix really mixes
        x = np.stack([x, 0.8 * x], axis=1)
    path = tmp_path / f"s{rate}.wav"
    sf.write(str(path), x, rate)
    got = segment_json(capsys, path)["segments"]
    assert len(got) == len(ref)
    # One 30 ms VAD frame of difference at most; at 8 kHz everything above 4 kHz is gone (the end of a
    # fricative like "ch" is too), so its boundaries may move by up to four frames.
    slack = 0.121 if rate == 8000 else 0.031
    for a, b in zip(got, ref):
        assert abs(a["start"] - b["start"]) <= slack and abs(a["end"] - b["end"]) <= slack
        assert a["turn"] == b["turn"] and a["reason"] == b["reason"]


def test_mp3_gives_the_same_segments_as_the_wav(tmp_path, capsys, scene):
    wav, mp3 = tmp_path / "s.wav", tmp_path / "s.mp3"
    sf.write(str(wav), scene.audio, SR)
    sf.write(str(mp3), soxr.resample(scene.audio, SR, 44100).astype(np.float32), 44100, format="MP3")
    ref, got = segment_json(capsys, wav)["segments"], segment_json(capsys, mp3)["segments"]
    assert len(got) == len(ref) == 2
    for a, b in zip(got, ref):  # lossy coding and the decoder's padding: a frame or two at most
        assert abs(a["start"] - b["start"]) <= 0.065 and abs(a["end"] - b["end"]) <= 0.065


def test_long_speech_reports_capped_chunks_of_one_turn(tmp_path, capsys):
    sentence = phrase("The committee will meet again next week to discuss the budget and the new building plans.")
    parts: list = [0.5]
    for _ in range(int(np.ceil(40 * SR / len(sentence)))):
        parts += [sentence, 0.2]
    scene = build(parts + [1.0], group_gap_s=0.5)
    path = tmp_path / "long.ogg"
    sf.write(str(path), scene.audio, SR)
    segs = segment_json(capsys, path, "--max-chunk-s", "15")["segments"]
    assert [s["reason"] for s in segs][:-1] == ["cap"] * (len(segs) - 1) and segs[-1]["reason"] == "silence"
    assert len({s["turn"] for s in segs}) == 1 and len(segs) >= 3
    assert all(s["duration"] <= 15.0 for s in segs)
    for a, b in zip(segs, segs[1:]):
        assert b["start"] == pytest.approx(a["end"], abs=0.002)


def bad_inputs(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello\n")
    header = tmp_path / "header.wav"
    sf.write(str(header), np.zeros(0, np.float32), SR)
    return {
        "missing.wav": "does not exist; check the path",
        "empty.wav": "is empty (0 bytes)",
        "notes.txt": "is not a readable audio file",
        "header.wav": "contains no audio (0 samples)",
    }


def test_bad_files_give_one_line_on_stderr_and_a_nonzero_exit(tmp_path, capsys):
    for name, expected in bad_inputs(tmp_path).items():
        code = main(["segment", str(tmp_path / name), "--json"])
        out, err = capsys.readouterr()
        assert code == 3 and out == ""
        assert err.startswith("voiceassist: error: ") and expected in err and err.count("\n") == 1, err


def test_bad_configuration_gives_one_line_and_exit_2(tmp_path, capsys, scene):
    wav = tmp_path / "ok.wav"
    sf.write(str(wav), scene.audio, SR)
    cases = {
        "[vad]\nhangover_ms = 50\n": "[vad]: hangover_ms = 50 is not allowed; use an integer from 100 to 5000 ms",
        "[vad]\nframe_ms = 25\n": "frame_ms = 25 is not allowed; use one of 10, 20, 30",
        '[vad]\nsnr_gate_db = "loud"\n': "snr_gate_db = 'loud' is not allowed; use a number from 0.0 to 40.0 dB",
        "[vad]\nhang_over = 1\n": "unknown key 'hang_over'",
        "[audio]\nblock_ms = 1\n": "block_ms = 1 is not allowed",
    }
    for text, expected in cases.items():
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        code = main(["segment", str(wav), "--config", str(cfg)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and expected in err and err.count("\n") == 1, err
    code = main(["segment", str(wav), "--aggressiveness", "7"])
    assert code == 2 and "aggressiveness = 7 is not allowed" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(tmp_path):
    (tmp_path / "junk.mp3").write_bytes(os.urandom(5000))
    res = subprocess.run(
        [sys.executable, "-m", "voiceassist", "segment", str(tmp_path / "junk.mp3"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 3 and res.stdout == ""
    assert res.stderr.startswith("voiceassist: error: ") and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0
