"""The OpenAI-compatible chat wire format as vLLM speaks it: audio parts, messages, SSE lines, error bodies.

Pure functions only (no network), so each piece is tested on its own. Imports neither torch nor transformers:
this is the thin client's side.

What the server expects (vLLM 0.32 ``/v1/chat/completions``):
- a user message's ``content`` is a list of parts; an audio part is
  ``{"type": "input_audio", "input_audio": {"data": BASE64_WAV, "format": "wav"}}``. We send 16 kHz mono
  16-bit PCM WAV: it is what Qwen2-Audio's feature extractor wants, so the server never has to resample (its
  resampler is a library a server install may lack), and 16-bit halves the upload against float32;
- a streamed reply is server-sent events: ``data: {json chunk}`` lines, a blank line between events, the
  text in ``choices[0].delta.content``, usage (with ``stream_options.include_usage``) in a last chunk with no
  choices, then ``data: [DONE]``; an error after the stream started comes as ``data: {"error": {...}}``;
- an error before the stream is an HTTP status with ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from voiceassist.events import SAMPLE_RATE

AUDIO_TOKENS_PER_S = 25  # Qwen2-Audio: 100 mel frames/s, conv stride 2, pooling 2 → 25 tokens per second
AUDIO_OVERHEAD_TOKENS = 8  # "Audio N: <|audio_bos|>…<|audio_eos|>\n" around each audio's tokens
MESSAGE_OVERHEAD_TOKENS = 5  # "<|im_start|>role\n" … "<|im_end|>\n"
CHARS_PER_TOKEN = 3.0  # a deliberately low ratio (English BPE gives ~4) so the estimate errs on the safe side


def wav_base64(audio: np.ndarray) -> str:
    """16 kHz mono float32 samples in [-1, 1] → base64 of a 16-bit PCM WAV file."""
    pcm = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    pcm16 = np.round(pcm * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm16.tobytes())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def audio_part(b64_wav: str) -> dict[str, Any]:
    # The extra "audio" key is for the chat template. vLLM hands a template each audio part as
    # {"type": "audio", <the part's extra keys>}, but Qwen2-Audio's template (the hub one and the tiny
    # model's) recognises an audio part by ``'audio' in content``: without an "audio" key it renders no
    # <|AUDIO|> token and vLLM fails with "Failed to apply prompt replacement". With it, the prompt is
    # token for token what the local session builds, and a stock `vllm serve` needs no template flag.
    return {"type": "input_audio", "input_audio": {"data": b64_wav, "format": "wav"}, "audio": ""}


def user_message(b64_wavs: tuple[str, ...] | list[str], text: str) -> dict[str, Any]:
    """A user turn: its audios first (in order), then the typed text, as Qwen2-Audio's examples do."""
    parts: list[dict[str, Any]] = [audio_part(b) for b in b64_wavs]
    if text:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def sampling_fields(gen: Any) -> dict[str, Any]:
    """The request's sampling fields for a [generation] config: what is set is sent (vLLM's OpenAI API takes
    temperature, top_p, top_k and repetition_penalty); what is left "as the model ships" (negative, or a penalty
    ≤ 0) is left out, and vLLM applies the model's generation_config.json (its default ``--generation-config
    auto``), as the local session does. Greedy (temperature or top_p 0) is temperature 0."""
    if gen.temperature == 0 or gen.top_p == 0:
        out: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0}
    else:
        out = {}
        if gen.temperature > 0:
            out["temperature"] = gen.temperature
        if gen.top_p > 0:
            out["top_p"] = gen.top_p
    top_k = getattr(gen, "top_k", -1)
    if top_k >= 0:
        out["top_k"] = top_k if top_k > 0 else -1  # vLLM: -1 = off (0 is refused)
    penalty = getattr(gen, "repetition_penalty", -1.0)
    if penalty > 0:
        out["repetition_penalty"] = penalty
    return out


def estimate_text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_audio_tokens(n_samples: int) -> int:
    return math.ceil(n_samples / SAMPLE_RATE * AUDIO_TOKENS_PER_S) + AUDIO_OVERHEAD_TOKENS


def estimate_user_tokens(audio_lengths: tuple[int, ...], text: str) -> int:
    """Tokens a user message costs (audio lengths in samples); exact counts come later from the server's usage."""
    return MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(text) + sum(estimate_audio_tokens(n) for n in audio_lengths)


# ---- server-sent events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One parsed SSE event of a streamed chat completion."""

    text: str = ""  # reply text in this chunk
    finish_reason: str | None = None  # "stop", "length", "abort", ... on the last content chunk
    prompt_tokens: int | None = None  # from the usage chunk
    completion_tokens: int | None = None  # from the usage chunk
    done: bool = False  # the "[DONE]" sentinel
    error: str | None = None  # an error reported inside the stream
    is_token: bool = False  # a content chunk (vLLM sends one per generated token, text "" while a character
    #                         is incomplete), not the opening role chunk nor the usage chunk


def parse_sse_line(line: str) -> Chunk | None:
    """One line of the event stream → a Chunk, or None for blank lines, comments and non-data fields."""
    if not line.startswith("data:"):
        return None  # blank separator, ": keep-alive" comment, "event:"/"id:" fields
    payload = line[5:].strip()
    if payload == "[DONE]":
        return Chunk(done=True)
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError:
        return Chunk(error=f"the server sent a malformed event: {payload[:80]!r}")
    if not isinstance(obj, dict):
        return Chunk(error=f"the server sent an unexpected event: {payload[:80]!r}")
    if "error" in obj:
        return Chunk(error=error_message(obj) or "the server reported an error during the reply")
    text, finish, is_token = "", None, False
    choices = obj.get("choices") or []
    if choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        finish = choice.get("finish_reason")
        is_token = "role" not in delta
    usage = obj.get("usage") or {}
    return Chunk(
        text=text,
        finish_reason=finish,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        is_token=is_token,
    )


# ---- error bodies ------------------------------------------------------------------------------------------


def error_message(body: Any) -> str:
    """The human message inside an error body (OpenAI ``{"error": {"message"}}`` or older vLLM
    ``{"object": "error", "message"}``), flattened to one line; "" when there is none."""
    msg: Any = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message", "")
        elif isinstance(err, str):
            msg = err
        else:
            msg = body.get("message") or body.get("detail") or ""
    elif isinstance(body, str):
        msg = body
    # vLLM's engine-death message points at a server log the kiosk user cannot see.
    msg = str(msg).replace("See stack trace (above) for the root cause.", "")
    return " ".join(msg.split()).rstrip(" .")


_TOO_MANY_AUDIOS = re.compile(r"At most (\d+) audio\(s\) may be provided", re.I)
_TOO_LONG = re.compile(r"maximum context length|longer than the maximum model length|maximum model length", re.I)
_UNKNOWN_MODEL = re.compile(r"model .*does not exist|model not found|no such model", re.I)


def audio_limit_from(message: str) -> int | None:
    """The server's per-prompt audio limit named in a 400 answer, e.g. 'At most 8 audio(s) may be provided'."""
    m = _TOO_MANY_AUDIOS.search(message)
    return int(m.group(1)) if m else None


def is_prompt_too_long(message: str) -> bool:
    return bool(_TOO_LONG.search(message))


def is_unknown_model(message: str) -> bool:
    return bool(_UNKNOWN_MODEL.search(message))
