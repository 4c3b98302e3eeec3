"""The tiny offline Qwen2-Audio, `make-tiny-model`, and loading a model with one-line errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import pytest
import torch

from voiceassist import cli
from voiceassist.config import Config, ModelConfig
from voiceassist.errors import ModelError
from voiceassist.model.loading import load_session
from voiceassist.model.tiny import SPECIAL_TOKENS, tiny_model_dir


def config(**model) -> Config:
    return Config(model=dataclasses.replace(ModelConfig(), **model))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # see tests/test_session.py: OpenMP spinning on a loaded 2-core machine


def test_make_tiny_model_writes_a_loadable_deterministic_model(tmp_path, capsys):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    target = tmp_path / "tiny"
    assert cli.main(["make-tiny-model", str(target)]) == 0
    assert str(target) in capsys.readouterr().out
    # Seeded: the same bytes as the cached copy, build after build.
    assert (target / "model.safetensors").read_bytes() == (tiny_model_dir() / "model.safetensors").read_bytes()
    assert (target / "tokenizer.json").read_bytes() == (tiny_model_dir() / "tokenizer.json").read_bytes()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(target)
    processor = AutoProcessor.from_pretrained(target)
    text, audio = model.config.text_config, model.config.audio_config
    assert text.hidden_size // text.num_attention_heads >= 32  # vLLM's CPU build needs head size >= 32
    assert audio.d_model // audio.encoder_attention_heads >= 32
    assert processor.feature_extractor.feature_size == 128 and audio.num_mel_bins == 128
    ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == sorted(ids) and len(set(ids)) == 6  # the six special tokens, in the real order
    assert model.config.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    text_ids = processor.tokenizer("Hello world, what's that sound?")["input_ids"]
    assert len(text_ids) < 15  # a trained BPE, not bytes
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # It refuses to overwrite a folder that holds something.
    assert cli.main(["make-tiny-model", str(target)]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an empty folder" in err


def test_load_tiny_session(tmp_path):
    s = load_session(config(name="tiny"))
    assert "tiny" in s.description and "cpu" in s.description and s.dtype == torch.float32
    assert s.context_limit == 8192


def test_load_from_a_folder(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir(), folder)
    s = load_session(config(name=str(folder), attn_implementation="eager"))
    assert s.description.startswith("m ·")


def _one_line_model_error(cfg: Config, *match: str) -> str:
    with pytest.raises(ModelError) as info:
        load_session(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, msg
    return msg


def test_bad_model_folders_are_one_line_errors(tmp_path):
    _one_line_model_error(config(name=str(tmp_path / "missing")), "does not exist")
    _one_line_model_error(config(name=str(tmp_path)), "not a Qwen2-Audio model folder")
    (tmp_path / "f.bin").write_bytes(b"x")
    _one_line_model_error(config(name=str(tmp_path / "f.bin")), "is a file")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _one_line_model_error(config(name=str(llama)), "llama model, not Qwen2-Audio")
    (llama / "config.json").write_text("{not json")
    _one_line_model_error(config(name=str(llama)), "bad JSON")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "qwen2_audio", "text_config": {"model_type": "nope"}}))
    _one_line_model_error(config(name=str(odd)), "cannot read the model config")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir(), broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)  # a truncated download
    _one_line_model_error(config(name=str(broken)), "cannot load the model", "--model tiny")


def test_hub_id_offline_is_one_line_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _one_line_model_error(config(name="Qwen/Qwen2-Audio-7B-Instruct"), "cannot be reached", "--model PATH", "tiny")


def test_hub_unreachable_is_detected_quickly(monkeypatch):
    # A hub endpoint nobody listens on: refused at once, not after the library's ~30 s of retries.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    _one_line_model_error(config(name="someone/some-model"), "cannot be reached")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_asked_but_absent():
    _one_line_model_error(config(name="tiny", device="cuda"), "no CUDA GPU", "--device cpu")
    _one_line_model_error(config(name="tiny", device="cuda:1"), "no CUDA GPU")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantization_without_bitsandbytes():
    from voiceassist.model.loading import _check_quantization

    # The check for a GPU (none here): called with the device a CUDA machine resolves to.
    for q in ("4bit", "8bit"):
        with pytest.raises(ModelError) as info:
            _check_quantization(ModelConfig(quantization=q), "cuda:0")
        assert "bitsandbytes" in str(info.value) and "pip install 'voiceassist[quant]'" in str(info.value)


def test_quantization_on_cpu_is_one_line_exit_2(tmp_path, capsys):
    msg = _one_line_model_error(config(name="tiny", quantization="4bit", device="cpu"), "CUDA GPU only", "none")
    assert "voiceassist[quant]" in msg
    code = cli.main(["ask", "--text", "hi", "--model", "tiny", "--device", "cpu", "--quantization", "8bit"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("voiceassist: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err and "CUDA GPU only" in errors[0], err


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attention_not_installed():
    _one_line_model_error(config(name="tiny", attn_implementation="flash_attention_2"), "flash-attn", "sdpa")


def test_out_of_memory_while_loading(monkeypatch):
    from transformers import Qwen2AudioForConditionalGeneration

    def oom(*_a, **_k):  # injected: there is no GPU here to run out of
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 136.00 MiB")

    monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "from_pretrained", oom)
    _one_line_model_error(config(name="tiny"), "out of memory", "it needs", "--quantization 4bit", "doctor")


def test_cli_reports_a_bad_model_in_one_line(tmp_path, capsys, monkeypatch):
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    code = cli.main(["ask", str(wav), "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == ModelError.exit_code and err.count("\n") == 1 and "does not exist" in err
