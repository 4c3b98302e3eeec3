"""Sampling as the model ships it, the repetition penalty against ``generate``, padded ids, and the static cache +
compiled decode step against eager (tiny random-weight Qwen2-Audio, float32, real espeak speech)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import pytest
import torch
from support.reference import RefTurn, conversation_inputs, tiny_float32, until_eos
from support.speech import speech_16k

from voiceassist.backend import UserTurn
from voiceassist.config import Config, GenerationConfig, ModelConfig
from voiceassist.model.decoding import Sampler, Sampling, resolve_sampling
from voiceassist.model.session import STRUCTURAL_TOKENS, Session

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def tiny():
    return tiny_float32()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    return [speech_16k(p, tmp) for p in ("What is the weather like?", "Tell me more about it.", "Thanks a lot.")]


SHIPPED = {"do_sample": True, "temperature": 0.7, "top_p": 0.5, "top_k": 20, "repetition_penalty": 1.1}


def test_the_models_settings_are_the_default_and_config_overrides_them():
    assert resolve_sampling(GenerationConfig(), SHIPPED) == Sampling(True, 0.7, 0.5, 20, 1.1)
    # Nothing shipped, nothing configured: transformers' own defaults (greedy), as generate() does.
    assert resolve_sampling(GenerationConfig(), {}) == Sampling(False, 1.0, 1.0, 50, 1.0)
    mine = GenerationConfig(temperature=0.9, top_k=0, repetition_penalty=1.3)
    assert resolve_sampling(mine, SHIPPED) == Sampling(True, 0.9, 0.5, 0, 1.3)
    assert not resolve_sampling(GenerationConfig(temperature=0.0), SHIPPED).do_sample  # --greedy
    assert not resolve_sampling(GenerationConfig(top_p=0.0), SHIPPED).do_sample
    # A configured temperature samples even where the model ships greedy decoding.
    assert resolve_sampling(GenerationConfig(temperature=0.5), {"do_sample": False}).do_sample


def test_generation_config_json_of_the_model_folder_is_read(tmp_path):
    from voiceassist.model.loading import load_session
    from voiceassist.model.tiny import tiny_model_dir

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir(), folder)
    gc = json.loads((folder / "generation_config.json").read_text())
    gc.update(SHIPPED)
    (folder / "generation_config.json").write_text(json.dumps(gc))
    config = Config(model=dataclasses.replace(ModelConfig(), name=str(folder)))
    assert load_session(config).sampling == Sampling(True, 0.7, 0.5, 20, 1.1)
    override = dataclasses.replace(config, generation=GenerationConfig(top_k=3, temperature=0.0))
    s = load_session(override)
    assert s.sampling.top_k == 3 and not s.sampling.do_sample


def test_padded_vocabulary_ids_are_never_chosen():
    logits = torch.zeros(16)
    logits[12] = 50.0  # the likeliest id lies in the padding beyond the tokenizer's 10 ids
    greedy = Sampler(Sampling(), 0, [], "cpu", vocab_limit=10)
    assert greedy(logits) < 10
    hot = Sampler(Sampling(True, 2.0, 1.0, 0, 1.0), 0, [], "cpu", vocab_limit=10)
    assert max(hot(logits) for _ in range(200)) < 10
    unmasked = Sampler(Sampling(), 0, [], "cpu")
    assert unmasked(logits) == 12  # the mask is what keeps it out


def test_top_k_one_samples_the_likeliest():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    s = Sampler(Sampling(True, 1.5, 1.0, 1, 1.0), 3, [], "cpu")
    assert {s(logits) for _ in range(50)} == {int(torch.argmax(logits))}


def _session(tiny, **gen) -> Session:
    model, processor = tiny
    g = GenerationConfig(system_prompt=SYSTEM, max_new_tokens=8, temperature=0.0, **gen)
    return Session(model, processor, generation=g)


def _turns(speech):
    return [
        UserTurn(audios=(speech[0],), text="Answer briefly."),
        UserTurn(text="And then? Say it again, again and again."),
        UserTurn(audios=(speech[1], speech[2])),
    ]


def test_repetition_penalty_equals_generate_over_the_whole_conversation(tiny, speech):
    """transformers penalises every id of the input (the whole conversation, audio placeholders and earlier
    replies included) and of the reply so far: the session's greedy replies equal generate()'s, turn by turn."""
    model, processor = tiny
    suppress = [processor.tokenizer.convert_tokens_to_ids(t) for t in STRUCTURAL_TOKENS]
    penalised = _session(tiny, repetition_penalty=1.8)
    plain = _session(tiny)
    ref: list[RefTurn] = []
    differs = False
    for turn in _turns(speech):
        r = penalised.reply(turn, lambda _t: None, threading.Event())
        ref.append(RefTurn(list(turn.audios), turn.text, list(r.reply_ids)))
        inputs = conversation_inputs(processor, SYSTEM, ref)
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=8, do_sample=False, repetition_penalty=1.8, suppress_tokens=suppress
            )
        gen = out[0, inputs["input_ids"].shape[1] :].tolist()
        expected = until_eos(gen, model.generation_config.eos_token_id)
        assert list(r.reply_ids) == expected, (list(r.reply_ids), expected)
        assert list(penalised.ids) == inputs["input_ids"][0].tolist() + list(r.reply_ids)
        differs |= list(plain.reply(turn, lambda _t: None, threading.Event()).reply_ids) != expected
    assert differs  # the penalty changed at least one reply: the comparison above could fail


def test_compiled_static_cache_gives_the_eager_greedy_ids(tiny, speech):
    model, processor = tiny
    g = GenerationConfig(system_prompt=SYSTEM, max_new_tokens=8, temperature=0.0)
    eager = Session(model, processor, generation=g)
    notes: list[str] = []
    compiled = Session(model, processor, generation=g, context_limit=1024, compile=True, on_note=notes.append)
    for turn in _turns(speech):
        a = eager.reply(turn, lambda _t: None, threading.Event())
        b = compiled.reply(turn, lambda _t: None, threading.Event())
        assert list(b.reply_ids) == list(a.reply_ids) and b.n_tokens > 1
    assert notes == [] and callable(compiled._kv._compiled), notes  # the compiled step ran, no fallback
    # Cut back (barge-in) and reset rewind the one static cache; the next turns are still the eager ones.
    eager.truncate_last_reply(eager.turns[-1].reply_text[:3])
    compiled.truncate_last_reply(compiled.turns[-1].reply_text[:3])
    t = UserTurn(text="Why?")
    assert compiled.reply(t).reply_ids == eager.reply(t).reply_ids
    eager.reset()
    compiled.reset()
    t = UserTurn(audios=(speech[2],))
    assert compiled.reply(t).reply_ids == eager.reply(t).reply_ids


def test_a_failing_compile_falls_back_to_eager_and_says_so_once(tiny, speech, monkeypatch):
    model, processor = tiny

    def broken(*_a, **_k):
        raise RuntimeError("inductor: no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    g = GenerationConfig(system_prompt=SYSTEM, max_new_tokens=6, temperature=0.0)
    notes: list[str] = []
    s = Session(model, processor, generation=g, context_limit=1024, compile=True, on_note=notes.append)
    eager = Session(model, processor, generation=g)
    for turn in _turns(speech)[:2]:
        assert s.reply(turn).reply_ids == eager.reply(turn).reply_ids
    assert len(notes) == 1 and "decoding eagerly" in notes[0] and "\n" not in notes[0], notes
