"""Loading Qwen2-Audio (processor + model) for a Session: where from, on which device, in which precision.

``model.name`` is a hub id (default ``Qwen/Qwen2-Audio-7B-Instruct``), a local folder, or ``tiny`` (the
offline random-weight model of :mod:`voiceassist.model.tiny`). Every problem a user can fix is one line
(:class:`~voiceassist.errors.ModelError`) saying what to do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from voiceassist.config import Config, ModelConfig
from voiceassist.errors import ModelError, ModelSettingError
from voiceassist.model import memory
from voiceassist.model.memory import MemoryNeed, MiB

RANDOM_7B = "random-7b"
# [model] compile = "auto" turns the static cache + compiled decode step on for CUDA only once it is measured
# faster there (scripts/bench_gpu.py). No CUDA GPU has run it yet: off until one does.
COMPILE_AUTO_ON_CUDA = False

HUB_PROBE_TIMEOUT_S = 5.0  # how long to wait for the hub's host before saying it cannot be reached


@dataclass(frozen=True)
class LoadPlan:
    """What :func:`plan_load` decided before any weight is read."""

    device: str  # cpu or cuda:N
    dtype: Any  # torch dtype of the weights (the compute dtype when quantized)
    context_limit: int  # tokens: the configured limit, or lower to fit the free memory
    need: MemoryNeed
    free_bytes: int
    notes: tuple[str, ...] = ()  # one line each: what was chosen for the user and why


def load_session(config: Config, on_note: Callable[[str], None] | None = None) -> Any:
    """Load the processor and model named by ``config.model`` and return a ready :class:`Session`.

    ``on_note`` gets each line about a choice made for the user (a context lowered to fit, bf16 emulated on this
    CPU, the compiled decode falling back to eager); default: printed on stderr as ``voiceassist: note: ...``.
    """
    from voiceassist.model.session import Session

    note = on_note or _print_note
    mc = config.model
    path, label = resolve_model_path(mc.name)
    plan = plan_load(mc, path)
    for line in plan.notes:
        note(line)
    processor, model = _load(path, mc, plan.device, plan.dtype, plan.need.total(plan.context_limit))
    precision = {"8bit": "8-bit", "4bit": "4-bit"}.get(
        mc.quantization, _DTYPE_LABEL.get(str(plan.dtype), str(plan.dtype))
    )
    lowered = f" · context {plan.context_limit}" if plan.context_limit < mc.context_limit else ""
    session = Session(
        model,
        processor,
        generation=config.generation,
        context_limit=plan.context_limit,
        trimmed_encoder=mc.trimmed_encoder,
        description=f"{label} · {plan.device} · {precision}{lowered}",
        compile=resolve_compile(mc.compile, plan.device),
        on_note=note,
    )
    return session


def _print_note(line: str) -> None:
    print(f"voiceassist: note: {line}", file=sys.stderr, flush=True)


_DTYPE_LABEL = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
_DTYPE_NAME = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def model_config(name: str, path: str | None) -> Any:
    """The model's config without its weights: the folder's config.json, or the shipped 7B shape."""
    if name == RANDOM_7B or path is None:
        return memory.shipped_7b_config()
    return memory.config_from_folder(path)


def plan_load(mc: ModelConfig, path: str | None) -> LoadPlan:
    """Device, dtype and context limit for ``mc``, checked against the free memory of the chosen device before
    any weight is read. Raises :class:`ModelSettingError` (one line, exit 2) for what this machine cannot run."""
    device = resolve_device(mc.device)
    _check_quantization(mc, device)
    _check_attention(mc, device)
    try:
        cfg = model_config(mc.name, path)
    except Exception as err:  # noqa: BLE001 - a config.json transformers cannot read: one line, not a traceback
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelError(
            f"cannot read the model config in {path} ({first}); re-download the model, or use --model tiny"
        ) from None
    notes: list[str] = []
    dtype = resolve_dtype(mc.dtype, device, mc.name, cfg, mc.context_limit, notes)
    dname = _DTYPE_NAME[str(dtype)]
    max_pos = getattr(cfg.get_text_config(), "max_position_embeddings", mc.context_limit)
    context = min(mc.context_limit, max_pos)
    need = memory.estimate(cfg, dname, mc.quantization, context)
    free = memory.free_on(device)
    fits = need.max_context(free)
    if fits < context:
        if fits >= min(memory.MIN_CONTEXT, context):
            notes.append(
                f"context limit lowered from {context} to {fits} tokens to fit the {memory.gb(free)} free on "
                f"{device} (weights {memory.gb(need.weights_bytes)} + {need.kv_bytes_per_token / MiB:g} MiB of KV "
                f"cache per token); for the full context, free memory"
                + (" or use --quantization 4bit" if device.startswith("cuda") and mc.quantization != "4bit" else "")
            )
            context = fits
        else:
            raise ModelSettingError(_not_enough(mc, device, dname, need, context, free, cfg))
    return LoadPlan(device, dtype, context, need, free, tuple(notes))


def _not_enough(mc: ModelConfig, device: str, dname: str, need: MemoryNeed, context: int, free: int, cfg: Any) -> str:
    """The one-line refusal: what is needed, what is free, and what would fit."""
    what = f"{dname}" if mc.quantization == "none" else f"{mc.quantization} ({dname} compute)"
    options: list[str] = []
    on_gpu = device.startswith("cuda")
    for q in ("4bit",) if on_gpu and mc.quantization != "4bit" else ():
        n = memory.estimate(cfg, dname, q, context)
        if n.max_context(free) >= min(memory.MIN_CONTEXT, context):
            options.append(f"--quantization {q} (needs {memory.gb(n.total(context))})")
    if need.max_context(free) > 0:
        options.append(f"--context-limit {need.max_context(free)}")
    ram = memory.ram_available()
    if on_gpu:
        n = memory.estimate(cfg, "bfloat16", "none", context)
        if n.max_context(ram) >= min(memory.MIN_CONTEXT, context):
            options.append(f"--device cpu (bf16 needs {memory.gb(n.total(context))}, {memory.gb(ram)} of RAM free)")
    elif dname == "float32":
        n = memory.estimate(cfg, "bfloat16", "none", context)
        if n.max_context(free) >= min(memory.MIN_CONTEXT, context):
            options.append(f"--dtype bfloat16 (needs {memory.gb(n.total(context))})")
    if not options:
        options.append("a GPU with more memory, or --server URL (a vLLM server)")
    return (
        f"not enough memory for {mc.name} in {what} on {device}: it needs {memory.gb(need.total(context))} "
        f"({memory.gb(need.weights_bytes)} of weights + {memory.gb(need.kv_bytes_per_token * context)} of KV cache "
        f"for {context} tokens + {memory.gb(need.working_bytes)} working), {memory.gb(free)} is free; "
        f"what would fit: {', or '.join(options)}"
    )


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda:0`` when a CUDA GPU is usable, else ``cpu``; checks that cuda/cuda:N exist."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"--device {device} was asked for but torch sees no CUDA GPU (torch "
                f"{torch.__version__}); use --device cpu or auto, or install a CUDA build of torch"
            )
        index = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise ModelError(
                f"--device {device}: there is no such GPU (found {torch.cuda.device_count()}); "
                f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}"
            )
        return f"cuda:{int(index)}"
    raise ModelError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")


def resolve_dtype(
    dtype: str,
    device: str,
    name: str = "",
    cfg: Any = None,
    context: int = 8192,
    notes: list[str] | None = None,
) -> Any:
    """The weights' dtype. ``auto``: on a GPU bfloat16 where the chosen GPU has it natively (compute capability
    8.0+), else float16. On CPU: bfloat16 where the CPU has it natively (AVX512-BF16, AMX, Arm BF16); else float32
    when that fits in free RAM (it is faster than emulated bf16), else bfloat16 (said in ``notes``). The tiny test
    model is always float32 on CPU (exactness is what it is for). An explicit bfloat16 on a GPU without native
    bf16 is refused (one line, exit 2)."""
    import torch

    notes = notes if notes is not None else []
    if device.startswith("cuda"):
        native = memory.gpu_bf16_native(device)
        if dtype == "auto":
            return torch.bfloat16 if native else torch.float16
        if dtype == "bfloat16" and not native:
            raise ModelSettingError(
                f"--dtype bfloat16: {device} ({memory.gpu_name(device)}) has no native bf16 (it needs compute "
                "capability 8.0+, e.g. A100, L4, RTX 30xx); use --dtype float16 or auto"
            )
        return _torch_dtype(dtype)
    if dtype != "auto":
        return _torch_dtype(dtype)
    if name == "tiny" or cfg is None:
        return torch.float32
    if memory.cpu_bf16_native():
        return torch.bfloat16
    f32 = memory.estimate(cfg, "float32", "none", context)
    if f32.max_context(memory.ram_available()) >= min(memory.MIN_CONTEXT, context):
        return torch.float32
    notes.append(
        f"loading in bfloat16: float32 would need {memory.gb(f32.total(context))} and this CPU has no native bf16 "
        "(emulated: slower than float32, not exact; --dtype float32 for exactness where RAM allows)"
    )
    return torch.bfloat16


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_compile(setting: str, device: str) -> bool:
    """``[model] compile``: on / off, or auto = on for CUDA, off on CPU (see config.py for why)."""
    if setting == "auto":
        return device.startswith("cuda") and COMPILE_AUTO_ON_CUDA
    return setting == "on"


def _check_quantization(mc: ModelConfig, device: str) -> None:
    if mc.quantization == "none":
        return
    if not device.startswith("cuda"):
        raise ModelSettingError(
            f"--quantization {mc.quantization} runs on a CUDA GPU only (bitsandbytes), not on {device}; use "
            "--quantization none on CPU (bfloat16 halves float32's memory), or --device cuda with "
            "pip install 'voiceassist[quant]'"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"--quantization {mc.quantization} needs bitsandbytes, which is not installed; "
            "pip install 'voiceassist[quant]' (or use --quantization none)"
        )


def quantization_config(quantization: str, dtype: Any) -> Any:
    """The BitsAndBytesConfig for ``quantization`` (8bit, 4bit): NF4 with ``dtype`` compute for 4-bit; the
    audio encoder, projector and LM head kept unquantized (:data:`memory.QUANT_SKIP_MODULES`)."""
    from transformers import BitsAndBytesConfig

    skip = list(memory.QUANT_SKIP_MODULES)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip
    )


def _check_attention(mc: ModelConfig, device: str) -> None:
    if mc.attn_implementation != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise ModelError(
            "--attn flash_attention_2 needs the flash-attn package, which is not installed; "
            "pip install flash-attn, or use --attn sdpa"
        )
    if not device.startswith("cuda"):
        raise ModelError(f"--attn flash_attention_2 runs on a CUDA GPU only, not on {device}; use --attn sdpa")


def resolve_model_path(name: str) -> tuple[str | None, str]:
    """(a local folder to load from, a short label) for ``tiny``, a folder, or a hub id (cached or reachable);
    (None, label) for ``random-7b``, which has no folder."""
    if name == RANDOM_7B:
        return None, "random-weight Qwen2-Audio-7B shape"
    if name == "tiny":
        from voiceassist.model.tiny import tiny_model_dir

        return str(tiny_model_dir()), "tiny Qwen2-Audio (random weights)"
    p = Path(name).expanduser()
    if p.exists() or _looks_like_path(name):
        return str(_check_folder(p)), p.name or str(p)
    return _hub(name), name.rsplit("/", 1)[-1]


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with a separator, or starting like a path, is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith("/") or "\\" in name


def _check_folder(p: Path) -> Path:
    if not p.exists():
        raise ModelError(f"model folder {p} does not exist; give a Qwen2-Audio folder, a hub id, or tiny")
    if not p.is_dir():
        raise ModelError(f"{p} is a file, not a model folder; give a Qwen2-Audio folder, a hub id, or tiny")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelError(
            f"{p} is not a Qwen2-Audio model folder (no config.json); give a folder with the model "
            "files, a hub id, or tiny"
        )
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ModelError(f"{cfg} is not a readable model config (bad JSON); re-download the model") from None
    if model_type != "qwen2_audio":
        raise ModelError(
            f"{p} holds a {model_type or 'unknown'} model, not Qwen2-Audio; give a Qwen2-Audio "
            "folder (e.g. Qwen/Qwen2-Audio-7B-Instruct), or tiny"
        )
    return p


def _hub(repo: str) -> str:
    """The local snapshot of hub model ``repo``: from the cache if complete, else downloaded."""
    try:
        from huggingface_hub import constants as hub_constants
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelError("huggingface_hub is not installed; pip install 'voiceassist[model]'") from None
    try:
        return _check_folder(Path(snapshot_download(repo, local_files_only=True))).as_posix()
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    offline = hub_constants.HF_HUB_OFFLINE or not _hub_reachable(hub_constants.ENDPOINT)
    if offline:
        raise ModelError(
            f"model {repo} is not downloaded and the hub cannot be reached (offline); use --model "
            "PATH (a downloaded copy), or --model tiny for the offline test model"
        )
    try:
        return _check_folder(Path(snapshot_download(repo))).as_posix()
    except RepositoryNotFoundError:
        raise ModelError(
            f"model {repo} was not found on the hub (or needs a login); check the id, e.g. "
            "Qwen/Qwen2-Audio-7B-Instruct, or use --model PATH or tiny"
        ) from None
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model {repo} could not be downloaded ({type(err).__name__}); check the connection "
            "and disk space, or use --model PATH or tiny"
        ) from None


def _hub_reachable(endpoint: str) -> bool:
    """Can we open a TCP connection to the hub host within a few seconds? (Instead of the library's 5 retries
    over ~30 s.) Behind a proxy we cannot tell: assume yes and let the download report."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _load(path: str | None, mc: ModelConfig, device: str, dtype: Any, need: int = 0) -> tuple[Any, Any]:
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar over the TUI or the JSON output
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": mc.attn_implementation}
    if mc.quantization != "none":
        kwargs["quantization_config"] = quantization_config(mc.quantization, dtype)
    if device.startswith("cuda"):
        if importlib.util.find_spec("accelerate") is None:
            raise ModelError(
                "loading onto a GPU needs accelerate (device_map), which is not installed; "
                "pip install 'voiceassist[model]'"
            )
        kwargs["device_map"] = {"": device}  # straight onto the GPU, no CPU copy of 17 GB
    try:
        if path is None:  # random-7b: built in memory, nothing read or written
            from voiceassist.model.random7b import build_random_7b
            from voiceassist.model.tiny import build_tiny_processor

            processor = build_tiny_processor()
            model = build_random_7b(processor, device, dtype, mc.quantization)
            model.config._attn_implementation = mc.attn_implementation
        else:
            processor = AutoProcessor.from_pretrained(path)
            model = Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
            if "device_map" not in kwargs and device != "cpu":
                model = model.to(device)  # type: ignore[arg-type]
    except torch.cuda.OutOfMemoryError:
        raise ModelError(_oom_message(device, need)) from None
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors, OSError, ValueError...: all mean "cannot load"
        if "out of memory" in str(err).lower():
            raise ModelError(_oom_message(device, need)) from None
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelError(
            f"cannot load the model from {path} ({first}); check the folder is a complete "
            "Qwen2-Audio model, or use --model tiny"
        ) from None
    if getattr(processor, "chat_template", None) is None:
        raise ModelError(f"{path} has no chat template; use Qwen2-Audio-7B-Instruct (the base model cannot chat)")
    model.eval()
    return processor, model


def _oom_message(device: str, need: int) -> str:
    return (
        f"out of memory loading the model on {device} (it needs {memory.gb(need)}; something else took memory "
        "that was free when checked); free memory, use --quantization 4bit on a GPU, or see `voiceassist doctor`"
    )
