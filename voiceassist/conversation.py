"""Conversation policy shared by the local session and the thin client (no torch: the thin client imports it)."""

from __future__ import annotations

# When the context must be trimmed, old turns are dropped until the conversation (with the new turn and room
# for the reply) uses at most this fraction of the limit, rather than just under it: each drop changes the
# prefix (the local KV cache is rebuilt; the server's prefix cache misses once), and dropping a little more
# keeps the prefix stable for the next several turns instead of paying that every turn.
TRIM_TARGET = 0.75
# Room kept for a reply when turns must be dropped: max_new_tokens, but at most this share of the context.
# Reserving all of a large --max-new-tokens (6000 of 8192) dropped every earlier turn although thousands of
# tokens were free; a reply longer than the room left is capped there instead (said once per session).
REPLY_SHARE = 0.25


def system_prompt(prompt: str, language: str) -> str:
    """The system message: the configured prompt plus the reply-language hint (none: the user's own language)."""
    if language:
        prompt = f"{prompt} Reply in {language}.".strip()
    return prompt
