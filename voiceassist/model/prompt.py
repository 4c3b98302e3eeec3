"""Token ids of one user turn, exactly as the processor's chat template gives them inside a whole conversation.

A turn's prompt is the text between the previous reply's content and the new reply: the previous reply's
closing (``<|im_end|>\\n``), the user message (audios numbered across the conversation: ``Audio 3: <|audio_bos|>
<|AUDIO|>×N <|audio_eos|>``, then the typed text) and ``<|im_start|>assistant\\n``; for the first turn, the
system message too. It is found by rendering the template over the whole conversation with each earlier
reply's content replaced by one special token (:data:`REPLY_PLACEHOLDER`), and cutting after the last one: the
cut falls on a special-token boundary, so tokenizing the suffix alone gives exactly the ids that tokenizing the
whole text gives there. Each ``<|AUDIO|>`` is then expanded to its audio's token count, as the processor does.

Rendering the whole conversation each turn costs time that grows with it (about 0.1 ms per turn). Qwen2-Audio's
template renders a turn from only two facts about what came before: that something did, and how many audios
it held. So the earlier turns are collapsed into one user message with that many audios — checked once per
builder on probe conversations against the full rendering; a template for which the two differ is always
rendered whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Stands for a reply's content while rendering the template. A special token: rendered verbatim, one id, and
# the tokenizer never merges text across it.
REPLY_PLACEHOLDER = "<|endoftext|>"
AUDIO_TOKEN = "<|AUDIO|>"


@dataclass(frozen=True)
class UserMessage:
    """What the template needs of one user turn: how many audios (in order, before the text) and the text."""

    n_audios: int
    text: str


def messages(system_prompt: str, turns: Sequence[UserMessage], *, reply_after_last: bool) -> list[dict[str, Any]]:
    """Chat messages for the template: system, then user/assistant pairs whose replies are placeholders.

    ``reply_after_last`` adds the placeholder reply after the last user message too.
    """
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for i, turn in enumerate(turns):
        content: list[dict[str, Any]] = [{"type": "audio", "audio": f"audio-{k}"} for k in range(turn.n_audios)]
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        out.append({"role": "user", "content": content})
        if i < len(turns) - 1 or reply_after_last:
            out.append({"role": "assistant", "content": REPLY_PLACEHOLDER})
    return out


class PromptBuilder:
    """Builds a turn's prompt ids with the model's tokenizer and chat template (see the module doc)."""

    def __init__(self, tokenizer: Any, chat_template: str) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.audio_token_id: int = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.placeholder_id: int = tokenizer.convert_tokens_to_ids(REPLY_PLACEHOLDER)
        self.collapsible = self._check_collapsible()

    def _check_collapsible(self) -> bool:
        """Does collapsing earlier turns (see the module doc) render every probe exactly as the full history?"""
        probes = [
            ([UserMessage(2, "a b"), UserMessage(0, "c"), UserMessage(1, "")], UserMessage(1, "q")),
            ([UserMessage(0, "hi")], UserMessage(0, "x")),
            ([UserMessage(1, ""), UserMessage(3, "y")], UserMessage(2, "")),
        ]
        try:
            return all(
                self._turn_text("S", e, n, collapse=True) == self._turn_text("S", e, n, collapse=False)
                for e, n in probes
            )
        except Exception:  # noqa: BLE001 - a template that cannot render the collapsed form: render whole
            return False

    def render(self, msgs: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            msgs, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def turn_text(self, system_prompt: str, earlier: Sequence[UserMessage], new: UserMessage) -> str:
        """The template text the turn ``new`` adds after the ``earlier`` turns (each answered)."""
        return self._turn_text(system_prompt, earlier, new, collapse=self.collapsible)

    def _turn_text(self, system_prompt: str, earlier: Sequence[UserMessage], new: UserMessage, collapse: bool) -> str:
        if collapse and len(earlier) > 1:
            earlier = [UserMessage(sum(m.n_audios for m in earlier), "")]
        full = self.render(messages(system_prompt, [*earlier, new], reply_after_last=False), True)
        if not earlier:
            return full
        before = self.render(messages(system_prompt, earlier, reply_after_last=True), False)
        # Only the closing of the last reply follows its placeholder, so rindex finds that reply's content.
        cut = before.rindex(REPLY_PLACEHOLDER) + len(REPLY_PLACEHOLDER)
        if not full.startswith(before[:cut]):
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
        return full[cut:]

    def turn_ids(
        self, system_prompt: str, earlier: Sequence[UserMessage], new: UserMessage, audio_token_counts: Sequence[int]
    ) -> list[int]:
        """The turn's prompt ids, each ``<|AUDIO|>`` expanded to its audio's token count (as the processor)."""
        text = self.turn_text(system_prompt, earlier, new)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        counts = iter(audio_token_counts)
        for tok in ids:
            if tok == self.audio_token_id:
                out.extend([tok] * next(counts))
            else:
                out.append(tok)
        if next(counts, None) is not None or ids.count(self.audio_token_id) != new.n_audios:
            raise ValueError("the chat template did not place one audio token per audio")
        return out
