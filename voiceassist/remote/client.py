"""HTTP to an OpenAI-compatible (vLLM) server: the model list and one streamed chat completion, cancellable.

Failures come out as two internal types the backend turns into ``BackendError`` lines:
- :class:`Retryable`: the server could not be reached, timed out, answered 5xx/429, or the stream broke before
  any reply text; worth trying again after a pause;
- :class:`Rejected`: the server answered and said no (bad key, unknown model, prompt too long, too many
  audios, bad request); trying the same request again cannot help.

A stream that breaks after reply text was shown raises :class:`Broken` (retrying would show the text twice).
Imports neither torch nor transformers.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from voiceassist.config import ServerConfig
from voiceassist.errors import ConfigError
from voiceassist.remote import wire

POLL_S = 0.02  # how often the caller looks at its cancel event while waiting for the next event, s
WAIT_NOTICE_S = 2.0  # no reply text this long after sending: the caller is told it is waiting (on_wait), s
WAIT_NOTICE_EVERY_S = 5.0  # ... and again this often while the wait goes on, s


class Retryable(Exception):
    """A transient failure; ``str()`` is one line for the status bar."""


class Cancelled(Exception):
    """The caller's cancel event ended a request that has no partial result (the model list)."""


class Broken(Exception):
    """The stream broke after reply text had been streamed; ``str()`` is one line."""


