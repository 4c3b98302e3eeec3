"""The model backend interface: the local session and the remote (vLLM) client both implement it.

The app's model worker is the only caller, from one thread. A backend owns the conversation: the turns so far
and whatever it needs to answer the next one cheaply (KV cache locally; chat messages for a server).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from voiceassist.config import Config


@dataclass(frozen=True)
class UserTurn:
    """One user turn: audios (16 kHz mono float32, each at most 30 s) and/or typed text."""

    audios: tuple[np.ndarray, ...] = ()
    text: str = ""


@dataclass(frozen=True)
class ReplyResult:
    """What one reply produced, with its figures."""

    text: str
    n_tokens: int
    ttft_s: float  # reply() called → first token, s
    tok_per_s: float  # decode speed after the first token
    context_tokens: int  # tokens in the conversation after this reply
    interrupted: bool = False  # cancel was set before the reply finished
    prompt_ids: tuple[int, ...] = ()  # ids this turn added before the reply (local backend only)
    reply_ids: tuple[int, ...] = ()  # the reply's ids without its closing token (local backend only)
    dropped_turns: int = 0  # oldest turns dropped to fit the context budget before this turn


@runtime_checkable
class Backend(Protocol):
    """A conversation with the model. Methods raise ``BackendError`` and leave the conversation unchanged."""

    description: str  # for the status bar, e.g. "Qwen2-Audio-7B-Instruct · cuda:0 · bf16"

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        """Add ``turn``, stream the reply's text pieces to ``on_text``; stop within one token of ``cancel``."""
        ...

    def truncate_last_reply(self, spoken_text: str) -> None:
        """Cut the last reply back to ``spoken_text`` (a prefix of it), marked as interrupted (barge-in)."""
        ...

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays)."""
        ...


def open_backend(config: Config) -> Backend:
    """The backend the configuration asks for: the vLLM server at ``server.url`` when set (a thin client: no
    torch needed), else the local model session. Imports lazily, so the thin client never imports torch."""
    if config.server.url:
        from voiceassist.remote import RemoteBackend

        return RemoteBackend(config)
    from voiceassist.model.budget import check_session
    from voiceassist.model.loading import load_session

    session = load_session(config)
    # #16: a capped context limit is said, a system prompt that leaves no room is refused (exit 2), at start.
    check_session(session, config.model.context_limit, config.generation.max_new_tokens)
    return session


class BackendWrapper:
    """A Backend that wraps another and delegates to it; subclasses override what they add (the kiosk's fault
    injector and turn recorder). Anything else the App asks of a backend (speculative prefill, context
    figures) reaches the wrapped one through ``__getattr__``."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def description(self) -> str:
        return self.inner.description

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        return self.inner.reply(turn, on_text, cancel)

    def truncate_last_reply(self, spoken_text: str) -> None:
        self.inner.truncate_last_reply(spoken_text)

    def reset(self) -> None:
        self.inner.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
