"""Memory planned from the config before loading, dtype by native support, the quantization skip list, and the
random-weight 7B shape. No GPU here: the GPU's answers (free memory, compute capability) are injected where a
test needs them; the arithmetic, the decisions and the messages are the real ones."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from voiceassist import cli
from voiceassist.config import ModelConfig
from voiceassist.errors import ModelSettingError
from voiceassist.model import loading, memory
from voiceassist.model.memory import GiB, MiB

GB = 1e9


@pytest.fixture(scope="module")
def seven_b():
    return memory.shipped_7b_config()


def test_the_7b_shape_and_its_memory_by_dtype(seven_b):
    bf16 = memory.estimate(seven_b, "bfloat16")
    # The published 7B: ~8.40e9 parameters, 16.8 GB of bf16 weights, 0.5 MiB of KV cache per token.
    assert 8.35e9 < bf16.parameters < 8.45e9, bf16.parameters
    assert bf16.weights_bytes == 2 * bf16.parameters
    assert bf16.kv_bytes_per_token == 512 * 1024 and bf16.kv_bytes_per_token * 8192 == 4 * GiB
    f32 = memory.estimate(seven_b, "float32")
    assert f32.weights_bytes == 4 * f32.parameters and f32.kv_bytes_per_token == 1 * MiB
    q4 = memory.estimate(seven_b, "bfloat16", "4bit")
    q8 = memory.estimate(seven_b, "bfloat16", "8bit")
    # 4-bit: the decoder's linear layers at 4.5 bits; the embedding, LM head (2 × 1.28 GB) and audio encoder
    # (~1.3 GB) stay bf16.
    assert 6.5 * GB < q4.weights_bytes < 8.0 * GB, q4.weights_bytes / GB
    assert q4.weights_bytes < q8.weights_bytes < bf16.weights_bytes
    assert q4.kv_bytes_per_token == bf16.kv_bytes_per_token  # the cache is in the compute dtype
    assert 0.5 * GB < bf16.working_bytes < 2 * GB


def test_quantization_keeps_the_audio_tower_projector_and_lm_head(seven_b):
    """The BitsAndBytesConfig loading builds, through transformers 5.24's own skip-list handling and matching."""
    from torch import nn
    from transformers import BitsAndBytesConfig
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = memory.meta_model(seven_b)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]

    def converted(q) -> set[str]:
        skip = HfQuantizer.get_modules_to_not_convert(model, q.llm_int8_skip_modules, model._keep_in_fp32_modules)
        return {n for n in linears if should_convert_module(n, skip)}

    kept = ("model.audio_tower.", "model.multi_modal_projector.", "lm_head")
    for q in ("4bit", "8bit"):
        cfg = loading.quantization_config(q, torch.bfloat16)
        got = converted(cfg)
        assert not [n for n in got if n.startswith(kept)], q
        decoder = [n for n in linears if n.startswith("model.language_model.")]
        assert set(decoder) == got and len(decoder) == 32 * 7  # q, k, v, o, gate, up, down in each layer
        assert got == set(memory.quantized_linear_names(model))  # what the memory estimate counts
    # Without the list, transformers would have quantized the encoder and the projector (its default skips
    # only the LM head): the list is what keeps them.
    default = converted(BitsAndBytesConfig(load_in_4bit=True))
    assert any(n.startswith("model.audio_tower.") for n in default)
    assert any(n.startswith("model.multi_modal_projector.") for n in default)


def _plan(monkeypatch, free: int, **model):
    monkeypatch.setattr(memory, "free_on", lambda device: free)
    monkeypatch.setattr(memory, "ram_available", lambda: free)
    mc = dataclasses.replace(ModelConfig(name="random-7b", device="cpu", dtype="bfloat16"), **model)
    return loading.plan_load(mc, None)


