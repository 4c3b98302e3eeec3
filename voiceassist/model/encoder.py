"""Qwen2-Audio's audio encoder, run only over the audio that exists.

The processor pads every clip to 30 s (3000 mel frames of 10 ms), and the library's encoder always runs all
3000 frames, masking the padding inside attention: a 2 s utterance costs 30 s of encoder work. The trimmed
path runs the encoder's own modules (conv1, conv2, GELUs, position embeddings, layers, pooling, layer norm)
on just the frames that can influence the kept outputs, and gives the same embeddings to float rounding.

Lengths, for L valid mel frames (``feature_attention_mask.sum()``):

- C = (L - 1) // 2 + 1   positions after conv2 (stride 2) that the library's padding mask keeps;
- N = (C - 2) // 2 + 1   audio tokens after the stride-2 average pooling (= the processor's ``<|AUDIO|>``
                         expansion; N = floor(C / 2), so pooling reads only valid positions 0 .. 2N - 1);
- T = min(3000, 2C + 1)  mel frames the trimmed input must keep: position C - 1 reads conv1 outputs up to
                         2C - 1, which read mel frames up to 2C, a *padding* frame when L is odd or even
                         (it is not zero: the log-mel floor, normalised). Cutting at exactly L is wrong.

Exactness: in the padded pass no valid position attends to a padded one (the mask), and every valid
position's conv output depends only on frames 0 .. 2C, which are the processor's own frames in both paths.
So dropping the padded positions (or masking them when clips of different length share a batch) computes
the same numbers; only the summation order inside the kernels can differ (float rounding, ~1e-6).
"""

from __future__ import annotations

import threading
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

__all__ = ["conv_length", "token_count", "trimmed_frames", "encode_audios", "EncodingCancelled", "MEL_FRAMES"]

MEL_FRAMES = 3000  # the processor's fixed feature length: 30 s at a 10 ms hop (160 samples at 16 kHz)

# Trimmed batching: clips are sorted by length and a batch holds clips at least this fraction of its longest
# clip's length (so at most ~25 % of a batch's work is padding) and at most this many clips (bounds the
# attention matrices: a 30 s clip is 1500 positions, 20 heads x 1500^2 floats = 180 MB per clip in eager).
_GROUP_MIN_FRACTION = 0.8
_GROUP_MAX_CLIPS = 8


class EncodingCancelled(Exception):
    """``cancel`` was set while encoding (a speculative encode overtaken by new speech); nothing is returned."""


def conv_length(valid_frames: int) -> int:
    """C: encoder positions after conv2 for ``valid_frames`` valid mel frames (the library's formula)."""
    return (valid_frames - 1) // 2 + 1


