"""Choosing the next token, and turning a growing list of token ids into text pieces without broken characters."""

from __future__ import annotations

from collections.abc import Sequence
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


class Sampler:
    """Greedy when temperature or top-p is 0; otherwise temperature + nucleus sampling from a seeded generator.

    ``suppress`` ids (the chat's structural tokens: ``<|im_start|>``, ``<|AUDIO|>``, …) are never chosen: a
    reply that contained them would corrupt the conversation the next turn builds on.
    """

    def __init__(self, temperature: float, top_p: float, seed: int, suppress: Sequence[int], device: Any) -> None:
        self.greedy = temperature <= 0.0 or top_p <= 0.0
        self.temperature = temperature
        self.top_p = top_p
        self.suppress = torch.tensor(sorted(set(suppress)), dtype=torch.long, device=device)
        self.generator = torch.Generator(device=device)
        if seed >= 0:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [vocab] as float32 with the suppressed ids at -inf."""
        logits = logits.float().clone()
        if self.suppress.numel():
            logits[self.suppress] = float("-inf")
        return logits

    def __call__(self, logits: torch.Tensor) -> int:
        logits = self.mask(logits)
        if self.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Keep the smallest set whose mass reaches top_p (the first token always stays).
            drop = cumulative - sorted_probs >= self.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
