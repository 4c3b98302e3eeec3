"""``--model random-7b``: Qwen2-Audio at the published 7B's full shape with random weights, built in memory.

The shape comes from ``voiceassist/data/qwen2-audio-7b-config.json`` (the published config.json: 32-layer
Whisper-large-size encoder, 32-layer Qwen2 decoder, hidden 4096, FFN 11008, 32 KV heads, vocabulary 156032,
8192 positions): ~8.40e9 parameters, 16.8 GB in bf16. Nothing is downloaded and no file is written: the
processor is the tiny model's, built in memory (its byte-level BPE tokenizer, the real feature extractor and
chat template), and the token ids the config names are set to that tokenizer's. The vocabulary stays 156032,
so the ids beyond the tokenizer are padding, masked like the real model's. Every shape, memory figure and timing
is the real one; the replies are noise.

Filling 8.4e9 values from a random generator takes ~5 minutes on 2 cores, so each tensor is filled with
copies of one block of 2^22 seeded normal values at a random offset: memory-bandwidth speed (~10 s), the
values still spread like an N(0, 0.02) initialisation, which is all a timing or memory measurement needs.
"""

from __future__ import annotations

from typing import Any

from voiceassist.model.memory import QUANT_SKIP_MODULES, shipped_7b_config

NAME = "random-7b"
INIT_STD = 0.02
POOL = 1 << 22  # values in the random block tensors are filled from
SEED = 7


def random_7b_config(tokenizer: Any) -> Any:
    """The published 7B config with its token ids set to ``tokenizer``'s."""
    config = shipped_7b_config()
    tok = tokenizer.convert_tokens_to_ids
    config.audio_token_index = tok("<|AUDIO|>")
    text = config.get_text_config()
    text.bos_token_id = tok("<|endoftext|>")
    text.eos_token_id = tok("<|im_end|>")
    text.pad_token_id = tok("<|endoftext|>")
    return config


def build_random_7b(processor: Any, device: str, dtype: Any, quantization: str = "none", config: Any = None) -> Any:
    """The random-weight 7B on ``device`` in ``dtype`` (the compute dtype when ``quantization`` is 8bit/4bit,
    which needs bitsandbytes and a CUDA GPU: each linear layer is quantized as it moves to the GPU, so the GPU
    never holds the bf16 copy). ``config``: another shape (tests build a small one the same way)."""
    import torch
    from torch import nn
    from transformers import Qwen2AudioForConditionalGeneration

    from voiceassist.model.tiny import generation_config_for

    config = config if config is not None else random_7b_config(processor.tokenizer)
    # Parameters on the meta device (no memory), buffers real: the rotary frequencies are computed at
    # construction, so they are right without any weight.
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = Qwen2AudioForConditionalGeneration(config)
    quant = None
    if quantization != "none":
        from transformers import BitsAndBytesConfig
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear

        quant = (
            BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(QUANT_SKIP_MODULES))
            if quantization == "8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                llm_int8_skip_modules=list(QUANT_SKIP_MODULES),
            )
        )
        model = replace_with_bnb_linear(model, list(QUANT_SKIP_MODULES), quant)
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    pool = (torch.randn(POOL, generator=gen) * INIT_STD).to(device=device, dtype=dtype)
    offsets = torch.randint(0, POOL, (4096,), generator=gen).tolist()
    k = 0
    for module in list(model.modules()):
        for pname, p in list(module.named_parameters(recurse=False)):
            is_norm = isinstance(module, (nn.LayerNorm,)) or "norm" in type(module).__name__.lower()
            if p.dim() < 2:  # biases 0, norm scales 1
                value = torch.full(p.shape, 1.0 if (is_norm and pname == "weight") else 0.0, dtype=dtype, device=device)
            else:
                value = torch.empty(p.shape, dtype=dtype, device=device if quant is None else "cpu")
                _fill(value, pool.to(value.device), offsets[k % len(offsets)])
                k += 1
            if quant is not None and type(p).__name__ in ("Params4bit", "Int8Params"):
                param = _bnb_param(p, value, device)
            else:
                param = nn.Parameter(value, requires_grad=False)
            module._parameters[pname] = param
    model.to(device)  # type: ignore[arg-type]  # the buffers (the parameters are there already)
    model.generation_config = generation_config_for(processor.tokenizer)
    return model.eval()


def _fill(t: Any, pool: Any, offset: int) -> None:
    """Fill ``t`` with consecutive copies of ``pool`` starting at ``offset`` (wrapping around)."""
    flat = t.view(-1)
    n, size, pos = flat.numel(), pool.numel(), 0
    while pos < n:
        start = (offset + pos) % size
        take = min(size - start, n - pos)
        flat[pos : pos + take].copy_(pool[start : start + take])
        pos += take


def _bnb_param(meta_param: Any, value: Any, device: str) -> Any:
    """A bitsandbytes parameter holding ``value``, quantized by the move to ``device`` (as from_pretrained does)."""
    import bitsandbytes as bnb

    if type(meta_param).__name__ == "Int8Params":
        return bnb.nn.Int8Params(value, requires_grad=False, has_fp16_weights=False).to(device)
    return bnb.nn.Params4bit(
        value,
        requires_grad=False,
        quant_type=meta_param.quant_type,
        compress_statistics=meta_param.compress_statistics,
        quant_storage=meta_param.quant_storage,
        module=getattr(meta_param, "module", None),
    ).to(device)
