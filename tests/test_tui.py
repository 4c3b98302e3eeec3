"""The terminal UI: what it draws from events (pure rendering), its commands, push-to-talk timing, /save files.

The end-to-end tests, in a real terminal (tmux) over the real App and the tiny model, are in
``test_tui_tmux.py``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.utils import get_cwidth

from voiceassist import events as ev
from voiceassist.config import Config
from voiceassist.errors import VoiceAssistError
from voiceassist.transcript import save_transcript
from voiceassist.tui import commands as cmds
from voiceassist.tui.screen import PushToTalk, is_tiny_model
from voiceassist.tui.statusbar import StatusModel
from voiceassist.tui.stderr import MAX_LINES, StderrCapture
from voiceassist.tui.view import Conversation, ReplyEntry, plain_text, sparkline, wrap

HOSTILE = [
    "Sure.\x1b[2J\x1b[H",  # clear screen, cursor home
    " Copy\x1b]52;c;cm0gLXJmIH4=\x07 this",  # OSC 52: write the clipboard
    "\x07\x07 ring",  # BEL
    " up\x1b[10A\x1b[5;5Hmoved",  # CSI cursor moves
    " title\x1b]0;pwned\x1b\\ end",  # OSC window title with ST
    " split\x1b",  # a sequence split across two tokens
    "[31mred\x9b1;1H and\x1bc reset\r over",  # ... its rest, 8-bit CSI, RIS, carriage return
]


def _all_text(lines) -> str:
    return "".join(t for line in lines for _, t in line)


def test_a_hostile_reply_is_displayed_harmlessly():
    conv = Conversation()
    conv.apply(ev.UtteranceEvent(turn=1, text="hi\x1b[2J there"))
    conv.apply(ev.ReplyStart(turn=1, ttft_s=0.1))
    for piece in HOSTILE:
        conv.apply(ev.Token(turn=1, text=piece))
    for done in (False, True):
        if done:
            conv.apply(ev.ReplyDone(turn=1, text="".join(HOSTILE), n_tokens=7, tok_per_s=20.0, ttft_s=0.1))
        lines, _ = conv.window(80, 24, 0)
        text = _all_text(lines)
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", text), repr(text)  # no ESC, BEL, CR, C1 ...
        for word in ("Sure.", "Copy", "this", "ring", "moved", "end", "reset", "over", "hi", "there"):
            assert word in text
        assert "pwned" not in text and "cm0gLXJmIH4=" not in text  # OSC payloads go with their sequence
    status = StatusModel(device="mic\x1b[2Jphone", model="m\x07odel")
    status.apply(ev.Status("device_lost", detail="gone\x1b]0;x\x07 away"))
    bar = _all_text([status.line1(80, 0.0), status.line2(80)])
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", bar), repr(bar)


def test_user_turns_show_durations_sparkline_and_the_cap():
    conv = Conversation(cap_s=30.0)
    conv.apply(ev.UtteranceEvent(turn=1, durations=(3.64,), levels=(-60.0, -30.0, -12.0, -40.0)))
    conv.apply(ev.UtteranceEvent(turn=2, durations=(29.2, 4.0), capped=True, levels=(-20.0,) * 40))
    conv.apply(ev.UtteranceEvent(turn=3, durations=(1.0,), text="and a question"))
    text = plain_text(conv.window(80, 24, 0)[0])
    assert "you  [audio 3.6 s] ▁▅█▃" in text
    assert "[audio 29.2 s] cut at 30 s [audio 4.0 s] ▆▆▆▆▆▆▆▆▆▆▆▆" in text  # max 12 sparkline cells
    assert text.count("cut at 30 s") == 1
    assert "[audio 1.0 s]\n     and a question" in text


def test_a_reply_streams_then_shows_its_figures():
    conv = Conversation()
    conv.apply(ev.UtteranceEvent(turn=1, durations=(2.0,)))
    conv.apply(ev.ReplyStart(turn=1, ttft_s=0.05, latency_s=0.412))
    conv.apply(ev.Token(turn=1, text="Hello"))
    assert plain_text(conv.window(80, 24, 0)[0]).endswith("bot  Hello▌")  # streaming cursor
    conv.apply(ev.Token(turn=1, text=" world"))
    conv.apply(ev.ReplyDone(turn=1, text="Hello world", n_tokens=2, tok_per_s=31.25, ttft_s=0.05, latency_s=0.412))
    text = plain_text(conv.window(80, 24, 0)[0])
    assert "bot  Hello world\n     412 ms after speech · 2 tokens · 31.2 tok/s" in text
    conv.apply(ev.UtteranceEvent(turn=2, text="more"))
    conv.apply(ev.Token(turn=2, text="cut"))
    conv.apply(ev.Interrupted(turn=2, reason="cancel", kept_text="cut"))
    conv.apply(ev.ReplyDone(turn=2, text="cut", n_tokens=1, tok_per_s=0.0, ttft_s=0.02, interrupted=True))
    assert "bot  cut\n     interrupted (cancel) · first token 20 ms · 1 tokens" in plain_text(conv.window(80, 24, 0)[0])


def test_a_turn_sent_again_after_a_failure_starts_a_new_reply():
    """The remote backend's retry: the failed attempt's partial reply stays, cut; the new one does not append."""
    conv = Conversation()
    conv.apply(ev.UtteranceEvent(turn=1, durations=(2.0,)))
    conv.apply(ev.ReplyStart(turn=1, ttft_s=0.05))
    conv.apply(ev.Token(turn=1, text="Half a"))
    conv.apply(ev.ReplyDone(turn=1, text="Half a", n_tokens=0, tok_per_s=0.0, ttft_s=0.05, interrupted=True))
    conv.apply(ev.ReplyStart(turn=1, ttft_s=0.04))
    conv.apply(ev.Token(turn=1, text="Whole answer."))
    text = plain_text(conv.window(80, 24, 0)[0])
    assert "bot  Half a\n" in text and "bot  Whole answer.▌" in text
    assert "Half aWhole" not in text


def test_a_sent_turn_shows_at_once_until_the_model_takes_it():
    conv = Conversation()
    conv.apply(ev.UtteranceEvent(turn=1, durations=(2.0,)))
    conv.apply(ev.Token(turn=1, text="streaming"))
    conv.pending("first question")
    conv.pending("what is this?", file="bird.wav")
    conv.pending("", file="missing.wav")
    text = plain_text(conv.window(80, 24, 0)[0])
    assert "you  first question  (waiting)" in text and "you  [file bird.wav] what is this?  (waiting)" in text
    conv.apply(ev.ReplyDone(turn=1, text="streaming", n_tokens=1, tok_per_s=1.0, ttft_s=0.1))
    conv.apply(ev.UtteranceEvent(turn=2, text="first question"))
    conv.apply(
        ev.ErrorEvent(
            "audio file missing.wav does not exist; check the path", "audio", dropped=True, file="missing.wav"
        )
    )
    text = plain_text(conv.window(80, 24, 0)[0])
    assert "(waiting)" in text and "first question  (waiting)" not in text and "missing.wav  (waiting)" not in text
    assert text.index("streaming") < text.index("you  first question")  # the turn moved below the reply
    conv.apply(ev.UtteranceEvent(turn=3, durations=(1.5,), text="what is this?"))
    assert "(waiting)" not in plain_text(conv.window(80, 24, 0)[0])


@pytest.mark.parametrize("width", [20, 37, 80])
def test_wrapping_fits_the_width_and_keeps_every_word(width):
    words = "the quick 日本語の文 brown fox supercalifragilisticexpialidocious-and-more jumps".split()
    text = " ".join(words * 3)
    lines = wrap([("", text)], width, indent=5)
    assert all(sum(get_cwidth(t) for _, t in line) <= width for line in lines)
    assert "".join(_all_text([line]).strip() for line in lines).replace(" ", "") == text.replace(" ", "")


def test_a_streamed_reply_wraps_exactly_like_the_whole_text():
    rng = np.random.default_rng(0)
    words = ["a", "word", "longer-words", "日本語", "x" * 90, "\n", "\n\n", "  ", "tail "]
    text = "".join(words[i] + " " for i in rng.integers(0, len(words), 400))
    streamed = ReplyEntry(1)
    pos = 0
    while pos < len(text):
        step = int(rng.integers(1, 12))
        streamed.text += text[pos : pos + step]
        pos += step
        if rng.random() < 0.2:
            assert plain_text(streamed.render(60)) == plain_text(ReplyEntry(1, text=streamed.text).render(60))
    streamed.render(33)  # a resize on the way starts over at the new width
    assert plain_text(streamed.render(60)) == plain_text(ReplyEntry(1, text=text).render(60))
    assert all(sum(get_cwidth(t) for _, t in line) <= 60 for line in streamed.render(60))


def test_the_pane_follows_the_end_and_scrolls_back():
    conv = Conversation()
    for n in range(1, 201):
        conv.apply(ev.UtteranceEvent(turn=n, text=f"question {n}"))
        conv.apply(ev.Token(turn=n, text=f"answer {n}"))
        conv.apply(ev.ReplyDone(turn=n, text=f"answer {n}", n_tokens=1, tok_per_s=1.0, ttft_s=0.1))
    lines, offset = conv.window(80, 20, 0)
    assert len(lines) == 20 and offset == 0
    assert "answer 200" in plain_text(lines[-3:])
    up, offset = conv.window(80, 20, 18)
    assert offset == 18 and "answer 200" not in plain_text(up) and "question 197" in plain_text(up)
    top, offset = conv.window(80, 20, 10**6)  # clamped to the start of the history
    assert offset < 10**6 and "question 1\n" in plain_text(top) + "\n"


@pytest.mark.parametrize("extra", [0, 1, 5, 30])
def test_a_short_history_shows_from_its_first_line(extra):
    conv = Conversation()
    conv.note("first note")
    for n in range(1, 4):
        conv.apply(ev.UtteranceEvent(turn=n, text=f"question {n}"))
    lines, offset = conv.window(80, 12 + extra, 0)  # 3 lines per turn, 2 for the note: 11 lines, 1 blank less
    assert offset == 0 and plain_text(lines[:1]) == "  ·  first note" and plain_text(lines[-1:]) == "you  question 3"


def test_a_scrolled_back_view_stays_still_while_a_reply_streams_below():
    conv = Conversation()
    for n in range(1, 30):
        conv.apply(ev.UtteranceEvent(turn=n, text=f"question {n}"))
        conv.apply(ev.ReplyDone(turn=n, text=f"answer {n}", n_tokens=1, tok_per_s=1.0, ttft_s=0.1))
    conv.growth(80)
    offset = 25
    before, offset = conv.window(80, 20, offset)
    conv.apply(ev.UtteranceEvent(turn=30, durations=(2.0,)))
    for i in range(50):
        conv.apply(ev.Token(turn=30, text=f"word{i} "))
        offset += conv.growth(80)
        assert conv.window(80, 20, offset)[0] == before
    conv.pending("queued")
    assert conv.growth(80) == 2  # the entry and the blank line under it
    conv.apply(ev.UtteranceEvent(turn=31, text="queued"))  # replaces the waiting entry
    assert conv.growth(80) == 0


def test_the_status_bar():
    s = StatusModel(
        mode="ptt", silence_warning_s=5.0, model="Qwen2-Audio-7B-Instruct · cpu · float32", device="pulse", tiny=True
    )
    s.apply(ev.Status("thinking"))
    s.apply(ev.Level(dbfs=-30.0))
    s.apply(ev.ReplyStart(turn=1, ttft_s=0.1, latency_s=0.6543))
    s.apply(ev.ReplyDone(turn=1, text="x", n_tokens=10, tok_per_s=42.04, ttft_s=0.1, latency_s=0.6543))
    line1, line2 = plain_text([s.line1(80, 0.0)]), plain_text([s.line2(80)])
    assert len(line1) == 80 and len(line2) == 80
    assert "push-to-talk" in line1 and "thinking" in line1 and "█████░░░░░ -30 dB" in line1
    assert "latency 654 ms · 42.0 tok/s" in line1
    assert line2.startswith(" tiny random-weight demo model: replies are noise ")
    assert line2.endswith("  Qwen2-Audio-7B-… · in: pulse ")  # the model name shortened to keep both visible
    s.tiny = False
    assert "Qwen2-Audio-7B-Instruct · cpu · float32 · in: pulse " in plain_text([s.line2(80)])
    s.tiny = True
    s.device = "Built-in Audio Analog Stereo monitor of the null sink"
    line2 = plain_text([s.line2(80)])
    assert len(line2) == 80 and line2.endswith(" Qwen2-Audio-… · in: Built-i… ")
    s.apply(ev.Level(dbfs=-120.0, silent_s=4.9))
    assert "no input signal" not in plain_text([s.line1(80, 0.0)])
    s.apply(ev.Level(dbfs=-120.0, silent_s=6.0))
    assert "no input signal for 6 s: mic muted or dead?  latency 654 ms" in plain_text([s.line1(120, 0.0)])
    assert "no input 6 s: mic muted?  654 ms · 42 tok/s" in plain_text([s.line1(80, 0.0)])  # shorter at 80
    s.recording_since = 100.0
    assert "● REC  2.5 s" in plain_text([s.line1(80, 102.5)])
    s.apply(ev.Status("device_lost", detail="input device unplugged"))
    s.recording_since = None
    assert "device lost: input device unplugged" in plain_text([s.line1(120, 0.0)])


def test_sparkline_maps_levels_to_blocks():
    assert sparkline([-80.0, -60.0, -33.0, -6.0, 0.0]) == "▁▁▅██"
    assert sparkline([]) == ""
    assert len(sparkline([-20.0] * 100, width=12)) == 12


def test_the_tiny_model_is_recognised(tmp_path):
    assert is_tiny_model(Config(), "tiny Qwen2-Audio · cpu") is True
    (tmp_path / "README.md").write_text("# tiny Qwen2-Audio (voiceassist)\n")
    import dataclasses

    cfg = Config()
    assert is_tiny_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(tmp_path))), "x")
    assert not is_tiny_model(cfg, "Qwen2-Audio-7B-Instruct · cuda:0 · bf16")


def test_commands_parse_with_hints():
    assert cmds.parse("/save 'my chats/today.md'") == cmds.Parsed("save", ("my chats/today.md",))
    assert cmds.parse("/MODE PTT") == cmds.Parsed("mode", ("ptt",))
    assert cmds.parse("/file a.wav what is this?") == cmds.Parsed("file", ("a.wav", "what", "is", "this?"))
    assert cmds.parse("/exit").name == "quit"
    with pytest.raises(cmds.CommandError, match=r"unknown command /frobnicate; type /help"):
        cmds.parse("/frobnicate")
    with pytest.raises(cmds.CommandError, match=r"did you mean /mode"):
        cmds.parse("/mo")
    with pytest.raises(cmds.CommandError, match=r"/mode handsfree\|ptt"):
        cmds.parse("/mode walkie")
    with pytest.raises(cmds.CommandError, match="needs a path"):
        cmds.parse("/file")


def test_tab_completion(tmp_path):
    comp = cmds.CommandCompleter()

    def complete(text):
        return [c.text for c in comp.get_completions(Document(text, len(text)), CompleteEvent())]

    assert complete("/") == ["/" + c.name + " " for c in cmds.COMMANDS]
    assert complete("/m") == ["/mode ", "/mute "]
    assert complete("/mode p") == ["ptt"]
    assert complete("/tts ") == ["on", "off"]
    (tmp_path / "speech.wav").write_bytes(b"")
    assert complete(f"/file {tmp_path}/sp") == ["eech.wav"]
    assert complete("hello /m") == []


class _Calls:
    """A stand-in for the App that records the push-to-talk calls (only the key timing is under test)."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []
        self.t = 0.0

        self.ptt_held = False  # as App.ptt_held: set by a press, cleared by a release or by the app itself

    def ptt_press(self):
        self.calls.append(("press", self.t))
        self.ptt_held = True

    def ptt_release(self):
        self.calls.append(("release", self.t))
        self.ptt_held = False


