"""The from-scratch reference for the model session: the processor and ``model.generate`` over the whole
conversation, the way Qwen2-Audio's own examples do it (padded encoder, whole prompt prefilled each turn)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PLACEHOLDER = "<|endoftext|>"  # stands for a reply's ids while the template renders (one special token)
STRUCTURAL = ("<|im_start|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")  # the session never samples these


def tiny_float32() -> tuple[Any, Any]:
    """(model, processor): the tiny random-weight Qwen2-Audio in float32, eval mode, for exact comparisons.

    Sets one intra-op thread: the tiny model gains nothing from more, and on a loaded 2-core CI machine OpenMP
    threads spinning against other processes made these tests ~30x slower."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from voiceassist.model.tiny import tiny_model_dir

    torch.set_num_threads(1)
    path = tiny_model_dir()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, processor


def until_eos(ids: Iterable[int], eos: Iterable[int]) -> list[int]:
    """``ids`` up to (without) the first of the ``eos`` ids: a reply as the session keeps it."""
    stop = set(eos)
    reply = []
    for tok in ids:
        if tok in stop:
            break
        reply.append(tok)
    return reply


@dataclass
class RefTurn:
    audios: list[np.ndarray]
    text: str
    reply_ids: list[int] = field(default_factory=list)


def messages(system: str, turns: list[RefTurn]) -> list[dict]:
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        content = [{"type": "audio", "audio": f"a{k}"} for k in range(len(t.audios))]
        if t.text:
            content.append({"type": "text", "text": t.text})
        out.append({"role": "user", "content": content})
        if i < len(turns) - 1:
            out.append({"role": "assistant", "content": PLACEHOLDER})
    return out


def conversation_inputs(processor, system: str, turns: list[RefTurn]) -> dict:
    """The processor's inputs for the whole conversation, each earlier reply's ids spliced in for its
    placeholder (re-tokenising reply text would not give the generated ids), ending with the generation
    prompt of the last turn."""
    text = processor.apply_chat_template(messages(system, turns), add_generation_prompt=True, tokenize=False)
    audios = [a for t in turns for a in t.audios]
    inputs = processor(text=text, audio=audios or None, sampling_rate=16000, return_tensors="pt")
    ph = processor.tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    replies = [t.reply_ids for t in turns[:-1]]
    ids: list[int] = []
    for tok in inputs["input_ids"][0].tolist():
        ids.extend(replies.pop(0) if tok == ph else [tok])
    assert not replies
    out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if audios:
        out["input_features"] = inputs["input_features"]
        out["feature_attention_mask"] = inputs["feature_attention_mask"]
    return out


def reference_reply(model, processor, system: str, turns: list[RefTurn], max_new_tokens: int):
    """(prompt ids, greedy reply ids without the closing token, per-step logits [vocab] with the structural
    tokens at -inf) of a from-scratch run over the whole conversation."""
    inputs = conversation_inputs(processor, system, turns)
    suppress = [processor.tokenizer.convert_tokens_to_ids(t) for t in STRUCTURAL]
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            suppress_tokens=suppress,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt = inputs["input_ids"][0].tolist()
    gen = out.sequences[0, len(prompt) :].tolist()
    reply = until_eos(gen, model.generation_config.eos_token_id)
    logits = []
    for step in out.logits:
        row = step[0].float().clone()
        row[suppress] = float("-inf")
        logits.append(row)
    return prompt, reply, logits


def max_logit_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| over the finite entries of paired logit rows (same number of rows required)."""
    assert len(a) == len(b), (len(a), len(b))
    worst = 0.0
    for x, y in zip(a, b):
        fin = torch.isfinite(x)
        assert torch.equal(fin, torch.isfinite(y))
        worst = max(worst, float((x[fin] - y[fin]).abs().max()))
    return worst
