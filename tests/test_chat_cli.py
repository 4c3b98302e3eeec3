"""``voiceassist chat`` as a user runs it: a subprocess over espeak speech and the tiny model (random weights)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.kiosk import popen_cli, run_cli
from support.speech import silence, speech_16k

TYPES = {"utterance", "reply_start", "token", "reply_done", "interrupted", "error", "status"}


def _voiceassist(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("chat-cli")
    a, b = d / "a.wav", d / "b.wav"
    sf.write(a, np.concatenate([silence(0.3), speech_16k("How are you today?", d), silence(1.0)]), 16000)
    sf.write(b, np.concatenate([speech_16k("What is two plus two?", d), silence(1.0)]), 16000)
    return a, b


def test_fast_plain_run_writes_json_lines_and_exits_zero(speech):
    a, b = speech
    run = _voiceassist(
        "chat",
        "--model",
        "tiny",
        "--greedy",
        "--max-new-tokens",
        "8",
        "--from-file",
        str(a),
        "--from-file",
        str(b),
        "--fast",
        "--plain",
        "--events",
        "-",
    )
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]  # every stdout line is JSON
    assert records and {r["type"] for r in records} <= TYPES
    assert all(isinstance(r["t"], float) for r in records)
    turns = [r for r in records if r["type"] in ("utterance", "reply_start", "reply_done")]
    assert [r["type"] for r in turns] == ["utterance", "reply_start", "reply_done"] * 2
    assert [r["turn"] for r in turns] == [1, 1, 1, 2, 2, 2]
    start, done = turns[1], turns[2]
    assert start["ttft_s"] > 0 and start["latency_s"] > 0
    assert done["text"] == "".join(r["text"] for r in records if r["type"] == "token" and r["turn"] == 1)
    # the human lines went to stderr, with the tiny model named as such
    assert "you #1: [audio" in run.stderr and "assistant #2" in run.stderr and "tiny" in run.stderr


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--from-file", "/nonexistent/q.wav"], 3, "does not exist"),
        (["--fast"], 2, "--from-file"),
        (["--from-file", "{a}", "--events", "/nonexistent/dir/e.jsonl"], 2, "--events"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(speech, args, code, words):
    args = [x.format(a=speech[0]) for x in args]
    run = _voiceassist("chat", "--model", "tiny", *args, timeout=60)
    assert run.returncode == code
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voiceassist: error:") and words in lines[0], run.stderr


def test_ctrl_c_cancels_the_reply_then_quits_when_idle(speech, tmp_path):
    """SIGINT (Ctrl-C) during a reply cancels that reply; on an idle assistant it quits with status 0. Also:
    no `chat` and no --plain with stdout a pipe gives the plain lines; --events PATH writes the JSON there."""
    import signal
    import time

    a, _ = speech
    events = tmp_path / "events.jsonl"
    # Seeded sampling at a high temperature: the random model's end token is then about 1 in 1000 per step,
    # so the reply runs for hundreds of tokens (a greedy reply to this clip ends by itself after ~86).
    proc = popen_cli(
        *("--model", "tiny", "--temperature", "2", "--top-p", "1", "--seed", "7", "--max-new-tokens", "3000"),
        *("--from-file", str(a), "--fast", "--stay", "--events", str(events)),
    )

    def records() -> list[dict]:
        text = events.read_text() if events.exists() else ""
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_for(pred, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = records()
            if pred(recs):
                return recs
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        raise AssertionError(f"timed out: {[r['type'] for r in records()]}")

    try:
        # SIGINT as soon as the reply has begun, so the signal lands mid-reply however fast the machine is.
        wait_for(lambda rs: any(r["type"] == "token" for r in rs))
        proc.send_signal(signal.SIGINT)
        recs = wait_for(lambda rs: any(r["type"] == "reply_done" for r in rs), 60)
        done = next(r for r in recs if r["type"] == "reply_done")
        assert done["interrupted"], f"the reply ended by itself ({done['n_tokens']} tokens) before SIGINT"
        assert [r["reason"] for r in recs if r["type"] == "interrupted"] == ["cancel"]
        assert done["n_tokens"] < 3000
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # idle now: quit
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
    assert records()[-1]["state"] == "stopped" and "level" not in {r["type"] for r in records()}
    assert "you #1: [audio" in out and "end of speech → first token" in out and "interrupted (cancel)" in out


def test_plain_printer_lines():
    import io

    from voiceassist import events as ev
    from voiceassist.plain import PlainPrinter

    out = io.StringIO()
    p = PlainPrinter(out)
    for e in (
        ev.Status("listening"),
        ev.Status("listening"),
        ev.UtteranceEvent(turn=1, durations=(3.61, 30.0), capped=True, text="hi"),
        ev.ReplyStart(turn=1, ttft_s=0.04, latency_s=0.652),
        ev.Token(turn=1, text="Hello"),
        ev.Token(turn=1, text=" there"),
        ev.ErrorEvent("speech output failed\x1b[2J", "tts"),
        ev.Token(turn=1, text="!"),
        ev.Interrupted(turn=1, reason="barge_in", kept_text="Hello"),
        ev.ReplyDone(
            turn=1, text="Hello there!", n_tokens=3, tok_per_s=30.0, ttft_s=0.04, latency_s=0.652, interrupted=True
        ),
    ):
        p.handle(e)
    assert out.getvalue().splitlines() == [
        "-- listening",
        'you #1: [audio 3.6 s] [audio 30.0 s] (cut at 30 s) "hi"',
        "assistant #1 (652 ms after end of speech):",
        "  Hello there",
        "error (tts): speech output failed",
        "  … !",
        "  [reply 1 interrupted (barge-in); kept 5 characters]",
        "  [3 tokens · 30.0 tok/s · first token 40 ms · end of speech → first token 652 ms · interrupted]",
    ]
