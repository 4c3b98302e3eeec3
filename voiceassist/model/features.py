"""Log-mel features exactly as the processor computes them, without computing 30 s of padding each time.

The processor zero-pads every clip to 30 s and runs the STFT over all of it: for a 5 s clip 5/6 of that work
is spent on silence whose frames are all the same number. Here the STFT runs over the audio zero-padded only
a few frames past what the trimmed encoder reads (:func:`voiceassist.model.encoder.trimmed_frames`), and the
remaining frames are filled with the value of an all-zero frame, which the extraction itself produced. The
result is the processor's ``[B, mels, 3000]`` features and ``[B, 3000]`` mask, bit for bit (tested).

Why exact: a frame reads 400 samples around its centre (10 ms hop, centred STFT), so frames whose window lies
in the zero padding are identical; the per-clip normalisation ``max(log_mel, max - 8)`` takes its maximum over
frames that all exist in the shorter extraction (an all-zero frame is the floor, never above a real frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from voiceassist.events import SAMPLE_RATE
from voiceassist.model.encoder import trimmed_frames

# The processor's mel projection is one float64 matrix product over all frames. OpenBLAS takes another code path
# for a small product than for the processor's 3000 frames, and on some CPUs (seen on an AVX2 AMD EPYC) that path
# rounds the last bit differently. 128 frames (80 mels x 201 bins x 128, a product of 2.1e6) keep the trimmed
# extraction on the large path (checked there on 1 to 80000 samples), at the cost of 1.28 s of STFT (~1 ms).
MIN_FRAMES = 128


def valid_frames(n_samples: int, hop: int = 160, max_frames: int = 3000) -> int:
    """The processor's count of valid mel frames (its ``feature_attention_mask.sum()``) for a clip."""
    return min(max_frames, -(-n_samples // hop))


def extract(feature_extractor: Any, audios: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_features [B, mels, 3000], feature_attention_mask [B, 3000]) equal to the processor's."""
    fe = feature_extractor
    hop, total = fe.hop_length, fe.nb_max_frames
    # Frames whose 400-sample window can reach real audio beyond frame T, plus a margin, are computed.
    reach = -(-fe.n_fft // hop) + 2
    feats, masks = [], []
    for audio in audios:
        n_valid = valid_frames(len(audio), hop, total)
        frames = min(total, max(MIN_FRAMES, trimmed_frames(n_valid) + reach))
        if frames >= total:
            out = fe([audio], sampling_rate=SAMPLE_RATE, padding="max_length", return_tensors="pt")
            feat = out["input_features"][0]
        else:
            out = fe(
                [audio],
                sampling_rate=SAMPLE_RATE,
                padding="max_length",
                max_length=frames * hop,
                truncation=True,
                return_tensors="pt",
            )
            part = out["input_features"][0]  # [mels, frames]; its last frame reads zeros only
            feat = part[:, -1:].expand(part.shape[0], total).clone()
            feat[:, :frames] = part
        mask = torch.zeros(total, dtype=torch.long)
        mask[:n_valid] = 1
        feats.append(feat)
        masks.append(mask)
    return torch.stack(feats), torch.stack(masks)
