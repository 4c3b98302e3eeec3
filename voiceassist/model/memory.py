"""What a model needs in memory, worked out from its config before any weight is read, and what a device has.

Weights are counted from the model built on the ``meta`` device (shapes only, no memory, ~0.5 s for the 7B):
every parameter at the load dtype, except the linear layers that bitsandbytes quantizes (the same matching
transformers applies to the same skip list, :data:`QUANT_SKIP_MODULES`). The KV cache costs
``2 (keys, values) × layers × KV heads × head size × dtype bytes`` per token: 0.5 MiB in bf16 for the 7B,
4 GiB at its 8192 context. ``working`` is what one prefill chunk needs on top (attention scores, MLP, logits,
the audio encoder) plus a slack for the runtime.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 1024**3
MiB = 1024**2
# bitsandbytes keeps these unquantized: the Whisper-size audio encoder and the projector (small next to the
# decoder, and their errors reach every audio token) and the LM head (its rounding moves every logit). Names as
# Qwen2AudioForConditionalGeneration has them in transformers 5.24; patterns match from the start of a module
# name up to a dot, or as a suffix. Passing a list replaces transformers' default skip (the LM head): it is here.
QUANT_SKIP_MODULES = ("model.audio_tower", "model.multi_modal_projector", "lm_head")
NF4_BLOCK = 64  # bitsandbytes 4-bit: one float32 absmax per 64 weights (no double quantization)
RUNTIME_SLACK = 256 * MiB  # allocator fragmentation, library workspaces: never counted exactly
MIN_CONTEXT = 2048  # tokens: one 30 s audio (758) + a 512-token reply + the system prompt, with room to spare
PUBLISHED_7B = "Qwen/Qwen2-Audio-7B-Instruct"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class MemoryNeed:
    """What loading and running a model takes on one device, bytes."""

    parameters: int
    weights_bytes: int
    kv_bytes_per_token: int
    working_bytes: int  # one prefill chunk at the full context + runtime slack
    dtype: str  # weights (and KV cache) dtype: float32, bfloat16, float16
    quantization: str  # none, 8bit, 4bit

    def total(self, context: int) -> int:
        return self.weights_bytes + self.kv_bytes_per_token * context + self.working_bytes

    def max_context(self, free: int) -> int:
        """The longest context that fits in ``free`` bytes (a multiple of 256 tokens; 0 if none)."""
        room = free - self.weights_bytes - self.working_bytes
        return max(0, room // self.kv_bytes_per_token // 256 * 256) if self.kv_bytes_per_token else 0


def shipped_7b_config() -> Any:
    """The published Qwen2-Audio-7B-Instruct shape (``voiceassist/data/qwen2-audio-7b-config.json``)."""
    from transformers import Qwen2AudioConfig

    path = Path(__file__).resolve().parent.parent / "data" / "qwen2-audio-7b-config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return Qwen2AudioConfig(**data)


def config_from_folder(folder: str) -> Any:
    from transformers import Qwen2AudioConfig

    return Qwen2AudioConfig.from_pretrained(folder)


def meta_model(config: Any) -> Any:
    """The model with every parameter on the meta device: shapes and names, no memory."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        return Qwen2AudioForConditionalGeneration(config)


def quantized_linear_names(model: Any) -> list[str]:
    """Names of the nn.Linear modules bitsandbytes replaces given :data:`QUANT_SKIP_MODULES` (transformers'
    own matching function, so this is what ``from_pretrained`` with our BitsAndBytesConfig quantizes)."""
    from torch import nn

    return [n for n, m in model.named_modules() if type(m) is nn.Linear and should_quantize(n)]


def should_quantize(name: str) -> bool:
    """transformers' own matching (quantizers_utils.should_convert_module) of ``name`` against the skip list."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return bool(should_convert_module(name, list(QUANT_SKIP_MODULES)))


def estimate(config: Any, dtype: str, quantization: str = "none", context: int = 8192, chunk: int = 512) -> MemoryNeed:
    """Memory for ``config`` loaded in ``dtype`` (the compute dtype when quantized) at ``context`` tokens."""
    from torch import nn

    size = _DTYPE_BYTES[dtype]
    model = meta_model(config)
    quantized = set(quantized_linear_names(model)) if quantization != "none" else set()
    params = weights = 0
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            n = p.numel()
            params += n
            if name in quantized and pname == "weight" and type(module) is nn.Linear:
                if quantization == "4bit":
                    weights += n // 2 + math.ceil(n / NF4_BLOCK) * 4
                else:  # 8bit: int8 weights + one float32 scale per output row
                    weights += n + module.out_features * 4
            else:
                weights += n * size
    text = config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    kv = 2 * text.num_hidden_layers * kv_heads * head * size
    audio = config.audio_config
    positions = audio.max_source_positions
    c = min(chunk, context)
    working = (
        c * context * text.num_attention_heads * 4  # attention scores of one chunk, float32 at worst
        + c * text.intermediate_size * 3 * size  # gate, up, product
        + c * text.hidden_size * 6 * size  # residual stream, norms, projections
        + text.vocab_size * 4 * 4  # last-position logits and the sampler's float32 copies
        + positions * positions * audio.encoder_attention_heads * 4  # encoder attention (30 s audio)
        + positions * audio.encoder_ffn_dim * 4 * 2
        + RUNTIME_SLACK
    )
    return MemoryNeed(params, weights, kv, working, dtype, quantization)


# ---- what the machine has -------------------------------------------------------------------------------------


def ram_available() -> int:
    """Bytes of RAM the kernel says can be allocated without swapping (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover
        return 0


def ram_total() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover
        return 0


def cpu_bf16_native() -> bool:
    """Does this CPU compute in bf16 natively (AVX512-BF16 / AMX on x86, the BF16 extension on Arm)? Without
    it torch emulates bf16 matmuls: correct, but slower than float32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def gpu_free(device: str) -> int:
    """Free bytes on CUDA ``device`` (``cuda:N``), as the driver reports them."""
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def gpu_bf16_native(device: str) -> bool:
    """Native bf16 on CUDA ``device``: compute capability 8.0 or newer (Ampere on). Not
    ``torch.cuda.is_bf16_supported()``, which counts emulation (true on a T4 or V100) and asks the current device
    rather than the chosen one."""
    import torch

    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def gpu_name(device: str) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"{torch.cuda.get_device_name(torch.device(device))}, compute capability {major}.{minor}"


def free_on(device: str) -> int:
    return gpu_free(device) if device.startswith("cuda") else ram_available()


def gb(n: float) -> str:
    """Bytes as GB with one decimal (decimal GB, as cards and RAM are sold)."""
    return f"{n / 1e9:.1f} GB"