def _drive(presses: list[float], until: float) -> list[tuple[str, float]]:
    """Key presses at the given times (s), ticks every 10 ms, release window 0.6 s."""
    app = _Calls()
    ptt = PushToTalk(app, release_s=0.6, clock=lambda: app.t)
    todo = sorted(presses)
    for step in range(int(until * 100) + 1):
        app.t = round(step * 0.01, 2)
        while todo and todo[0] <= app.t:
            todo.pop(0)
            ptt.press()
        ptt.tick()
    return app.calls


def test_push_to_talk_toggle_and_hold():
    # Press, press again 2 s later: one recording of 2 s (+ the 0.25 s wait that tells a tap from a hold).
    assert _drive([0.0, 2.0], 4.0) == [("press", 0.0), ("release", 2.25)]
    # Held: the first auto-repeat after 660 ms (X11's default delay), then every 40 ms for 3 s.
    held = [0.0] + [0.66 + 0.04 * i for i in range(60)]
    calls = _drive(held, 6.0)
    assert calls[0] == ("press", 0.0) and calls[1][0] == "release" and len(calls) == 2
    assert held[-1] + 0.6 <= calls[1][1] <= held[-1] + 0.63
    # Two separate recordings.
    assert [c for c, _ in _drive([0.0, 1.0, 3.0, 4.0], 6.0)] == ["press", "release", "press", "release"]


