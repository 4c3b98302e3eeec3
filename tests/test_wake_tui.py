"""The wake word's states in the full-screen UI (a real terminal: tmux), with the tiny real model and espeak
speech from a file played in real time as the microphone."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import soundfile as sf
from support.speech import SR, silence, speech_16k
from support.tmux import TmuxTerminal

pytest.importorskip("pymicro_wakeword")
pytestmark = pytest.mark.slow  # loads the model in a new process


def test_the_status_bar_waits_for_the_wake_word_then_listens(tmp_path):
    from voiceassist.model.tiny import tiny_model_dir

    parts = [
        silence(2.0),
        speech_16k("Could you tell me where the conference room is?", tmp_path),  # a passer-by: no turn
        silence(1.5),
        speech_16k("Okay Nabu", tmp_path),
        silence(1.2),
        speech_16k("Where is the nearest train station?", tmp_path),  # the turn
        silence(16.0),  # the reply, then the 5 s follow-up window, inside the file (its blocks tick the clock)
    ]
    wav = tmp_path / "scene.wav"
    sf.write(str(wav), np.concatenate(parts), SR)
    argv = [sys.executable, "-m", "voiceassist", "--model", str(tiny_model_dir()), "--from-file", str(wav)]
    argv += ["--stay", "--max-new-tokens", "8", "--wake-word", "okay_nabu"]
    with TmuxTerminal(argv, 100, 24, cwd=str(tmp_path)) as term:
        screen = term.wait_for(r" waiting for wake word ", 60).string
        assert "say the wake word (okay nabu) then speak" in screen
        # The passer-by's sentence plays and ends: still no turn, still waiting.
        term.wait_for(r" listening ", 20)  # the wake word was heard
        assert "you  [audio" not in term.screen()
        term.wait_for(r"^you  \[audio \d+\.\d s\]", 30)
        term.wait_for(r"\d+ ms after speech", 30)
        # The follow-up window (5 s) passes with nothing said: waiting again.
        term.wait_for(r" waiting for wake word ", 15)
        assert len(re.findall(r"^you  ", term.screen(), re.M)) == 1
        term.keys("C-c", "C-c")
        assert term.wait_exit(timeout=10) == 0
