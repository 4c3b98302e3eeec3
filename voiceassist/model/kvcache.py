"""The decoder's KV cache for a prefix of the conversation's token ids, behind a small interface:
``extend`` (prefill ids, audio embeddings scattered into their ``<|AUDIO|>`` slots), ``step`` (one token),
``crop`` (cut back: exact, since a position never attends to later ones), and ``mark``/``restore``."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

# Prefill runs in chunks of this many tokens: a speculative prefill can be cancelled between two chunks, and a
# long rebuild never materialises the attention of 8192 × 8192 positions at once. Every prefill (speculative or
# not) uses the same chunks, so both give bit-identical caches.
PREFILL_CHUNK = 512  # tokens


class KVCache:
    """Keys and values of the first :attr:`length` ids of a conversation, for ``model``'s text decoder."""

    def __init__(
        self,
        model: Any,
        audio_token_id: int,
        chunk: int = PREFILL_CHUNK,
        static_len: int | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        """``static_len``: pre-allocate a StaticCache of that many positions once (kept for the session's life:
        a reset or trim only rewinds it) and run each decode step through ``torch.compile``; None: the growing
        dynamic cache, eager. A compile that fails falls back to eager for good, said once through ``on_note``."""
        self.model = model
        self.chunk = chunk
        self.audio_token_id = audio_token_id
        self.static_len = static_len
        self._on_note = on_note
        self._static: Any = None  # the one StaticCache (static mode)
        self._epoch: object = object()  # static mode: changes when the cache's contents are dropped
        self._compiled: Any = None  # the compiled decode step; False once it failed
        self._lm, self._head = _decoder_and_head(model)
        self._embed = model.get_input_embeddings()
        # transformers 5 calls it ``cache``, 4.x ``past_key_values``.
        self._kw = "cache" if "cache" in inspect.signature(self._lm.forward).parameters else "past_key_values"
        self._cache: Any = None
        self.length = 0  # positions held (the layers may hold more after a failed forward: see restore)

    @property
    def device(self) -> torch.device:
        return self._embed.weight.device

    def extend(
        self, ids: Sequence[int], audio: Sequence[torch.Tensor], cancel: threading.Event | None = None
    ) -> torch.Tensor | None:
        """Run ``ids`` after the cached prefix, their ``<|AUDIO|>`` positions filled in order from ``audio``
        ([N_i, hidden] each); return the last position's logits [vocab], or None if ``cancel`` was set between
        two chunks (the cache is then longer than :attr:`length`: :meth:`restore` or :meth:`crop` it)."""
        feats = torch.cat(list(audio)) if audio else None
        n_slots = sum(1 for i in ids if i == self.audio_token_id)
        if (feats.shape[0] if feats is not None else 0) != n_slots:
            have = 0 if feats is None else feats.shape[0]
            raise RuntimeError(f"{n_slots} audio tokens but {have} audio embeddings")
        if self._cache is None:
            self._cache = self._fresh_cache()
            self.length = 0
        used = 0
        logits = None
        for start in range(0, len(ids), self.chunk):
            if cancel is not None and cancel.is_set():
                return None
            part = list(ids[start : start + self.chunk])
            n = sum(1 for i in part if i == self.audio_token_id)
            logits = self._forward(part, feats[used : used + n] if n and feats is not None else None)
            used += n
            self.length += len(part)
        return logits

    def step(self, token: int) -> torch.Tensor:
        """Feed one token; return the logits for the next."""
        if self.static_len is not None and self._compiled is not False:
            logits = self._compiled_step(token)
            if logits is not None:
                self.length += 1
                return logits
        logits = self._forward([token], None)
        self.length += 1
        return logits

    def _forward(self, ids: list[int], feats: torch.Tensor | None) -> torch.Tensor:
        ids_t = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.no_grad():
            embeds = self._embed(ids_t)
            if feats is not None:
                embeds[0, ids_t[0] == self.audio_token_id] = feats.to(embeds.dtype)
            extra: dict[str, Any] = {}
            if self.static_len is not None:
                if self.length + len(ids) > self.static_len:
                    raise RuntimeError(
                        f"the static cache holds {self.static_len} positions, not {self.length + len(ids)}"
                    )
                # The positions, explicitly (transformers 5.24's StaticLayer keeps its own write offset,
                # cumulative_length, which _rewind keeps equal to self.length).
                extra["position_ids"] = torch.arange(self.length, self.length + len(ids), device=self.device)[None]
            out = self._lm(inputs_embeds=embeds, use_cache=True, **{self._kw: self._cache}, **extra)
            return self._head(out.last_hidden_state[:, -1])[0]

    # ---- static cache + compiled decode step ------------------------------------------------------------------

    def _fresh_cache(self) -> Any:
        if self.static_len is None:
            return _new_cache(self.model)
        if self._static is None:
            from transformers import StaticCache

            self._static = StaticCache(config=self.model.config.get_text_config(), max_cache_len=self.static_len)
        return self._static

    def _decode_fn(self, embeds: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        out = self._lm(inputs_embeds=embeds, use_cache=True, position_ids=position[None], **{self._kw: self._static})
        return self._head(out.last_hidden_state[:, -1])[0]

    def _compiled_step(self, token: int) -> torch.Tensor | None:
        """One decode step through the compiled function (fixed shapes: one token, the whole static cache, so it
        compiles once); None if compiling or running it failed (eager from then on, said once)."""
        if self.length + 1 > (self.static_len or 0):
            raise RuntimeError(f"the static cache holds {self.static_len} positions")
        try:
            if self._compiled is None:
                mode = "reduce-overhead" if self.device.type == "cuda" else "default"  # CUDA graphs on a GPU
                self._compiled = torch.compile(self._decode_fn, mode=mode, fullgraph=False, dynamic=False)
            with torch.no_grad():
                embeds = self._embed(torch.tensor([[token]], dtype=torch.long, device=self.device))
                position = torch.tensor([self.length], dtype=torch.long, device=self.device)
                logits = self._compiled(embeds, position)
                return logits.clone()  # CUDA graphs reuse their output buffer on the next call
        except Exception as err:  # noqa: BLE001 - any compiler or backend failure: eager still works
            if type(err).__name__ == "OutOfMemoryError":
                raise
            self._compiled = False
            first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            if self._on_note is not None:
                self._on_note(f"the compiled decode step failed ({type(err).__name__}: {first}); decoding eagerly")
            return None

    def crop(self, n: int) -> None:
        """Keep the first ``n`` positions of every layer."""
        if self.static_len is not None:  # positions beyond the length are never attended to; overwritten later
            self.length = min(self.length, n)
            self._rewind(self.length)
            return
        if self._cache is not None:
            for layer in getattr(self._cache, "layers", []):
                keys = getattr(layer, "keys", None)
                if keys is not None and keys.dim() == 4 and keys.shape[-2] > n:
                    layer.keys = keys[..., :n, :]
                    layer.values = layer.values[..., :n, :]
        self.length = min(self.length, n)

    def layer_lengths(self) -> list[int]:
        """Positions held by each layer (all equal to :attr:`length` when consistent)."""
        if self.static_len is not None:
            return [self.length for _ in getattr(self._cache, "layers", [])]
        return [
            layer.keys.shape[-2] if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 else 0
            for layer in getattr(self._cache, "layers", [])
        ]

    def drop(self) -> None:
        """Free everything (the next :meth:`extend` starts a new cache). A static cache stays allocated (it is
        rewound): its contents are forgotten, and marks taken before no longer match."""
        self._cache, self.length = None, 0
        self._epoch = object()
        self._rewind(0)

    def _rewind(self, n: int) -> None:
        """Static mode: set every layer's write offset (transformers' StaticLayer.cumulative_length, a tensor with
        a static address: changed in place) to ``n``, so the next write lands right after the kept prefix and the
        attention mask covers exactly the first ``n`` positions plus the new ones."""
        for layer in getattr(self._static, "layers", None) or []:
            offset = getattr(layer, "cumulative_length", None)
            if getattr(layer, "is_initialized", False) and isinstance(offset, torch.Tensor):
                offset.fill_(n)

    def mark(self) -> tuple[Any, int]:
        """A point to come back to with :meth:`restore`."""
        if self.static_len is not None:
            return (self._epoch if self._cache is not None else None), self.length
        return self._cache, self.length

    def restore(self, mark: tuple[Any, int]) -> None:
        """Back to ``mark``: cropped if it is the same cache, else dropped (the session rebuilds it lazily)."""
        cache, length = mark
        current = self._epoch if self.static_len is not None and self._cache is not None else self._cache
        if cache is not None and cache is current:
            self.crop(length)  # a failure inside a forward may leave some layers longer than others
            self.length = length
            if self.static_len is not None:
                self._rewind(length)
        else:
            self.drop()

    def forget(self, mark: tuple[Any, int]) -> tuple[Any, int]:
        """``mark`` without its hold on the cache tensors (so they can be freed before a rebuild)."""
        return None, mark[1]


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The Qwen2 text decoder (inputs_embeds in, hidden states out) and the LM head, in transformers 5
    (``model.model.language_model`` + ``model.lm_head``) or 4.x (``model.language_model.model`` / ``.lm_head``)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "language_model") and hasattr(model, "lm_head"):
        return inner.language_model, model.lm_head
    causal = getattr(model, "language_model", None)
    if causal is not None and hasattr(causal, "model") and hasattr(causal, "lm_head"):
        return causal.model, causal.lm_head
    raise TypeError(f"{type(model).__name__} has no Qwen2 text decoder: not a Qwen2-Audio model")


# Spare room a layer's buffer grows by, in tokens: appending writes into it instead of copying the whole layer.
GROW_TOKENS = 256


def _new_cache(model: Any) -> Any:
    """A DynamicCache whose full-attention layers grow in steps of GROW_TOKENS (see _GrowingLayer)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config.get_text_config())
    grower = _growing_layer_class(DynamicLayer)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [grower() for _ in cache.layers]
    return cache


_GROWER: Any = None


def _growing_layer_class(base: Any) -> Any:
    """The library's DynamicLayer appends with ``torch.cat``: every decoded token copies the whole layer (at 8k
    tokens, GBs per token on the real model). This subclass keeps keys and values in a buffer with spare room
    and hands out views of its first ``length`` positions; cutting back is taking a shorter view, and writes only
    ever go beyond the current length, so a cut-back prefix is never touched."""
    global _GROWER
    if _GROWER is None:

        class _GrowingLayer(base):
            def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
                self.device = key_states.device
                self._kbuf: torch.Tensor | None = None  # [..., room, head_dim]: keys with spare room
                self._vbuf: torch.Tensor | None = None
                self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
                self.is_initialized = True

            def update(
                self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
            ) -> tuple[torch.Tensor, torch.Tensor]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n, add = self.keys.shape[-2], key_states.shape[-2]
                kbuf, vbuf = self._kbuf, self._vbuf
                if kbuf is None or vbuf is None or n + add > kbuf.shape[-2]:
                    room = -(-(n + add) // GROW_TOKENS) * GROW_TOKENS
                    shape = (*key_states.shape[:-2], room, key_states.shape[-1])
                    kbuf = key_states.new_empty(shape)
                    vbuf = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
                    kbuf[..., :n, :] = self.keys
                    vbuf[..., :n, :] = self.values
                    self._kbuf, self._vbuf = kbuf, vbuf
                kbuf[..., n : n + add, :] = key_states
                vbuf[..., n : n + add, :] = value_states
                self.keys, self.values = kbuf[..., : n + add, :], vbuf[..., : n + add, :]
                return self.keys, self.values

        _GROWER = _GrowingLayer
    return _GROWER