def test_push_to_talk_follows_a_recording_the_app_ended():
    # The app stops the recording at its length limit (no key involved): the indicator goes, and the next
    # press starts a new recording instead of "stopping" the one that already ended.
    app = _Calls()
    ptt = PushToTalk(app, release_s=0.6, clock=lambda: app.t)
    ptt.press()
    app.t = 1.0
    assert not ptt.tick() and ptt.recording
    app.ptt_held = False  # the limit was reached
    assert ptt.tick() and not ptt.recording and ptt.since is None
    app.t = 2.0
    ptt.press()
    assert ptt.recording and app.calls == [("press", 0.0), ("press", 2.0)]
    # A press the app refuses (muted, or not in push-to-talk mode) shows no recording either.
    app2 = _Calls()
    app2.ptt_press = lambda: app2.calls.append(("refused", app2.t))
    ptt2 = PushToTalk(app2, release_s=0.6, clock=lambda: app2.t)
    ptt2.press()
    ptt2.tick()
    assert not ptt2.recording


def _history():
    sr = 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(1.5 * sr)) / sr)).astype(np.float32)
    return [
        {
            "turn": 1,
            "kind": "audio",
            "text": "",
            "audios": [tone, tone[:8000]],
            "durations": [1.5, 0.5],
            "reply": "A tone.\x1b[2J",
            "interrupted": False,
            "latency_s": 0.4,
        },
        {"turn": 2, "kind": "text", "text": "and now?", "audios": [], "reply": "Half", "interrupted": True},
    ]


