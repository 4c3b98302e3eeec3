"""Conversation policy shared by the local session and the thin client (no torch: the thin client imports it)."""

from __future__ import annotations

# When the context must be trimmed, old turns are dropped until the conversation (with the new turn and room
# for the reply) uses at most this fraction of the limit, rather than just under it: each drop changes the
# prefix (the local KV cache is rebuilt; the server's prefix cache misses once), and dropping a little more
# keeps the prefix stable for the next several turns instead of paying that every turn.
TRIM_TARGET = 0.75


def system_prompt(prompt: str, language: str) -> str:
    """The system message: the configured prompt plus the reply-language hint (none: the user's own language)."""
    if language:
        prompt = f"{prompt} Reply in {language}.".strip()
    return prompt
