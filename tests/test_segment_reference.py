"""`voiceassist segment MIC --reference PLAYED [--reference-delay-ms N]`: the played signal is cancelled first."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
from support.audio_scenes import phrase
from support.echo_path import RoomSpec, echo_of
from support.speech import SR, silence

from voiceassist.cli import main

pytest.importorskip("pywebrtc_audio")

USER_AT_S = 9.0  # the user speaks over the reply, after the canceller has converged


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """(folder, the reply as played, the user's speech (start, end) s): MIC.wav = the reply's echo through a
    room (60 ms, RT60 0.45 s, soft clipping) + the user's question, as loud as the echo."""
    tmp = tmp_path_factory.mktemp("ref")
    parts = []
    for text in (
        "Here is the weather for today. It will be sunny in the morning, and warm.",
        "In the afternoon clouds come in from the west, with light rain by the evening.",
        "Tomorrow looks much the same, a little warmer, with a light wind from the south.",
    ):
        parts += [phrase(text, "en-gb"), silence(0.3)]
    reply = np.concatenate(parts)
    reply = (0.5 * reply / np.max(np.abs(reply))).astype(np.float32)
    user = phrase("Stop. What about the weekend?", "en-us")
    user = 0.5 * user / np.max(np.abs(user))
    mic = echo_of(np.concatenate((reply, silence(1.0))), RoomSpec(delay_ms=60))
    at = int(USER_AT_S * SR)
    mic[at : at + len(user)] += user
    sf.write(str(tmp / "mic.wav"), mic, SR)
    # What the player wrote: 48 kHz stereo (another rate and channel count than the recording).
    played48 = soxr.resample(reply, SR, 48000).astype(np.float32)
    sf.write(str(tmp / "played.wav"), np.stack((played48, played48), axis=1), 48000)
    return tmp, reply, (USER_AT_S, USER_AT_S + len(user) / SR)


def segment_json(capsys, *args):
    code = main(["segment", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    return json.loads(out)


def test_with_the_reference_only_the_user_is_cut_and_the_json_is_unchanged(recording, capsys):
    tmp, _reply, (u0, u1) = recording
    without = segment_json(capsys, str(tmp / "mic.wav"))
    doc = segment_json(capsys, str(tmp / "mic.wav"), "--reference", str(tmp / "played.wav"))
    print("without:", without["segments"], "\nwith:", doc["segments"])
    assert list(doc) == ["file", "duration_s", "segments"] and doc["file"] == str(tmp / "mic.wav")
    assert sum(s["duration"] for s in without["segments"]) > 10  # the echo alone makes turns
    late = [s for s in doc["segments"] if s["end"] > 5.0]  # after the canceller converged
    assert len(late) == 1
    assert list(late[0]) == ["start", "end", "duration", "turn", "reason"]
    assert late[0]["start"] <= u0 and u0 - late[0]["start"] < 0.5 and u1 <= late[0]["end"] <= u1 + 0.7


def test_reference_delay_places_a_reference_that_started_later(recording, capsys, tmp_path):
    tmp, _reply, (u0, u1) = recording
    # The recording started 1.5 s before the playback: the echo is 1.5 s later in this microphone file.
    mic, _ = sf.read(str(tmp / "mic.wav"), dtype="float32")
    late_mic = np.concatenate((silence(1.5), mic))
    sf.write(str(tmp_path / "late.wav"), late_mic, SR)
    args = [str(tmp_path / "late.wav"), "--reference", str(tmp / "played.wav")]
    doc = segment_json(capsys, *args, "--reference-delay-ms", "1500")
    late = [s for s in doc["segments"] if s["end"] > 6.5]
    assert len(late) == 1 and late[0]["start"] <= u0 + 1.5 <= late[0]["end"]


def test_a_shorter_reference_is_silence_after_its_end(recording, capsys, tmp_path):
    tmp, reply, _ = recording
    # Only the first 4 s of what was played: the echo after that stays in, and is cut as speech.
    short = reply[: 4 * SR]
    sf.write(str(tmp_path / "short.wav"), short, SR)
    doc = segment_json(capsys, str(tmp / "mic.wav"), "--reference", str(tmp_path / "short.wav"))
    assert any(s["start"] > 3.5 and s["start"] < 6.0 for s in doc["segments"]), doc["segments"]


def test_unreadable_reference_and_bad_flags_give_one_line(recording, capsys, tmp_path):
    tmp, _, _ = recording
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not audio")
    code = main(["segment", str(tmp / "mic.wav"), "--reference", str(tmp_path / "junk.wav"), "--json"])
    out, err = capsys.readouterr()
    assert code == 3 and out == "" and "junk.wav" in err and err.count("\n") == 1, err
    code = main(["segment", str(tmp / "mic.wav"), "--reference", str(tmp_path / "none.wav")])
    out, err = capsys.readouterr()
    assert code == 3 and "does not exist" in err and err.count("\n") == 1
    code = main(["segment", str(tmp / "mic.wav"), "--reference-delay-ms", "20"])
    out, err = capsys.readouterr()
    assert code == 2 and "needs --reference" in err and err.count("\n") == 1


def test_missing_pywebrtc_names_the_extra(recording, capsys, monkeypatch):
    tmp, _, _ = recording
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    code = main(["segment", str(tmp / "mic.wav"), "--reference", str(tmp / "played.wav")])
    out, err = capsys.readouterr()
    assert code == 2 and "voiceassist[aec]" in err and err.count("\n") == 1, err
