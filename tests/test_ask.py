"""`voiceassist ask` on real espeak speech with the tiny model (random weights: the replies are noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from support.reference import RefTurn, conversation_inputs, reference_reply
from support.speech import espeak, silence, speech_16k

from voiceassist import cli
from voiceassist.model.chunking import split_long_audio
from voiceassist.textsafe import strip_controls

KEYS = ["turn", "audio_s", "prompt_ids", "reply_ids", "reply", "context_tokens", "ttft_s", "tok_per_s"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.set_num_threads(1)  # see tests/test_session.py
    tmp = tmp_path_factory.mktemp("ask")
    short = espeak("What is the capital of France?", tmp / "q1.wav")  # 22.05 kHz: ask resamples
    # 36 s: speech, a pause at 27-28.5 s, more speech: split in two chunks, the cut inside the pause.
    words = speech_16k("Tell me everything about the history of the bicycle, please.", tmp)
    long = np.concatenate(
        [np.tile(words, 8)[: 27 * 16000], silence(1.5), np.tile(words, 3)[: int(7.5 * 16000)]]
    ).astype(np.float32)
    sf.write(tmp / "long.flac", long, 16000)
    return [short, tmp / "long.flac"]


def ask_json(capsys, files, *extra):
    code = cli.main(["ask", *map(str, files), "--model", "tiny", "--greedy", "--max-new-tokens", "6", "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def test_json_lines_concatenate_to_the_conversation(capsys, files):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from voiceassist.audio.files import read_audio_16k
    from voiceassist.model.tiny import tiny_model_dir

    records = ask_json(capsys, files, "--text", "What's that?")
    assert [list(r) for r in records] == [KEYS, KEYS]
    assert [r["turn"] for r in records] == [1, 2]
    audios = [split_long_audio(read_audio_16k(f)) for f in files]
    assert [len(a) for a in audios] == [1, 2]
    assert records[1]["audio_s"] == pytest.approx(36.0, abs=0.01)
    assert all(r["ttft_s"] > 0 and r["context_tokens"] > 0 for r in records)

    processor = AutoProcessor.from_pretrained(tiny_model_dir())
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir()).eval()
    turns = [RefTurn(a, "What's that?", r["reply_ids"]) for a, r in zip(audios, records)]
    whole = conversation_inputs(processor, "You are a helpful assistant.", turns)["input_ids"][0].tolist()
    joined = [i for r in records for i in r["prompt_ids"] + r["reply_ids"]]
    assert joined == whole + records[-1]["reply_ids"]
    assert records[-1]["context_tokens"] == len(joined)
    # The last greedy reply equals a from-scratch run over the whole conversation.
    _, reply, _ = reference_reply(model, processor, "You are a helpful assistant.", turns, 6)
    assert records[-1]["reply_ids"] == reply
    assert records[-1]["reply"] == processor.tokenizer.decode(reply, skip_special_tokens=True)


def test_text_output_is_the_reply_with_controls_stripped(capsys, files):
    records = ask_json(capsys, files)
    code = cli.main(["ask", *map(str, files), "--model", "tiny", "--greedy", "--max-new-tokens", "6"])
    captured = capsys.readouterr()
    assert code == 0
    expected = "".join(f"[{r['turn']}] {f}\n{strip_controls(r['reply'])}\n" for r, f in zip(records, files))
    assert captured.out == expected
    assert "\x1b" not in captured.out
    assert "random weights" in captured.err  # the tiny model says so


def test_text_only_turn(capsys):
    records = ask_json(capsys, [], "--text", "Hello!")
    assert len(records) == 1 and records[0]["audio_s"] == 0


def test_split_cuts_inside_the_pause(files):
    from voiceassist.audio.files import read_audio_16k

    chunks = split_long_audio(read_audio_16k(files[1]))
    assert len(chunks[0]) <= 30 * 16000 and 27 * 16000 < len(chunks[0]) <= 28.5 * 16000
    assert sum(len(c) for c in chunks) == 36 * 16000


@pytest.mark.parametrize("content", [b"", b"not audio at all"])
def test_bad_file_is_one_line_and_nonzero(tmp_path, capsys, files, content):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    code = cli.main(["ask", str(files[0]), str(bad), "--model", "tiny"])
    captured = capsys.readouterr()
    assert code == 3 and captured.out == ""
    assert captured.err.count("\n") == 1 and "bad.wav" in captured.err
