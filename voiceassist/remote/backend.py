"""RemoteBackend: the conversation kept on the client, answered by an OpenAI-compatible (vLLM) server.

Invariant: each request carries exactly this conversation, in order — the system prompt (with the language
hint), then for every kept turn its user message (its audios as 16 kHz WAV ``input_audio`` parts, then its
text) and its assistant message (the reply text as shown, or as cut back by :meth:`truncate_last_reply`),
then the new user turn. The server keeps no state between requests; its prefix cache makes re-sending the
conversation cheap (whole 128-token blocks of an unchanged prefix are not computed again).

A turn is added only when its reply streamed (completely or until cancel). Any failure raises
``BackendError`` and leaves the conversation exactly as it was, the user's audio still in hand: call
``reply()`` again with the same turn and its audio is sent again.

Imports neither torch nor transformers (the thin-client install has neither).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from voiceassist.backend import ReplyResult, UserTurn
from voiceassist.config import Config
from voiceassist.conversation import REPLY_SHARE, TRIM_TARGET, system_prompt
from voiceassist.errors import BackendError
from voiceassist.remote import wire
from voiceassist.remote.client import (
    POLL_S,
    WAIT_NOTICE_EVERY_S,
    WAIT_NOTICE_S,
    Broken,
    Cancelled,
    Rejected,
    Retryable,
    ServerClient,
    StreamResult,
)
from voiceassist.retry import backoff_pause

BACKOFF_FIRST_S = 0.5  # first pause before retrying a transient failure, s; doubles each retry
BACKOFF_MAX_S = 10.0  # longest pause between retries, s
SPECULATION_FIRST_BYTE_S = 2.0  # a speculative prefill gives up when the server has not begun to answer, s
MIN_RATE_SPAN_S = 0.01  # first → last token span below which the decode rate is not measurable, s
ASSISTANT_PROMPT_TOKENS = 3  # "<|im_start|>assistant\n" after the last user message


@dataclass(frozen=True)
class RemoteTurn:
    """One finished turn of the conversation, as it is sent to the server."""

    audios_b64: tuple[str, ...]  # base64 16 kHz mono 16-bit WAV, encoded once
    audio_samples: tuple[int, ...]  # each audio's length, samples at 16 kHz
    text: str  # typed text of the user turn
    reply: str  # the reply as shown / spoken
    interrupted: bool  # the reply was cancelled or cut back
    user_tokens: int  # the user message's tokens (measured from the server's usage when it could be)
    reply_tokens: int  # the assistant message's tokens


class RemoteBackend:
    """A conversation with Qwen2-Audio served by vLLM (or any OpenAI-compatible chat server).

    ``on_status``: optional callable given one line whenever a transient failure is retried (e.g. for the
    status bar). ``extra_body``: extra request fields (vLLM sampling extensions such as ``min_tokens``).
    """

    def __init__(
        self,
        config: Config,
        *,
        client: ServerClient | None = None,
        extra_body: dict[str, Any] | None = None,
        backoff_s: float = BACKOFF_FIRST_S,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self._server = config.server
        self._gen = config.generation
        self._budget = config.model.context_limit  # tokens; the same budget setting as the local session
        self._client = client or ServerClient(config.server)
        self.extra_body = dict(extra_body or {})  # merged into every request body
        self._backoff_s = backoff_s
        self.on_status = on_status  # StatusReporting: the App sets it (through any wrappers) to show retries
        self.last_speculated = False  # Speculating: the server's prefix cache is not observable from here
        self._system = system_prompt(self._gen.system_prompt, self._gen.language)
        self._system_tokens = (
            wire.estimate_text_tokens(self._system) + wire.MESSAGE_OVERHEAD_TOKENS if self._system else 0
        )
        from voiceassist.model.budget import check_system_prompt

        # #16: refused at start, not after each turn's request (an estimate: the thin client has no tokenizer).
        check_system_prompt(
            self._system_tokens, min(self._budget, self._server.context_limit), self._gen.max_new_tokens, approx=True
        )
        self._turns: list[RemoteTurn] = []
        self._model: str | None = config.server.model or None
        self._checked_model = False
        self._server_max_len: int | None = None  # the served model's max_model_len, from /v1/models
        self._audio_limit: int | None = None  # audios per prompt, learnt from a "At most N audio(s)" answer
        self._host = urlsplit(self._client.base).netloc
        self._spec_thread: threading.Thread | None = None  # the speculative request in flight (#16)
        self._spec_cancel: threading.Event | None = None

    # ---- the Backend protocol ------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        name = (self._model or "model from the server").rstrip("/").rsplit("/", 1)[-1]
        return f"{name} · vLLM server {self._host}"

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        """Send the conversation plus ``turn``; stream the reply's text into ``on_text``.

        Transient failures (unreachable, timeout, 5xx) before any text are retried ``server.retries`` times
        with doubling pauses; cancel stops a pause at once. Raises BackendError (conversation unchanged),
        with ``retryable`` set when the server failed (rather than refused): the app then retries the turn.
        """
        t0 = time.monotonic()
        if not turn.audios and not turn.text.strip():
            raise BackendError("nothing to send: the turn has neither audio nor text")
        new = self._new_turn(turn)
        if self.wait_speculation(cancel):  # Ctrl-C while the speculative request still ran: the turn is kept
            return self._commit(new, StreamResult(interrupted=True), 0, t0)
        attempt = 0
        min_drop = 0  # turns dropped at least, raised when the server says the prompt is still too long
        while True:
            if cancel.is_set():
                return self._commit(new, StreamResult(interrupted=True), 0, t0)
            try:
                self._ensure_model(cancel)
                drop = self._turns_to_drop(new, min_drop)
                result = self._client.stream_chat(
                    self._body(self._turns[drop:], new), on_text, cancel, on_wait=self._waiting
                )
            except Cancelled:
                return self._commit(new, StreamResult(interrupted=True), 0, t0)
            except Retryable as err:
                attempt += 1
                if attempt > self._server.retries:
                    raise BackendError(
                        f"{err} (gave up after {self._server.retries} retries)", retryable=True
                    ) from None
                pause = backoff_pause(attempt, self._backoff_s, BACKOFF_MAX_S)
                self._status(f"{err}; retry {attempt}/{self._server.retries} in {pause:g} s")
                cancel.wait(pause)
                continue
            except Broken as err:
                # Text was shown: retrying here would show it twice. The conversation is unchanged, so the
                # caller (the app) may send the whole turn again, as a new reply.
                raise BackendError(str(err), retryable=True) from None
            except Rejected as err:
                if err.kind == "too_long" and min_drop < len(self._turns):
                    min_drop = max(min_drop, self._turns_to_drop(new, min_drop)) + 1
                    continue
                if err.kind == "too_many_audios" and err.limit is not None and err.limit != self._audio_limit:
                    self._audio_limit = err.limit  # learnt: from now on old turns make room for new audio
                    continue
                raise BackendError(str(err)) from None
            return self._commit(new, result, drop, t0)

    def speculate(self, turn: UserTurn, cancel: threading.Event) -> None:
        """Warm the server's prefix cache with the conversation plus ``turn`` while the user may still go on.

        The app calls this during the hang-over with the utterance that will be sent if no speech resumes.
        The request is the one :meth:`reply` will send, asking for a single token: the server prefills it
        (and encodes the new audio) now, so the real request finds all its whole blocks in the cache. Adds
        nothing to the conversation; a failure or ``cancel`` costs only the time (never raises).
        """
        if not turn.audios and not turn.text.strip():
            return
        self.wait_speculation(cancel)  # one at a time (the app cancels a stale one before asking again)
        if not self._checked_model:
            return  # learning the model can take up to first_byte_timeout_s: the first turn does it
        try:
            new = self._new_turn(turn)
            drop = self._turns_to_drop(new)
            body = dict(self._body(self._turns[drop:], new), max_tokens=1)
        except BackendError:
            return  # the real turn will meet (and report) the same problem
        # The request runs on its own thread (#16): the worker is free at once, so the turn that follows is
        # shown and taken at once; reply() then waits for this request (the cache warm-up it paid for) with
        # a status line and Ctrl-C, and a server that has not begun to answer within a short deadline is
        # given up. Only this thread and reply() use the speculation fields, one after the other.
        first_byte = min(SPECULATION_FIRST_BYTE_S, self._client.first_byte_timeout_s)

        def run() -> None:
            try:
                self._client.stream_chat(body, lambda _piece: None, cancel, first_byte_s=first_byte)
            except (Retryable, Rejected, Broken, Cancelled):
                pass
            except Exception:  # noqa: BLE001 — a speculation must never fail anything
                pass

        th = threading.Thread(target=run, name="vllm-speculate", daemon=True)
        self._spec_thread, self._spec_cancel = th, cancel
        th.start()

    def wait_speculation(self, cancel: threading.Event | None = None) -> bool:
        """Wait for the speculative request in flight, if any (reply() does, so the real request finds the
        prefix cached). Says "waiting for the server" after WAIT_NOTICE_S; ``cancel`` stops the wait and the
        speculation. True when the wait ended by ``cancel``."""
        th = self._spec_thread
        if th is None:
            return False
        t0 = time.monotonic()
        notice = t0 + WAIT_NOTICE_S
        while th.is_alive():
            th.join(POLL_S)
            if cancel is not None and cancel.is_set():
                if self._spec_cancel is not None:
                    self._spec_cancel.set()
                return True
            if time.monotonic() >= notice:
                self._waiting(time.monotonic() - t0)
                notice = time.monotonic() + WAIT_NOTICE_EVERY_S
        self._spec_thread = self._spec_cancel = None
        return False

    def truncate_last_reply(self, spoken_text: str) -> None:
        """Cut the last reply back to ``spoken_text`` (a prefix of it), marked as interrupted (barge-in)."""
        self.truncate_reply(spoken_text, 0)

    def truncate_reply(self, spoken_text: str, later: int) -> None:
        """Cut the reply ``later`` turns before the last back to ``spoken_text``; the turns after it stay (the
        server is sent the whole conversation each turn, so nothing else needs redoing)."""
        if not 0 <= later < len(self._turns):
            return
        at = len(self._turns) - 1 - later
        turn = self._turns[at]
        cut = _common_prefix(turn.reply, spoken_text)
        tokens = round(turn.reply_tokens * len(cut) / len(turn.reply)) if turn.reply else 0
        self._turns[at] = dataclasses.replace(turn, reply=cut, interrupted=True, reply_tokens=tokens)

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays)."""
        self._turns.clear()

    # ---- beyond the protocol -------------------------------------------------------------------------------

    @property
    def turns(self) -> tuple[RemoteTurn, ...]:
        """The conversation's turns, oldest first (read-only)."""
        return tuple(self._turns)

    @property
    def model(self) -> str | None:
        return self._model

    def context_tokens(self) -> int:
        """The conversation's size in tokens (exact up to the last reply when the server reported usage)."""
        return self._system_tokens + sum(t.user_tokens + t.reply_tokens for t in self._turns)

    def messages(self, new: UserTurn | None = None) -> list[dict[str, Any]]:
        """The chat messages of the conversation; with ``new``, those the request for that turn would carry
        (the oldest turns left out as the context budget requires)."""
        if new is None:
            return self._messages(self._turns, None)
        extra = self._new_turn(new)
        return self._messages(self._turns[self._turns_to_drop(extra) :], extra)

    def connect(self) -> str:
        """Ask the server for its model now (once); returns the model name. Raises BackendError."""
        try:
            self._ensure_model()
        except (Retryable, Rejected) as err:
            raise BackendError(str(err)) from None
        assert self._model is not None
        return self._model

    def close(self) -> None:
        self._client.close()

    # ---- internals -----------------------------------------------------------------------------------------

    def _new_turn(self, turn: UserTurn) -> RemoteTurn:
        samples = tuple(int(len(a)) for a in turn.audios)
        return RemoteTurn(
            audios_b64=tuple(wire.wav_base64(a) for a in turn.audios),
            audio_samples=samples,
            text=turn.text,
            reply="",
            interrupted=False,
            user_tokens=wire.estimate_user_tokens(samples, turn.text),
            reply_tokens=0,
        )

    def _ensure_model(self, cancel: threading.Event | None = None) -> None:
        """Learn the model name (when not configured) and its context length from ``GET /v1/models``."""
        if self._checked_model:
            return
        try:
            models = self._client.models(cancel)
        except Rejected as err:
            if err.kind == "auth":
                raise
            models = []  # a server without /v1/models: trust the configuration
        ids = [m["id"] for m in models]
        if self._model is None:
            if not ids:
                raise Rejected(
                    f"the server at {self._client.base} lists no model; set server.model (--server-model)", "model"
                )
            self._model = ids[0]
        elif ids and self._model not in ids:
            raise Rejected(
                f"the server at {self._client.base} has no model {self._model!r}; it serves: "
                f"{', '.join(ids)}; set server.model (--server-model) to one of them",
                "model",
            )
        for m in models:
            if m["id"] == self._model and isinstance(m.get("max_model_len"), int):
                self._server_max_len = m["max_model_len"]
        self._checked_model = True

    def _context_limit(self) -> int:
        """The budget: model.context_limit (--context-limit), capped by the server's context length as
        configured (server.context_limit) and as the server reports it (max_model_len)."""
        limit = min(self._budget, self._server.context_limit)
        return min(limit, self._server_max_len) if self._server_max_len else limit

    def _turns_to_drop(self, new: RemoteTurn, at_least: int = 0) -> int:
        """How many of the oldest turns to leave out so the request fits the context and the audio limit."""
        limit = self._context_limit()
        budget = limit - min(self._gen.max_new_tokens, int(limit * REPLY_SHARE))
        need = self._system_tokens + new.user_tokens + ASSISTANT_PROMPT_TOKENS
        if need > budget:
            raise BackendError(
                f"this turn alone needs about {need} tokens, more than the context budget allows "
                f"({limit} tokens: --context-limit, server.context_limit or the server's "
                "--max-model-len); send shorter audio or text"
            )
        if self._audio_limit is not None and len(new.audios_b64) > self._audio_limit:
            raise BackendError(
                f"this turn has {len(new.audios_b64)} audios but the server accepts at most "
                f"{self._audio_limit} per prompt; raise its --limit-mm-per-prompt or "
                "lower vad.max_chunks_per_turn"
            )
        costs = [t.user_tokens + t.reply_tokens for t in self._turns]
        audios = [len(t.audios_b64) for t in self._turns]

        def fits(drop: int, share: float) -> bool:
            ok = need + sum(costs[drop:]) <= budget * share
            if self._audio_limit is not None:
                ok = ok and len(new.audios_b64) + sum(audios[drop:]) <= self._audio_limit
            return ok

        drop = min(at_least, len(self._turns))
        if drop == 0 and fits(0, 1.0):
            return 0
        while drop < len(self._turns) and not fits(drop, TRIM_TARGET):
            drop += 1
        return drop

    def _messages(self, turns: list[RemoteTurn], new: RemoteTurn | None) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = [{"role": "system", "content": self._system}] if self._system else []
        for t in turns:
            msgs.append(wire.user_message(t.audios_b64, t.text))
            msgs.append({"role": "assistant", "content": t.reply})
        if new is not None:
            msgs.append(wire.user_message(new.audios_b64, new.text))
        return msgs

    def _body(self, turns: list[RemoteTurn], new: RemoteTurn) -> dict[str, Any]:
        assert self._model is not None
        gen = self._gen
        body: dict[str, Any] = {
            "model": self._model,
            "messages": self._messages(turns, new),
            "stream": True,
            "stream_options": {"include_usage": True},
            # vLLM stops at the end of its context by itself; never ask for more than it could ever give.
            "max_tokens": min(gen.max_new_tokens, max(1, self._context_limit() - 1)),
            **wire.sampling_fields(gen),
        }
        if gen.seed >= 0:
            body["seed"] = gen.seed
        body.update(self.extra_body)
        return body

    def _commit(self, new: RemoteTurn, result: StreamResult, drop: int, t0: float) -> ReplyResult:
        """Add the answered turn (dropping the oldest ``drop`` turns) and build the ReplyResult."""
        kept = self._turns[drop:]
        n_tokens = result.n_tokens
        if result.prompt_tokens is not None:
            # Exact: the server counted this very prompt. What it did not spend on the kept turns and the
            # system prompt is this turn's cost, so later budgets add up to the server's own count.
            before = self._system_tokens + sum(t.user_tokens + t.reply_tokens for t in kept)
            user_tokens = max(1, result.prompt_tokens - before - ASSISTANT_PROMPT_TOKENS)
        else:
            user_tokens = new.user_tokens
        reply_tokens = n_tokens + 2 if (n_tokens or result.text) else 2  # + "<|im_end|>\n"
        turn = dataclasses.replace(
            new, reply=result.text, interrupted=result.interrupted, user_tokens=user_tokens, reply_tokens=reply_tokens
        )
        self._turns = [*kept, turn]
        if result.prompt_tokens is not None:
            context = result.prompt_tokens + (result.completion_tokens or n_tokens)
        else:
            context = self.context_tokens()
        ttft = (result.first_token_t - t0) if result.first_token_t is not None else 0.0
        span = (result.last_token_t or 0.0) - (result.first_token_t or 0.0)
        if n_tokens > 1 and span >= MIN_RATE_SPAN_S:
            tok_per_s = (n_tokens - 1) / span
        else:  # the reply came in one burst (a fast server batches its events): the end-to-end rate
            whole = (result.last_token_t or t0) - t0
            tok_per_s = n_tokens / whole if n_tokens and whole > 0 else 0.0
        return ReplyResult(
            text=result.text,
            n_tokens=n_tokens,
            ttft_s=ttft,
            tok_per_s=tok_per_s,
            context_tokens=context,
            interrupted=result.interrupted,
            dropped_turns=drop,
        )

    def _waiting(self, seconds: float) -> None:
        """stream_chat's notice: no reply text yet ``seconds`` after sending (#16: never a silent wait)."""
        self._status(
            f"waiting for the server at {self._host} ({seconds:.0f} s); Ctrl-C stops waiting, the turn is kept"
        )

    def _status(self, line: str) -> None:
        if self.on_status is not None:
            try:
                self.on_status(line)
            except Exception:  # noqa: BLE001 — a broken status sink must not break the turn
                pass


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
