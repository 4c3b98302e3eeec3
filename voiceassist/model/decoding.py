"""Choosing the next token, and turning a growing list of token ids into text pieces without broken characters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# A UTF-8 character is at most 4 bytes; each byte-level token carries at least one byte. So once 4 tokens have
# arrived after an incomplete character began, it can never complete: show the replacement character then.
_MAX_PENDING_TOKENS = 4
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids one by one; get back only the text that is final (no half of a multi-byte character).

    The pieces returned, joined, equal ``tokenizer.decode(ids)`` of all ids fed once :meth:`flush` is called.
    Decoding the whole reply at each step keeps it exact (merges such as a leading space depend on context);
    a reply is at most a few thousand tokens, and the tokenizer decodes in Rust.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""  # text already handed out
        self._pending = 0  # tokens fed since the text last ended on a complete character

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def feed(self, token_id: int) -> str:
        """Add one token; return the new final text (often "", e.g. inside a multi-byte character)."""
        self.ids.append(token_id)
        text = self._decode()
        if text.endswith(REPLACEMENT) and self._pending + 1 < _MAX_PENDING_TOKENS:
            self._pending += 1
            return ""
        self._pending = 0
        return self._take(text)

    def flush(self) -> str:
        """The text still held back (the reply ended): returned as it decodes, replacement characters included."""
        self._pending = 0
        return self._take(self._decode())

    def _take(self, text: str) -> str:
        # With byte-level BPE the decoded text only grows at its end. Were a tokenizer to rewrite earlier text,
        # what was shown stays shown: only what lies beyond its length is handed out.
        piece = text[len(self.emitted) :]
        self.emitted += piece
        return piece


# transformers' values for what neither the model's generation_config.json nor the user sets
# (GenerationConfig._get_default_generation_params in 5.24): the same sampling as ``model.generate``.
HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class Sampling:
    """The sampling settings a session uses, resolved once: the model's shipped values, overridden by config."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages every id already in the conversation

    def describe(self) -> str:
        rep = f", repetition penalty {self.repetition_penalty:g}" if self.repetition_penalty != 1.0 else ""
        if not self.do_sample:
            return f"greedy{rep}"
        return f"temperature {self.temperature:g}, top-p {self.top_p:g}, top-k {self.top_k}{rep}"


def resolve_sampling(gen: Any, shipped: dict[str, Any] | None = None) -> Sampling:
    """``shipped`` (the model's generation_config.json: any of do_sample, temperature, top_p, top_k,
    repetition_penalty) over transformers' defaults, then the configured values over both: a negative
    temperature / top_p / top_k or a repetition penalty ≤ 0 means "as the model ships". A configured temperature
    turns sampling on (> 0) or off (0); a top_p of 0 means greedy too."""
    values = dict(HF_DEFAULTS)
    values.update({k: v for k, v in (shipped or {}).items() if k in HF_DEFAULTS and v is not None})
    if gen.temperature >= 0:
        values["temperature"] = gen.temperature
        values["do_sample"] = gen.temperature > 0
    if gen.top_p >= 0:
        values["top_p"] = gen.top_p
    if getattr(gen, "top_k", -1) >= 0:
        values["top_k"] = gen.top_k
    if getattr(gen, "repetition_penalty", -1.0) > 0:
        values["repetition_penalty"] = gen.repetition_penalty
    if float(values["temperature"]) <= 0.0 or float(values["top_p"]) <= 0.0:
        values["do_sample"] = False
    return Sampling(
        do_sample=bool(values["do_sample"]),
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        top_k=int(values["top_k"]),
        repetition_penalty=float(values["repetition_penalty"]),
    )


def sampling_defaults(model: Any) -> dict[str, Any]:
    """What the model's generation_config.json sets of do_sample, temperature, top_p, top_k, repetition_penalty."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return {}
    try:
        explicit = gc.to_diff_dict()
    except Exception:  # noqa: BLE001 - an odd config object: treat as shipping nothing
        return {}
    return {k: explicit[k] for k in HF_DEFAULTS if explicit.get(k) is not None}


class Sampler:
    """The next token, as ``model.generate`` picks it: repetition penalty over every id of the conversation,
    then greedy, or temperature → top-k → top-p sampling from a seeded generator (transformers' order).

    ``suppress`` ids (the chat's structural tokens: ``<|im_start|>``, ``<|AUDIO|>``, …) are never chosen: a
    reply that contained them would corrupt the conversation the next turn builds on. Ids at or beyond
    ``vocab_limit`` (the tokenizer's size) are padding of the embedding matrix (the 7B's 156032 rows against
    ~151650 tokens): never chosen either.
    """

    def __init__(
        self,
        sampling: Sampling,
        seed: int,
        suppress: Sequence[int],
        device: Any,
        vocab_limit: int | None = None,
    ) -> None:
        self.sampling = sampling
        self.greedy = not sampling.do_sample
        self.suppress = torch.tensor(sorted(set(suppress)), dtype=torch.long, device=device)
        self.vocab_limit = vocab_limit
        self.generator = torch.Generator(device=device)
        if seed >= 0:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [vocab] as float32 with the suppressed and padded ids at -inf."""
        logits = logits.float().clone()
        if self.suppress.numel():
            logits[self.suppress] = float("-inf")
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits[self.vocab_limit :] = float("-inf")
        return logits

    def penalize(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """transformers' RepetitionPenaltyLogitsProcessor: each id in ``seen`` (a [vocab] bool mask of the
        conversation so far, prompt included) has its logit divided by the penalty if positive, multiplied if
        negative. In place on ``logits`` (already a float32 copy)."""
        p = self.sampling.repetition_penalty
        if p == 1.0 or seen is None:
            return logits
        picked = logits[seen]
        logits[seen] = torch.where(picked < 0, picked * p, picked / p)
        return logits

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> int:
        logits = self.penalize(self.mask(logits), seen)
        if self.greedy:
            return int(torch.argmax(logits))
        s = self.sampling
        if s.temperature != 1.0:
            logits = logits / s.temperature
        if 0 < s.top_k < logits.shape[-1]:
            kth = torch.topk(logits, s.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Keep the smallest set whose mass reaches top_p (the first token always stays).
            drop = cumulative - sorted_probs >= s.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def spoken_prefix_ids(tokenizer: Any, ids: list[int], spoken: str) -> int:
    """The largest k such that ids[:k] decodes to a prefix of ``spoken`` (no half characters)."""
    best = 0
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if spoken.startswith(text):
            best = k
        elif not spoken.startswith(text.rstrip("\ufffd")):
            break  # past what was spoken (a trailing half character may still complete: keep going then)
    return best
