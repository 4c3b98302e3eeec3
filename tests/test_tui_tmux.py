"""The full-screen UI in a real terminal: tmux (a private server per test) runs ``python -m voiceassist`` with the
tiny real Qwen2-Audio (random weights: replies are noise) and real audio (espeak speech from a file, or played
into a PulseAudio null sink whose monitor is the microphone). Keys go in with send-keys; the screen comes back
with capture-pane and is polled with short sleeps up to a deadline.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.speech import SR, silence, speech_16k
from support.tmux import TmuxTerminal

pytestmark = pytest.mark.slow  # each test loads the model in a new process: 15-40 s


@pytest.fixture(scope="module")
def tiny_dir() -> str:
    from voiceassist.model.tiny import tiny_model_dir

    return str(tiny_model_dir())


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> tuple[Path, float]:
    """0.5 s of silence, espeak speech, 1.5 s of silence (one utterance); returns the path and speech seconds."""
    tmp = tmp_path_factory.mktemp("speech")
    speech = speech_16k("Hello there. What is the weather like in Paris today?", tmp)
    path = tmp / "question.wav"
    sf.write(str(path), np.concatenate([silence(0.5), speech, silence(1.5)]), SR)
    return path, len(speech) / SR


def voiceassist(*args: str) -> list[str]:
    return [sys.executable, "-m", "voiceassist", *args]


def test_audio_and_text_turns_commands_save_and_quit(tiny_dir, speech_wav, tmp_path):
    wav, speech_s = speech_wav
    with TmuxTerminal(
        voiceassist("--model", tiny_dir, "--from-file", str(wav), "--stay", "--max-new-tokens", "24", "--seed", "1"),
        80,
        24,
        cwd=str(tmp_path),
    ) as term:
        # The audio turn with its duration, the reply with its figures, the status bar with the latency.
        m = term.wait_for(r"^you  \[audio (\d+\.\d) s\] [▁▂▃▄▅▆▇█]+$", 60)
        assert abs(float(m.group(1)) - speech_s) < 1.0  # pre-roll and tail added, silence not
        term.wait_for(r"^bot  .*\n(     .*\n)*     \d+ ms after speech · \d+ tokens · [\d.]+ tok/s$", 30)
        screen = term.wait_for(r"latency \d+ ms · [\d.]+ tok/s", 5).string
        assert " hands-free " in screen
        assert " tiny random-weight demo model: replies are noise " in screen
        assert "in: questio" in screen

        # A typed turn.
        term.type("What about tomorrow?")
        term.keys("Enter")
        term.wait_for(r"^you  What about tomorrow\?\n\nbot  .*\n(     .*\n)*     first token \d+ ms · \d+ tokens", 30)

        # An unknown command: a one-line hint; Tab completes a command.
        term.type("/frobnicate")
        term.keys("Enter")
        term.wait_for(r"unknown command /frobnicate; type /help for the list", 5)
        term.type("/he")
        term.keys("Tab")
        term.wait_for(r"^› /help\s*$", 5)
        term.keys("Enter")
        term.wait_for(r"/save \[PATH\] +save the transcript", 5)

        # The screen follows resizes: the status bar uses the room it gets (names shortened at 80 columns).
        term.resize(100, 30)
        term.wait_for(r"demo model: replies are noise  \S.* · in: question\.wav\s*$", 5)
        term.resize(80, 24)
        term.wait_for(r"demo model: replies are noise  .*…\s*$", 5)

        # /save: Markdown, JSON and the WAV clips of the audio turn.
        out = tmp_path / "saved"
        term.type(f"/save {out}")
        term.keys("Enter")
        term.wait_for(r"saved 2 turns", 10)
        doc = json.loads((out / "transcript.json").read_text())
        assert [t["kind"] for t in doc["turns"]] == ["audio", "text"]
        assert doc["turns"][1]["text"] == "What about tomorrow?" and doc["turns"][1]["reply"]
        clip, sr = sf.read(str(out / doc["turns"][0]["audio"][0]["file"]))
        assert sr == 16000 and abs(len(clip) / sr - float(m.group(1))) < 0.06
        md = (out / "transcript.md").read_text()
        assert "**You** (turn 2):" in md and "> What about tomorrow?" in md

        term.type("/quit")
        term.keys("Enter")
        assert term.wait_exit(timeout=5) == 0


def test_ctrl_c_cancels_a_long_reply_then_the_next_turn_works(tiny_dir, speech_wav):
    wav, _ = speech_wav
    # A draft on the input line makes each Ctrl-C safe: were the reply already over, it would clear the line,
    # not quit. The tiny model decodes at several hundred tokens/s on an idle machine, so a reply (greedy: up to
    # ~1,200 tokens here) can be over before the screen is read: then the text turns below carry the test.
    with TmuxTerminal(
        voiceassist("--model", tiny_dir, "--from-file", str(wav), "--stay", "--greedy", "--max-new-tokens", "4000"),
        80,
        24,
    ) as term:
        # The streaming cursor ends the reply's last line, which is a continuation line once the reply wraps.
        m = term.wait_for(r"^bot  [^▌]*?(▌|\d+ ms after speech)", 60)
        if m.group(1) == "▌":
            first = term.screen()
            term.type("draft")
            term.keys("C-c")
            term.wait_for(r"interrupted \(cancel\)|\d+ ms after speech", 5)
            if "interrupted (cancel)" in term.screen():
                assert term.screen() != first  # it streamed
            term.wait_for(r" listening ", 5)
            assert re.search(r"^› draft\s*$", term.screen(), re.M)  # the cancel left the line alone
            term.keys("C-c")  # idle, with text on the line: clears it
            term.wait_for(r"^› speak, or type", 5)
        else:
            term.wait_for(r" listening ", 5)
        assert not term.rc_file.exists()  # still running

        for attempt in range(6):  # a reply may end before Ctrl-C lands (a fast machine): try another turn
            term.type(f"hello {attempt}")
            term.keys("Enter")
            # (figures lines are indented by 5: the status bar's own "first token" must not match)
            m = term.wait_for(rf"^you  hello {attempt}\n\nbot  [\s\S]*?(▌|\n     first token \d+ ms)", 30)
            if m.group(1) == "▌":
                term.type("x")
                term.keys("C-c")
                m = term.wait_for(
                    rf"^you  hello {attempt}\n\nbot  [\s\S]*?\n     "
                    r"(interrupted \(cancel\)|first token \d+ ms)",
                    5,
                )
                if m.group(1).startswith("interrupted"):
                    break
                term.wait_for(r"^› speak, or type", 5)  # it ended just before: that Ctrl-C cleared the "x"
        else:
            pytest.fail("six replies in a row ended before Ctrl-C")
        term.wait_for(r" listening ", 5)
        term.keys("C-c", "C-c")  # clear the line, then quit from the idle, empty prompt
        assert term.wait_exit(timeout=5) == 0


@pytest.mark.pulse
def test_push_to_talk_and_hands_free_on_a_real_microphone(pulse, tiny_dir, speech_wav, tmp_path):
    """The PulseAudio null sink's monitor is the default input: espeak speech played into the sink is heard."""
    wav, speech_s = speech_wav
    other = tmp_path / "short.wav"
    sf.write(str(other), np.concatenate([speech_16k("Tell me a story.", tmp_path), silence(0.3)]), SR)
    # 40 rows: all three turns stay on screen to be counted.
    with TmuxTerminal(voiceassist("--model", tiny_dir, "--mode", "ptt", "--max-new-tokens", "16"), 80, 40) as term:
        term.wait_for(r"^ push-to-talk  listening ", 60)
        # Nothing plays into the sink: its monitor is digitally silent, like a dead or muted microphone.
        term.wait_for(r"no input (signal for|)\s*\d+ s: mic muted", 15)
        # Press, speak, press again.
        term.keys("Space")
        term.wait_for(r"● REC +\d+\.\d s", 5)
        pulse.play(wav)
        term.keys("Space")
        m = term.wait_for(r"^you  \[audio (\d+\.\d) s\]", 10)
        assert abs(float(m.group(1)) - speech_s) < 1.0  # silence trimmed at both ends
        term.wait_for(r"after speech · \d+ tokens", 30)
        assert "● REC" not in term.screen()

        # Hold the key: the terminal sends auto-repeats; the recording ends when they stop.
        player = pulse.play(other, wait=False)
        saw_rec = False
        while player.poll() is None:
            term.keys("Space", "Space", "Space")  # a burst per call, so a slow tmux call cannot look like a release
            saw_rec = saw_rec or "● REC" in term.screen()
            time.sleep(0.03)
        assert saw_rec
        term.wait_for(r"^you  \[audio [\d.]+ s\][\s\S]*^you  \[audio [\d.]+ s\]", 10)
        turns = re.findall(r"^you  \[audio (\d+\.\d) s\]", term.screen(), re.M)
        assert len(turns) == 2 and float(turns[1]) < float(turns[0])
        assert term.screen().rstrip().endswith("or type")  # the spaces never reached the input line

        # Hands-free on the same microphone: the voice detector cuts the turn.
        term.wait_for(r"after speech · \d+ tokens[\s\S]*after speech · \d+ tokens", 30)
        term.type("/mode handsfree")
        term.keys("Enter")
        term.wait_for(r"^ hands-free ", 5)
        pulse.play(wav)
        term.wait_for(r"^you  \[audio [\d.]+ s\][\s\S]*^you  \[audio [\d.]+ s\][\s\S]*^you  \[audio [\d.]+ s\]", 10)
        term.keys("C-d")
        assert term.wait_exit(timeout=5) == 0
