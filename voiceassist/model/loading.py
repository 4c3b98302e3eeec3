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
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from voiceassist.config import Config, ModelConfig
from voiceassist.errors import ModelError

# Rough memory needs of Qwen2-Audio-7B-Instruct, for the out-of-memory message (weights + a working margin).
NEED_BF16_GB = 17
NEED_4BIT_GB = 6
HUB_PROBE_TIMEOUT_S = 5.0  # how long to wait for the hub's host before saying it cannot be reached


def load_session(config: Config) -> Any:
    """Load the processor and model named by ``config.model`` and return a ready :class:`Session`."""
    from voiceassist.model.session import Session

    mc = config.model
    device = resolve_device(mc.device)
    dtype = resolve_dtype(mc.dtype, device)
    _check_quantization(mc, device)
    _check_attention(mc, device)
    path, label = resolve_model_path(mc.name)
    processor, model = _load(path, mc, device, dtype)
    precision = {"8bit": "8-bit", "4bit": "4-bit"}.get(mc.quantization, _DTYPE_LABEL.get(str(dtype), str(dtype)))
    return Session(
        model,
        processor,
        generation=config.generation,
        context_limit=mc.context_limit,
        trimmed_encoder=mc.trimmed_encoder,
        description=f"{label} · {device} · {precision}",
    )


_DTYPE_LABEL = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


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


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` → bfloat16 on a GPU that supports it (else float16), float32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _check_quantization(mc: ModelConfig, device: str) -> None:
    if mc.quantization == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"--quantization {mc.quantization} needs bitsandbytes, which is not installed; "
            "pip install 'voiceassist[quant]' (or use --quantization none)"
        )
    if not device.startswith("cuda"):
        raise ModelError(
            f"--quantization {mc.quantization} runs on a CUDA GPU only, not on {device}; use --quantization none on CPU"
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


def resolve_model_path(name: str) -> tuple[str, str]:
    """(a local folder to load from, a short label) for ``tiny``, a folder, or a hub id (cached or reachable)."""
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


def _load(path: str, mc: ModelConfig, device: str, dtype: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar over the TUI or the JSON output
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": mc.attn_implementation}
    if mc.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if mc.quantization == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        )
    if device.startswith("cuda") and importlib.util.find_spec("accelerate") is not None:
        kwargs["device_map"] = {"": device}  # load straight onto the GPU, no CPU copy of 17 GB
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() too narrowly
    except torch.cuda.OutOfMemoryError:
        raise ModelError(_oom_message(device)) from None
    except Exception as err:  # noqa: BLE001 - safetensors, OSError, ValueError...: all mean "cannot load"
        if "out of memory" in str(err).lower():
            raise ModelError(_oom_message(device)) from None
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelError(
            f"cannot load the model from {path} ({first}); check the folder is a complete "
            "Qwen2-Audio model, or use --model tiny"
        ) from None
    if getattr(processor, "chat_template", None) is None:
        raise ModelError(f"{path} has no chat template; use Qwen2-Audio-7B-Instruct (the base model cannot chat)")
    model.eval()
    return processor, model


def _oom_message(device: str) -> str:
    return (
        f"out of memory loading the model on {device}: Qwen2-Audio-7B needs about {NEED_BF16_GB} GB in bf16 "
        f"or about {NEED_4BIT_GB} GB with --quantization 4bit; free GPU memory or use --quantization 4bit"
    )
