"""A user's turn as the Session takes it: checked and cut into the encoder's chunks, compared with the one a
speculation prefilled; and any failure during a turn as the one-line BackendError the front ends show."""

from __future__ import annotations

import numpy as np

from voiceassist.backend import UserTurn
from voiceassist.errors import BackendError
from voiceassist.model.chunking import SAMPLE_RATE, split_long_audio


def same_turn(a: UserTurn, b: UserTurn) -> bool:
    """Same text and the same audio samples (a speculation holds for exactly the turn it prefilled)."""
    return (
        a.text == b.text
        and len(a.audios) == len(b.audios)
        and all(x is y or (np.shape(x) == np.shape(y) and np.array_equal(x, y)) for x, y in zip(a.audios, b.audios))
    )


def check_turn(turn: UserTurn) -> list[np.ndarray]:
    """The turn's audios as 16 kHz mono float32 arrays of at most 30 s (longer ones split)."""
    audios: list[np.ndarray] = []
    for a in turn.audios:
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.integer):  # PCM samples (e.g. int16): scale to [-1, 1]
            a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
        a = a.astype(np.float32, copy=False)
        if a.ndim != 1:
            raise BackendError(f"an audio must be mono (one dimension), not of shape {a.shape}")
        if len(a) < SAMPLE_RATE // 100:
            raise BackendError("an audio is empty (shorter than 10 ms); record again")
        if not np.isfinite(a).all():
            raise BackendError("an audio contains NaN or infinite samples")
        audios.extend(split_long_audio(a))
    if not audios and not turn.text.strip():
        raise BackendError("a turn needs audio or text; nothing was given")
    return audios


def backend_error(err: BaseException, context_tokens: int) -> BackendError:
    """``err`` as the turn's one-line error (out of memory named as such); a BackendError as it is."""
    if isinstance(err, BackendError):
        return err
    if type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower():
        return BackendError(
            f"out of GPU memory during the turn ({context_tokens} tokens of context); the "
            "conversation is unchanged: lower --context-limit, reset, or use --quantization 4bit"
        )
    first = str(err).splitlines()[0] if str(err) else ""
    return BackendError(
        f"the model failed during the turn ({type(err).__name__}: {first[:200]}); "
        "the conversation is unchanged, try again"
    )