def test_save_writes_markdown_json_and_wavs(tmp_path):
    saved = save_transcript(_history(), tmp_path / "chat", meta={"model": "tiny"})
    assert saved.markdown == tmp_path / "chat" / "transcript.md"
    doc = json.loads(saved.json.read_text())
    assert doc["format"] == "voiceassist-transcript" and doc["model"] == "tiny"
    assert [t["turn"] for t in doc["turns"]] == [1, 2]
    assert doc["turns"][0]["reply"] == "A tone." and doc["turns"][1]["interrupted"] is True
    assert doc["turns"][0]["audio"] == [
        {"file": "audio/turn-001-1.wav", "seconds": 1.5},
        {"file": "audio/turn-001-2.wav", "seconds": 0.5},
    ]
    data, sr = sf.read(str(tmp_path / "chat" / "audio" / "turn-001-1.wav"), dtype="float32")
    assert sr == 16000 and len(data) == 24000 and abs(float(np.max(data)) - 0.3) < 1e-3
    md = saved.markdown.read_text()
    assert "**You** (turn 1): [audio 1.5 s](audio/turn-001-1.wav) [audio 0.5 s](audio/turn-001-2.wav)" in md
    assert "> and now?" in md and "_(interrupted)_" in md and "\x1b" not in md
    # Saving again replaces our own files; a stranger's file is never overwritten.
    save_transcript(_history()[:1], tmp_path / "chat")
    assert len(json.loads(saved.json.read_text())["turns"]) == 1
    (tmp_path / "notes.md").write_text("my notes")
    with pytest.raises(VoiceAssistError, match="not a voiceassist transcript"):
        save_transcript(_history(), tmp_path / "notes.md")
    assert (tmp_path / "notes.md").read_text() == "my notes"
    named = save_transcript(_history(), tmp_path / "today.json")
    assert named.markdown == tmp_path / "today.md" and named.clips[0].parent == tmp_path / "today-audio"


def test_library_messages_on_stderr_become_notes_not_screen_garbage():
    import os
    import subprocess
    import sys

    got: list[str] = []
    before = os.fstat(2)
    with StderrCapture(got.append) as cap:
        os.write(2, b"ALSA lib pcm.c:8526:(snd_pcm_recover) underrun occurred\n")
        with open(2, "w", closefd=False) as fd2:  # as sys.stderr does outside pytest (which swaps it)
            print("a Python warning\x1b[2J", file=fd2)
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child\\n')"], check=True)
        for _ in range(MAX_LINES + 10):
            os.write(2, f"flood {_}\n".encode())
        os.write(2, b"no newline at the end")
    assert os.fstat(2).st_ino == before.st_ino  # fd 2 is the terminal (or pytest's file) again
    assert cap._thread is not None and not cap._thread.is_alive()
    assert got[:3] == [
        "ALSA lib pcm.c:8526:(snd_pcm_recover) underrun occurred",
        "a Python warning\x1b[2J",
        "from a child",
    ]  # (the pane strips control sequences when it shows a note)
    assert len(got) == MAX_LINES + 1 and "dropped" in got[-1]