def test_enough_memory_keeps_the_context(monkeypatch, seven_b):
    plan = _plan(monkeypatch, 64 * 10**9)
    assert plan.context_limit == 8192 and plan.notes == () and plan.dtype == torch.bfloat16


def test_too_little_memory_lowers_the_context_and_says_so(monkeypatch, seven_b):
    need = memory.estimate(seven_b, "bfloat16")
    free = need.weights_bytes + need.working_bytes + 4096 * need.kv_bytes_per_token + 100 * MiB
    plan = _plan(monkeypatch, free)
    assert plan.context_limit == 4096
    assert len(plan.notes) == 1 and "lowered from 8192 to 4096" in plan.notes[0], plan.notes


def test_far_too_little_memory_is_one_line_naming_what_would_fit(monkeypatch, capsys, seven_b):
    with pytest.raises(ModelSettingError) as info:
        _plan(monkeypatch, 12 * 10**9, dtype="float32")
    msg = str(info.value)
    assert "not enough memory" in msg and "12.0 GB is free" in msg and "--dtype bfloat16" not in msg, msg
    with pytest.raises(ModelSettingError) as info:
        _plan(monkeypatch, 20 * 10**9, dtype="float32")
    assert "what would fit: --dtype bfloat16" in str(info.value), str(info.value)
    # Through the command line: one line, exit 2, no traceback, nothing loaded.
    monkeypatch.setattr(memory, "free_on", lambda device: 8 * 10**9)
    monkeypatch.setattr(memory, "ram_available", lambda: 8 * 10**9)
    code = cli.main(["ask", "--text", "hi", "--model", "random-7b", "--device", "cpu", "--dtype", "bfloat16"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("voiceassist: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("voiceassist: error: not enough memory for random-7b in bfloat16 on cpu"), err


def test_gpu_refusal_names_4bit_a_shorter_context_and_the_cpu(monkeypatch, seven_b):
    monkeypatch.setattr(loading, "resolve_device", lambda d: "cuda:0")
    monkeypatch.setattr(loading, "_check_quantization", lambda mc, d: None)
    monkeypatch.setattr(memory, "gpu_bf16_native", lambda d: True)
    monkeypatch.setattr(memory, "free_on", lambda d: 16 * 10**9)  # a 16 GB card: bf16 weights alone do not fit
    monkeypatch.setattr(memory, "ram_available", lambda: 23 * 10**9)
    with pytest.raises(ModelSettingError) as info:
        loading.plan_load(ModelConfig(name="random-7b", device="cuda"), None)
    msg = str(info.value)
    assert "--quantization 4bit" in msg and "--device cpu" in msg and "on cuda:0" in msg, msg


def test_cpu_dtype_auto(monkeypatch, seven_b):
    notes: list[str] = []
    monkeypatch.setattr(memory, "cpu_bf16_native", lambda: True)
    assert loading.resolve_dtype("auto", "cpu", "random-7b", seven_b, 8192, notes) == torch.bfloat16
    assert loading.resolve_dtype("auto", "cpu", "tiny", seven_b, 8192, notes) == torch.float32  # exactness
    monkeypatch.setattr(memory, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(memory, "ram_available", lambda: 128 * 10**9)
    assert loading.resolve_dtype("auto", "cpu", "random-7b", seven_b, 8192, notes) == torch.float32
    assert notes == []
    monkeypatch.setattr(memory, "ram_available", lambda: 23 * 10**9)  # this machine: float32's 34 GB cannot fit
    assert loading.resolve_dtype("auto", "cpu", "random-7b", seven_b, 8192, notes) == torch.bfloat16
    assert len(notes) == 1 and "no native bf16" in notes[0]


def test_gpu_bf16_only_where_the_chosen_gpu_has_it(monkeypatch):
    asked: list[object] = []

    def capability(device=None):
        asked.append(device)
        return (7, 5)  # a T4

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation: not asked
    assert memory.gpu_bf16_native("cuda:1") is False
    assert asked == [torch.device("cuda:1")]  # the chosen device, not the current one
    assert loading.resolve_dtype("auto", "cuda:1") == torch.float16
    with pytest.raises(ModelSettingError) as info:
        loading.resolve_dtype("bfloat16", "cuda:1")
    msg = str(info.value)
    assert "no native bf16" in msg and "compute capability 7.5" in msg and "--dtype float16" in msg
    assert ModelSettingError.exit_code == 2
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert loading.resolve_dtype("auto", "cuda:0") == torch.bfloat16


def test_random_weights_are_built_in_memory_at_a_given_shape(tmp_path, monkeypatch):
    """random-7b's builder at a small shape (the full one is 16.8 GB: scripts/bench_gpu.py and BENCHMARKS.md)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from voiceassist.model.random7b import build_random_7b, random_7b_config
    from voiceassist.model.tiny import build_tiny_processor

    processor = build_tiny_processor()
    cfg = random_7b_config(processor.tokenizer)
    assert (
        cfg.get_text_config().vocab_size == 156032
        and cfg.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    )
    cfg.get_text_config().num_hidden_layers = 1
    cfg.get_text_config().vocab_size = 4096  # padded beyond the tokenizer, as the 7B's is
    cfg.audio_config.encoder_layers = 1
    model = build_random_7b(processor, "cpu", torch.bfloat16, config=cfg)
    assert list(tmp_path.iterdir()) == []  # no file written anywhere we were pointed at
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in params.values())
    assert all(torch.isfinite(p.float()).all() for p in params.values())
    assert torch.equal(params["model.language_model.norm.weight"].float(), torch.ones(4096))
    w = params["model.language_model.layers.0.mlp.up_proj.weight"].float()
    assert 0.015 < float(w.std()) < 0.025 and float(w.mean().abs()) < 1e-3
    inv = model.model.language_model.rotary_emb.inv_freq
    assert inv.device.type == "cpu" and torch.isfinite(inv).all() and float(inv[0]) == 1.0
    # It runs: a reply from a session over it (noise), the padded ids never chosen.
    import numpy as np

    from voiceassist.backend import UserTurn
    from voiceassist.config import GenerationConfig
    from voiceassist.model.session import Session

    s = Session(model, processor, generation=GenerationConfig(max_new_tokens=8, temperature=0.0))
    r = s.reply(UserTurn(audios=(np.sin(np.arange(16000) / 5.0).astype(np.float32) * 0.1,), text="hi"))
    assert r.n_tokens >= 1 and max(r.reply_ids) < len(processor.tokenizer)


def test_doctor_json_reports_the_model_and_a_verdict(capsys, monkeypatch):
    import json

    monkeypatch.setattr(memory, "ram_available", lambda: 23 * 10**9)
    code = cli.main(["doctor", "--model", "random-7b", "--dtype", "bfloat16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert 8.35e9 < out["model"]["parameters"] < 8.45e9
    assert out["model"]["weights_bytes"] == 2 * out["model"]["parameters"]
    assert out["model"]["kv_bytes_per_token"] == 512 * 1024
    assert out["fits"] is True and isinstance(out["advice"], list) and out["device"]["name"] == "cpu"
    monkeypatch.setattr(memory, "ram_available", lambda: 8 * 10**9)
    code = cli.main(["doctor", "--model", "random-7b", "--dtype", "float32", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["fits"] is False and out["model"]["kv_bytes_per_token"] == 1024 * 1024
    assert any("not enough memory" in line for line in out["advice"]), out["advice"]


def test_gpu_loading_without_accelerate_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    from voiceassist.errors import ModelError

    with pytest.raises(ModelError) as info:  # before any weight is read: no GPU is touched
        loading._load("/nonexistent", ModelConfig(), "cuda:0", torch.bfloat16)
    assert "accelerate" in str(info.value) and "pip install 'voiceassist[model]'" in str(info.value)