class Rejected(Exception):
    """The server refused the request; ``str()`` is one line.

    ``kind``: "auth", "model", "too_long", "too_many_audios" or "other"; ``limit``: the per-prompt audio limit
    named by a "too_many_audios" answer.
    """

    def __init__(self, message: str, kind: str = "other", limit: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.limit = limit


@dataclass
class StreamResult:
    """What one streamed completion gave."""

    text: str = ""
    n_tokens: int = 0  # token chunks received (the server's completion_tokens when it sent usage)
    prompt_tokens: int | None = None  # exact, from the usage chunk
    completion_tokens: int | None = None
    finish_reason: str | None = None
    first_token_t: float | None = None  # time.monotonic() of the first token chunk
    last_token_t: float | None = None
    interrupted: bool = False  # the caller's cancel event ended it
    pieces: list[str] = field(default_factory=list)


def api_base(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` or ``http://host:8000/v1`` → ``http://host:8000/v1``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"server.url = {url!r} is not an http(s) URL; use e.g. http://gpu-host:8000/v1")
    base = url.strip().rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def read_api_key(env_name: str) -> str:
    """The API key: the environment variable ``env_name``, else a systemd credential of that name
    (``LoadCredential=VOICEASSIST_API_KEY:/etc/voiceassist/api-key`` puts it in $CREDENTIALS_DIRECTORY);
    "" when neither is set (a server without --api-key)."""
    key = os.environ.get(env_name, "").strip() if env_name else ""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not key and cred_dir and env_name:
        try:
            key = (Path(cred_dir) / env_name).read_text(encoding="utf-8").strip()
        except OSError:
            key = ""
    return key


class ServerClient:
    """One server: ``models()`` and ``stream_chat()``. Used from one thread at a time (the model worker)."""

    def __init__(self, server: ServerConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.base = api_base(server.url)
        self.root = self.base[: -len("/v1")]
        self.key_env = server.api_key_env
        self.api_key = ""  # read again before each request: a rotated key needs no restart
        # Read timeout = longest silence between two events of a stream, s. Connecting and the wait for the
        # answer to begin (the response headers: vLLM sends them as soon as it accepted the request) have
        # their own, short deadlines (#16): a server that accepts and never answers fails in seconds.
        self.timeout_s = server.timeout_s
        self.connect_timeout_s = min(server.connect_timeout_s, server.timeout_s)
        self.first_byte_timeout_s = min(server.first_byte_timeout_s, server.timeout_s)
        timeout = httpx.Timeout(server.timeout_s, connect=self.connect_timeout_s)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _headers(self) -> dict[str, str]:
        self.api_key = read_api_key(self.key_env)
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    # ---- requests ------------------------------------------------------------------------------------------

    def models(self, cancel: threading.Event | None = None) -> list[dict[str, Any]]:
        """The server's model list (``GET /v1/models``): dicts with ``id`` and, from vLLM, ``max_model_len``.

        Bounded by the first-byte deadline and, with ``cancel``, cancellable within POLL_S (raises Cancelled):
        it runs on a helper thread, as the first request of a turn must not hold Ctrl-C off (#16)."""
        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s, read=self.first_byte_timeout_s)
        box: dict[str, Any] = {}
        headers = self._headers()

        def get() -> None:
            try:
                box["resp"] = self._http.get(self.base + "/models", headers=headers, timeout=timeout)
            except Exception as err:  # noqa: BLE001 — handed to the caller's thread
                box["err"] = err

        th = threading.Thread(target=get, name="vllm-models", daemon=True)
        th.start()
        while th.is_alive():
            th.join(POLL_S)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        err = box.get("err")
        if isinstance(err, httpx.ConnectTimeout):
            raise Retryable(self._unreachable_line(err)) from None
        if isinstance(err, httpx.TimeoutException):
            raise Retryable(self._no_answer_line(self.first_byte_timeout_s)) from None
        if isinstance(err, httpx.TransportError):
            raise Retryable(self._unreachable_line(err)) from None
        if err is not None:
            raise err
        resp = box["resp"]
        if resp.status_code != 200:
            raise self._status_error(resp.status_code, _json_or_text(resp))
        data = _json_or_text(resp)
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise Rejected(
                f"the server at {self.base} did not answer /models with a model list; "
                "is server.url an OpenAI-compatible server?"
            )
        return [m for m in models if isinstance(m, dict) and "id" in m]

    def stream_chat(
        self,
        body: dict[str, Any],
        on_text: Callable[[str], None],
        cancel: threading.Event,
        on_wait: Callable[[float], None] | None = None,
        first_byte_s: float | None = None,
    ) -> StreamResult:
        """POST a streamed chat completion; call ``on_text`` with each piece of text as it arrives.

        ``cancel`` is honoured within ~POLL_S in every phase (connecting, waiting for the first token,
        streaming): the connection is shut down, which makes vLLM abort the request, and the result comes
        back with ``interrupted=True``. Raises Retryable / Rejected / Broken.

        ``on_wait(seconds)``: called (on this thread) WAIT_NOTICE_S after sending while no reply text came,
        then every WAIT_NOTICE_EVERY_S. ``first_byte_s``: the deadline for the answer to begin (default
        server.first_byte_timeout_s); past it, Retryable.
        """
        first_byte = self.first_byte_timeout_s if first_byte_s is None else first_byte_s
        t_sent = time.monotonic()
        next_notice = t_sent + WAIT_NOTICE_S
        answered = threading.Event()  # set by the reader when the response headers came
        # Producer: the reader thread (one item per SSE event, then one terminal item); consumer: this
        # method. Bounded so a stalled caller cannot make it grow; the reader gives up when ``abandon`` is set.
        events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=256)
        abandon = threading.Event()
        holder: dict[str, httpx.Response] = {}
        reader = threading.Thread(
            target=self._read_stream,
            args=(body, events, abandon, holder, answered, first_byte),
            name="vllm-stream",
            daemon=True,
        )
        reader.start()
        result = StreamResult()
        complete = False
        try:
            while True:
                if cancel.is_set():
                    result.interrupted = True
                    return result
                try:
                    kind, item = events.get(timeout=POLL_S)
                except queue.Empty:
                    t = time.monotonic()
                    if not answered.is_set() and t - t_sent > first_byte:
                        # Checked here too: the reader may sit in connect() or a read that ignores us.
                        raise Retryable(self._no_answer_line(first_byte)) from None
                    if on_wait is not None and not result.text and t >= next_notice:
                        next_notice = t + WAIT_NOTICE_EVERY_S
                        try:
                            on_wait(t - t_sent)
                        except Exception:  # noqa: BLE001 — a broken notice must not break the request
                            pass
                    continue
                if kind == "chunk":
                    chunk: wire.Chunk = item
                    if chunk.error:  # e.g. the engine died while the API server still answered
                        raise (Broken if result.text else Retryable)(
                            f"the server at {self.base} failed during the reply ({chunk.error})"
                        )
                    if chunk.is_token:
                        now = time.monotonic()
                        result.first_token_t = result.first_token_t or now
                        result.last_token_t = now
                        result.n_tokens += 1
                    if chunk.text:
                        result.text += chunk.text
                        result.pieces.append(chunk.text)
                        on_text(chunk.text)
                    if chunk.finish_reason:
                        result.finish_reason = chunk.finish_reason
                    if chunk.prompt_tokens is not None:
                        result.prompt_tokens = chunk.prompt_tokens
                        result.completion_tokens = chunk.completion_tokens
                        result.n_tokens = chunk.completion_tokens or result.n_tokens
                    if chunk.done:
                        complete = True
                        return result
                elif kind == "status":
                    status, payload = item
                    raise self._status_error(status, payload)
                elif kind == "end":  # the body ended without [DONE]: the server went away mid-reply
                    if result.finish_reason is not None:
                        complete = True
                        return result
                    line = f"the connection to {self.base} closed before the reply was complete"
                    raise Broken(line) if result.text else Retryable(line)
                elif kind == "timeout":
                    if not answered.is_set():
                        raise Retryable(self._no_answer_line(first_byte))
                    raise (Broken if result.text else Retryable)(self._timeout_line())
                elif kind == "transport":
                    if result.text:
                        raise Broken(f"the connection to {self.base} broke during the reply ({_reason(item)})")
                    raise Retryable(self._unreachable_line(item))
                else:  # "bug": an unexpected exception in the reader; re-raise it where it can be seen
                    raise item
        finally:
            abandon.set()
            if not complete:  # cancel or failure: cut the connection now (a complete one goes back to the pool)
                _shutdown(holder.get("resp"))

    # ---- the reader thread ---------------------------------------------------------------------------------

    def _read_stream(
        self,
        body: dict[str, Any],
        events: queue.Queue[tuple[str, Any]],
        abandon: threading.Event,
        holder: dict[str, httpx.Response],
        answered: threading.Event,
        first_byte_s: float,
    ) -> None:
        def put(kind: str, item: Any = None) -> bool:
            while not abandon.is_set():
                try:
                    events.put((kind, item), timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        # The read timeout while waiting for the response headers is the first-byte deadline; once they came,
        # it becomes timeout_s for the body. httpcore reads request.extensions["timeout"] when it starts on the
        # headers and again when it starts on the body, so changing the dict in between takes effect.
        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s, read=first_byte_s)
        try:
            with self._http.stream(
                "POST", self.base + "/chat/completions", json=body, headers=self._headers(), timeout=timeout
            ) as resp:
                answered.set()
                holder["resp"] = resp
                per_request = resp.request.extensions.get("timeout")
                if isinstance(per_request, dict):
                    per_request["read"] = self.timeout_s
                if abandon.is_set():
                    return
                if resp.status_code != 200:
                    resp.read()
                    put("status", (resp.status_code, _json_or_text(resp)))
                    return
                for line in resp.iter_lines():
                    chunk = wire.parse_sse_line(line)
                    if chunk is None:
                        continue
                    if not put("chunk", chunk) or chunk.error:
                        return
                    # After [DONE] the loop reads on to the end of the body, so the connection can be reused.
                put("end")
        except httpx.ConnectTimeout as err:  # nothing accepted the connection: unreachable, not slow
            put("transport", err)
        except httpx.TimeoutException as err:
            put("timeout", err)
        except (httpx.TransportError, httpx.StreamError, OSError) as err:
            if not abandon.is_set():
                put("transport", err)
        except Exception as err:  # noqa: BLE001 — handed to the caller's thread, which re-raises it
            put("bug", err)

    # ---- one-line messages ---------------------------------------------------------------------------------

    def _unreachable_line(self, err: BaseException) -> str:
        return (
            f"cannot reach the server at {self.base} ({_reason(err)}); "
            "check server.url (--server) and that the server is running"
        )

    def _no_answer_line(self, first_byte_s: float) -> str:
        if first_byte_s >= self.timeout_s:  # the first-byte deadline was capped by timeout_s: name that one
            return self._timeout_line()
        return (
            f"the server at {self.base} accepted the request but did not begin to answer within "
            f"{first_byte_s:g} s (server.first_byte_timeout_s); it may be stuck or overloaded"
        )

    def _timeout_line(self) -> str:
        return (
            f"the server at {self.base} did not answer within {self.timeout_s:g} s "
            "(server.timeout_s); it may be overloaded"
        )

    def _status_error(self, status: int, payload: Any) -> Exception:
        msg = wire.error_message(payload) or f"HTTP {status}"
        if status in (401, 403):
            if not self.api_key:
                return Rejected(
                    f"the server at {self.base} needs an API key (HTTP {status}); put it in the "
                    f"environment variable {self.key_env}",
                    "auth",
                )
            return Rejected(
                f"the server at {self.base} refused the API key from {self.key_env} (HTTP {status}); "
                "check that it matches the server's --api-key",
                "auth",
            )
        if status == 404 and wire.is_unknown_model(msg):
            return Rejected(f"the server at {self.base} does not serve that model: {msg}", "model")
        if status in (400, 413, 422):
            limit = wire.audio_limit_from(msg)
            if limit is not None:
                return Rejected(
                    f"the server accepts at most {limit} audios per prompt ({msg})", "too_many_audios", limit
                )
            if wire.is_prompt_too_long(msg):
                return Rejected(f"the conversation is too long for the server's context ({msg})", "too_long")
            if "prompt replacement" in msg:
                return Rejected(
                    f"the server could not place the audio in the prompt ({msg}); its chat "
                    "template must mark audio parts as Qwen2-Audio's does",
                    "other",
                )
            return Rejected(f"the server at {self.base} rejected the request (HTTP {status}): {msg}")
        if status == 429 or status >= 500:
            return Retryable(f"the server at {self.base} failed (HTTP {status}: {msg})")
        return Rejected(f"the server at {self.base} answered HTTP {status}: {msg}")


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:300]


def _reason(err: BaseException) -> str:
    """A short reason for a transport error: the innermost OS message when there is one."""
    inner: BaseException | None = err
    while inner is not None:
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
        inner = inner.__cause__ or inner.__context__
    text = " ".join(str(err).split())
    return text[:120] or type(err).__name__


def _shutdown(resp: httpx.Response | None) -> None:
    """Shut the response's socket down so a reader blocked in recv() wakes and the server sees the client
    leave (vLLM aborts a request whose client disconnected). Closing alone does not wake a blocked recv()."""
    if resp is None:
        return
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
