"""Start-up checks of the context budget (#16), so that a limit that cannot work is said at once in one line
instead of each turn failing after seconds of prefill with advice that does not help.

- A context limit above what the model has positions for is capped by the Session; this says so, and by what.
- A system prompt that leaves no room for a turn and a reply is refused (ConfigError, exit 2): a 10 MB prompt
  otherwise took 23 s and 2.5 GB per turn before failing with "send shorter audio or raise --context-limit".
"""

from __future__ import annotations

import logging
from typing import Any

from voiceassist import conversation
from voiceassist.errors import BackendError, ConfigError

log = logging.getLogger("voiceassist.model")

MIN_TURN_TOKENS = 32  # the smallest useful turn: the chat template's user/assistant frame and a few words
MAX_CHARS_PER_TOKEN = 16  # tokenizing a prefix this many times the budget in characters is enough to decide


def count_tokens_upto(tokenizer: Any, text: str, limit: int) -> int:
    """Tokens of ``text``, exact up to ``limit`` (a larger count may be returned as any value > limit). Only a
    prefix is tokenized when the text is long, so a huge prompt costs milliseconds, not seconds."""
    if len(text) <= limit:  # every token is at least one character
        return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
    head = text[: (limit + 1) * MAX_CHARS_PER_TOKEN]
    n = len(tokenizer(head, add_special_tokens=False, verbose=False).input_ids)
    if n > limit or len(head) == len(text):
        return n
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def reply_reserve(context_limit: int, max_new_tokens: int) -> int:
    """The tokens a reply is sure to get: max_new_tokens, at most REPLY_SHARE of the context (more only while
    the context has room, never at the history's cost)."""
    return max(1, min(max_new_tokens, int(context_limit * conversation.REPLY_SHARE)))


def system_prompt_room(context_limit: int, max_new_tokens: int) -> int:
    """The most tokens a system prompt may have: the context less a minimal turn and the reply's reserve."""
    return context_limit - reply_reserve(context_limit, max_new_tokens) - MIN_TURN_TOKENS


def warn_reply_capped(max_new_tokens: int, room: int, context_limit: int) -> None:
    """Say (a log warning: the plain and kiosk front ends show it, the TUI's stderr capture too) that this
    reply may have only ``room`` (< max_new_tokens) tokens; the Session says it once."""
    log.warning(
        "max_new_tokens %d does not fit the context now: this reply may have up to %d tokens (context limit %d, "
        "%d in use); earlier turns are kept",
        max_new_tokens,
        room,
        context_limit,
        context_limit - room,
    )


def turn_too_long(prompt_tokens: int, context_limit: int, positions: int | None) -> BackendError:
    """The error of a turn that does not fit even with every earlier turn dropped."""
    # #16: "raise --context-limit" is no advice when the limit is already the model's whole context.
    advice = (
        f"send shorter audio (the model's whole context is {context_limit} tokens)"
        if positions is not None and context_limit >= positions
        else "send shorter audio or raise --context-limit"
    )
    return BackendError(
        f"this turn needs {prompt_tokens} tokens, more than the context limit of {context_limit} allows; {advice}"
    )


def check_system_prompt(tokens: int, context_limit: int, max_new_tokens: int, approx: bool = False) -> None:
    """ConfigError when a system prompt of ``tokens`` leaves no room for a turn and its reply."""
    room = system_prompt_room(context_limit, max_new_tokens)
    if tokens > room:
        count = f"about {tokens}" if approx else f"more than {room} (at least {tokens})"
        reserve = context_limit - room - MIN_TURN_TOKENS
        raise ConfigError(
            f"the system prompt is {count} tokens; with a context of {context_limit} tokens (and {reserve} kept "
            f"for the reply) no turn would fit: shorten generation.system_prompt / --system-prompt to under {room} "
            "tokens"
        )


def check_system_prompt_without_model(config: Any) -> None:
    """For ``--check-config`` (no model, no tokenizer loaded): refuse a system prompt that is too long for
    certain, counting at most MAX_CHARS_PER_TOKEN characters per token (a lower bound on its tokens); the exact
    check runs when the model is loaded."""
    limit = config.model.context_limit
    if config.server.url:
        limit = min(limit, config.server.context_limit)
    at_least = len(config.generation.system_prompt) // MAX_CHARS_PER_TOKEN
    room = system_prompt_room(limit, config.generation.max_new_tokens)
    if at_least > room:
        raise ConfigError(
            f"the system prompt ({len(config.generation.system_prompt)} characters) is more than {room} tokens "
            f"whatever the tokenizer; with a context of {limit} tokens no turn would fit: shorten "
            "generation.system_prompt"
        )


def check_session(session: Any, requested_limit: int, max_new_tokens: int) -> None:
    """At start, for the local Session: say when the context limit was capped; refuse a system prompt that
    cannot fit. ``requested_limit``: model.context_limit (--context-limit) as configured."""
    limit = session.context_limit
    if limit < requested_limit:
        log.warning(
            "context limit %d (--context-limit / model.context_limit) capped at %d: the model has %d positions",
            requested_limit,
            limit,
            limit,
        )
    room = system_prompt_room(limit, max_new_tokens)
    tokens = count_tokens_upto(session.tokenizer, session.system_prompt, room)
    check_system_prompt(tokens, limit, max_new_tokens)
