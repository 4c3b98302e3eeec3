"""The model backend interface: the local session and the remote (vLLM) client both implement it.

The app's model worker is the only caller, from one thread. A backend owns the conversation: the turns so far
and whatever it needs to answer the next one cheaply (KV cache locally; chat messages for a server).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


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

    @property
    def description(self) -> str:
        """For the status bar, e.g. "Qwen2-Audio-7B-Instruct · cuda:0 · bf16"."""
        ...

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        """Add ``turn``, stream the reply's text pieces to ``on_text``; stop within one token of ``cancel``."""
        ...

    def truncate_last_reply(self, spoken_text: str) -> None:
        """Cut the last reply back to ``spoken_text`` (a prefix of it), marked as interrupted (barge-in)."""
        ...

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays)."""
        ...


@runtime_checkable
class Speculating(Protocol):
    """A backend capability: prefill a turn that may still change, rolled back on ``cancel``."""

    last_speculated: bool  # the last reply found its prefill done by a speculation

    def speculate(self, turn: UserTurn, cancel: threading.Event) -> object: ...


@runtime_checkable
class StatusReporting(Protocol):
    """A backend capability: one line (e.g. "cannot reach the server …; retry 1/5 in 0.5 s") before each of
    its own retries, given to ``on_status`` when set."""

    on_status: Callable[[str], None] | None


@runtime_checkable
class SpeculatingReply(Protocol):
    """A backend capability (issue 15): decode the pending speculation's reply ahead, during the hang-over;
    ``cancel`` rolls everything back, the committed reply goes on from the decoded state (exact)."""

    @property
    def speculation_complete(self) -> bool: ...  # the speculative reply is decoded to its end

    def speculate_reply(
        self, enough: Callable[[str], bool], cancel: threading.Event | None = None, until: threading.Event | None = None
    ) -> str | None: ...


@runtime_checkable
class TruncatesEarlierReplies(Protocol):
    """A backend capability: cut the reply ``later`` turns before the last back to ``spoken_text`` (a prefix
    of it), marked as interrupted; the turns after it stay as they are. Needed when a stop comes while two
    replies are queued in the speaker (a turn typed while the last reply still played)."""

    def truncate_reply(self, spoken_text: str, later: int) -> None: ...


def reply_truncator(backend: Backend) -> TruncatesEarlierReplies | None:
    """The backend in ``backend``'s wrapper chain that can cut a reply before its last, or None."""
    return next((b for b in _chain(backend) if isinstance(b, TruncatesEarlierReplies)), None)


def reply_speculator(backend: Backend) -> SpeculatingReply | None:
    """The backend in ``backend``'s wrapper chain that decodes a speculative reply ahead, or None."""
    return next((b for b in _chain(backend) if isinstance(b, SpeculatingReply)), None)


def _chain(backend: Backend) -> list[object]:
    """``backend`` and every backend it wraps, outermost first."""
    out: list[object] = [backend]
    while isinstance(out[-1], BackendWrapper):
        out.append(out[-1].inner)
    return out


def speculator(backend: Backend) -> Speculating | None:
    """The backend in ``backend``'s wrapper chain that offers speculative prefill, or None."""
    return next((b for b in _chain(backend) if isinstance(b, Speculating)), None)


def status_reporter(backend: Backend) -> StatusReporting | None:
    """The backend in the wrapper chain that reports its own retries, or None. Wrappers (``BackendWrapper``)
    only pass on the Backend protocol, so this finds e.g. the RemoteBackend under the kiosk's TurnLimit →
    RecordingBackend, where setting ``on_status`` on the outermost wrapper would reach nothing."""
    return next((b for b in _chain(backend) if isinstance(b, StatusReporting)), None)


class BackendWrapper:
    """A Backend that wraps another and delegates to it; subclasses override what they add (the kiosk's fault
    injector, turn recorder and turn limit). Capabilities beyond the Backend protocol (speculative prefill,
    status reporting) stay on the wrapped backend: find them with :func:`speculator` / :func:`status_reporter`."""

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