def token_count(valid_frames: int) -> int:
    """N: audio tokens (``<|AUDIO|>`` placeholders) for ``valid_frames`` valid mel frames."""
    if valid_frames <= 0:
        return 0
    return max(0, (conv_length(valid_frames) - 2) // 2 + 1)


def trimmed_frames(valid_frames: int) -> int:
    """T: mel frames the trimmed encoder must keep for ``valid_frames`` valid frames (see module doc)."""
    return min(MEL_FRAMES, 2 * conv_length(valid_frames) + 1)


# The audio tower is a transformers Qwen2AudioEncoder: its submodules (conv1, layers, ...) are attributes that
# nn.Module types as ``Tensor | Module``, so it is typed Any here.
Tower: TypeAlias = Any


def _audio_parts(model: nn.Module) -> tuple[Tower, nn.Module]:
    """(audio_tower, multi_modal_projector) of a Qwen2AudioForConditionalGeneration or Qwen2AudioModel."""
    inner = getattr(model, "model", model)
    for obj in (model, inner):
        tower = getattr(obj, "audio_tower", None)
        projector = getattr(obj, "multi_modal_projector", None)
        if tower is not None and projector is not None:
            return tower, projector
    raise TypeError(f"{type(model).__name__} has no audio_tower / multi_modal_projector: not a Qwen2-Audio model")


def encode_audios(
    model: nn.Module,
    input_features: Tensor,
    feature_attention_mask: Tensor,
    trimmed: bool = True,
    cancel: threading.Event | None = None,
) -> list[Tensor]:
    """Encode a batch of processor outputs into one ``[N_i, text_hidden]`` tensor per audio, in order.

    ``input_features`` is ``[B, mel_bins, 3000]`` and ``feature_attention_mask`` ``[B, 3000]``, both exactly as
    the processor returns them. N_i is the number of ``<|AUDIO|>`` tokens the processor emits for audio i.
    ``trimmed=False`` is the library's padded encoder (the reference); ``trimmed=True`` runs only the frames
    that exist (same result to float rounding, far less work for short clips). No gradients are kept.

    ``cancel`` (trimmed path only) is checked before each encoder layer; once set, :class:`EncodingCancelled`
    is raised, so a speculative encode gives way to real work within one layer (~1/32 of the encoder).
    """
    tower, projector = _audio_parts(model)
    if input_features.dim() != 3 or feature_attention_mask.dim() != 2:
        raise ValueError(
            f"expected input_features [B, mels, {MEL_FRAMES}] and feature_attention_mask [B, {MEL_FRAMES}], "
            f"got {tuple(input_features.shape)} and {tuple(feature_attention_mask.shape)}"
        )
    if input_features.shape[0] != feature_attention_mask.shape[0]:
        raise ValueError("input_features and feature_attention_mask hold different numbers of audios")
    if input_features.shape[0] == 0:
        return []
    device = tower.conv1.weight.device
    input_features = input_features.to(device=device, dtype=tower.conv1.weight.dtype)
    lengths = feature_attention_mask.to(device).sum(-1).long()
    with torch.no_grad():
        if trimmed:
            hidden = _encode_trimmed(tower, input_features, [int(n) for n in lengths.tolist()], cancel)
        else:
            hidden = _encode_padded(tower, input_features, lengths)
        # The projector is a per-token linear map: applying it per clip equals applying it to the batch.
        return [projector(h) for h in hidden]


def _encode_padded(tower: Tower, input_features: Tensor, lengths: Tensor) -> list[Tensor]:
    """The library's own path (Qwen2AudioModel.forward): all 3000 frames, padding masked in attention."""
    conv_lengths, token_lengths = tower._get_feat_extract_output_lengths(lengths)
    batch, _, mel_frames = input_features.shape
    max_positions = (mel_frames - 2) // 2 + 1  # 1500 positions after conv2, as the library computes it
    positions = torch.arange(max_positions, device=lengths.device).unsqueeze(0).expand(batch, max_positions)
    mask_2d = (positions < conv_lengths.unsqueeze(1)).long()
    dummy = torch.zeros((batch, max_positions, 1), dtype=input_features.dtype, device=input_features.device)
    attention_mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
    out = tower(input_features, attention_mask=attention_mask).last_hidden_state
    return [out[i, : max(0, int(n))] for i, n in enumerate(token_lengths.tolist())]


def _groups(conv_lengths: list[int]) -> list[list[int]]:
    """Indices of clips batched together: sorted longest first, similar lengths, bounded batch size."""
    order = sorted(range(len(conv_lengths)), key=lambda i: -conv_lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if (
            groups
            and len(groups[-1]) < _GROUP_MAX_CLIPS
            and conv_lengths[i] >= _GROUP_MIN_FRACTION * conv_lengths[groups[-1][0]]
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _encode_trimmed(
    tower: Tower, input_features: Tensor, lengths: list[int], cancel: threading.Event | None = None
) -> list[Tensor]:
    """The encoder's own modules over the first T frames of each clip (see the module doc for why exact)."""
    out: list[Tensor | None] = [None] * len(lengths)
    width = tower.config.d_model
    for group in _groups([conv_length(n) for n in lengths]):
        if all(token_count(lengths[i]) == 0 for i in group):
            for i in group:
                out[i] = input_features.new_zeros((0, width))
            continue
        frames = max(trimmed_frames(lengths[i]) for i in group)
        positions = [conv_length(lengths[i]) for i in group]
        hidden = _run_tower(tower, input_features[group, :, :frames], positions, cancel)
        for row, i in enumerate(group):
            out[i] = hidden[row, : token_count(lengths[i])]
    return out  # type: ignore[return-value]


def _run_tower(tower: Tower, features: Tensor, positions: list[int], cancel: threading.Event | None = None) -> Tensor:
    """Qwen2AudioEncoder.forward's steps on ``features`` [B, mels, T]; row b has ``positions[b]`` valid
    positions after conv2. Returns the pooled, normalised states [B, max(positions) // 2, d_model]."""
    longest = max(positions)
    embeds = nn.functional.gelu(tower.conv1(features))
    embeds = nn.functional.gelu(tower.conv2(embeds))
    # conv2 gives (T - 1) // 2 + 1 >= longest positions; the extra one (if any) is padding: drop it.
    embeds = embeds.permute(0, 2, 1)[:, :longest]
    hidden = embeds + tower.embed_positions.weight[:longest]
    hidden = nn.functional.dropout(hidden, p=tower.dropout, training=tower.training)
    attention_mask = None  # one length in the batch: padded positions were dropped, nothing to mask
    if min(positions) != longest:
        index = torch.arange(longest, device=hidden.device).unsqueeze(0)
        mask_2d = (index < torch.tensor(positions, device=hidden.device).unsqueeze(1)).long()
        attention_mask = create_bidirectional_mask(config=tower.config, inputs_embeds=hidden, attention_mask=mask_2d)
    for layer in tower.layers:  # eval mode: the library's LayerDrop applies only in training
        if cancel is not None and cancel.is_set():
            raise EncodingCancelled("audio encoding cancelled")
        hidden = layer(hidden, attention_mask)
    hidden = tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
    return tower.layer_norm(hidden)
