"""The wake word in the kiosk service and in plain mode: real processes, the tiny real model, espeak speech from a
file as the microphone. The JSON log carries `wake` events, the status file (and `voiceassist status --json`)
the wake word's state; plain mode prints the states and the detections."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.kiosk import KioskProcess
from support.speech import SR, silence, speech_16k

pytest.importorskip("pymicro_wakeword")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def scene(tmp: Path) -> Path:
    """A passer-by, then the wake word and a question in one breath, then silence."""
    parts = [
        silence(0.5),
        speech_16k("Could you tell me where the conference room is?", tmp),
        silence(1.5),
        speech_16k("Okay Nabu", tmp),
        silence(0.25),
        speech_16k("Where is the nearest train station?", tmp),
        silence(1.5),
    ]
    path = tmp / "scene.wav"
    sf.write(str(path), np.concatenate(parts), SR)
    return path


def test_kiosk_logs_wake_events_and_its_status_shows_the_wake_word(tmp_path):
    wav = scene(tmp_path)
    status = tmp_path / "status.json"
    conf = tmp_path / "kiosk.toml"
    conf.write_text(
        f'[kiosk]\nstatus_file = "{status}"\n[generation]\nmax_new_tokens = 8\n[wake]\nword = "okay_nabu"\n'
    )
    k = KioskProcess(["--config", str(conf), "--model", "tiny", "--from-file", str(wav), "--fast", "--stay"])
    try:
        k.wait_for(lambda r: r.get("type") == "reply_done", 120, "a reply")
        wake = k.wait_for(lambda r: r.get("type") == "wake", 5, "the wake event")
        assert wake["word"] == "okay_nabu" and wake["probability"] > 0.85 and wake["action"] == "listen"
        # The input ended after the turn: no window can be used any more, it waits for the wake word.
        end = k.wait_for(lambda r: r.get("type") == "status" and r.get("detail") == "end of input", 30, "the end")
        assert end["state"] == "waiting_for_wake", end
        st = subprocess.run(
            [sys.executable, "-m", "voiceassist", "status", "--file", str(status), "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        data = json.loads(st.stdout)
        assert data["running"] and data["state"] == "waiting_for_wake", data
        assert data["wake"]["word"] == "okay_nabu" and data["wake"]["detections"] == 1
        assert data["wake"]["last"]["word"] == "okay_nabu" and data["wake"]["last"]["action"] == "listen"
        assert data["turns"] == 1  # the passer-by was not answered
    finally:
        k.kill()
    assert len(k.of_type("utterance")) == 1


def test_plain_mode_prints_the_wake_states_and_events_file(tmp_path):
    wav = scene(tmp_path)
    events = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "voiceassist", "--model", "tiny", "--from-file", str(wav), "--fast", "--plain"]
    argv += ["--max-new-tokens", "8", "--wake-word", "okay_nabu", "--events", str(events)]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "-- waiting for wake word" in lines, lines
    wake_lines = [x for x in lines if x.startswith("-- wake word: okay_nabu (")]
    assert len(wake_lines) == 1 and wake_lines[0].endswith(", listening"), lines
    assert sum(x.startswith("you #") for x in lines) == 1, lines
    records = [json.loads(x) for x in events.read_text().splitlines()]
    wakes = [r for r in records if r["type"] == "wake"]
    assert len(wakes) == 1 and set(wakes[0]) == {"type", "t", "word", "probability", "action"}
    # The wake word comes before the turn it opened, and the turn is the question without it.
    order = [r["type"] for r in records if r["type"] in ("wake", "utterance")]
    assert order == ["wake", "utterance"]
    question_s = len(speech_16k("Where is the nearest train station?", tmp_path)) / SR
    turn = next(r for r in records if r["type"] == "utterance")
    assert turn["durations"][0] < question_s + 0.8, (turn, question_s)


def test_a_wake_word_with_push_to_talk_is_refused_before_anything_loads(tmp_path):
    argv = [sys.executable, "-m", "voiceassist", "--model", "tiny", "--mode", "ptt", "--wake-word", "okay_nabu"]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "push-to-talk" in res.stderr, res.stderr
    res = subprocess.run(argv[:-1] + ["hey_siri"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "hey_siri" in res.stderr and "okay_nabu" in res.stderr, res.stderr
