"""Flags shared by several commands, and turning them into a validated Config."""

from __future__ import annotations

import argparse
from typing import Any

from voiceassist import config as cfg
from voiceassist.errors import ConfigError


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default: $XDG_CONFIG_HOME/voiceassist/config.toml)"
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and tune the model; each overrides the [model] / [generation] / [server] key."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", metavar="M", help="hub id, local folder, 'tiny' (offline random-weight model) or 'random-7b'"
    )
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--dtype", help="auto, float32, bfloat16 or float16")
    g.add_argument("--attn", dest="attn_implementation", help="sdpa, eager or flash_attention_2")
    g.add_argument("--quantization", help="none, 8bit or 4bit (bitsandbytes, GPU only)")
    g.add_argument("--context-limit", type=int, metavar="TOKENS", help="context budget in tokens")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="longest reply in tokens")
    g.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, metavar="K", help="sample from the K likeliest tokens; 0 = off")
    g.add_argument("--repetition-penalty", type=float, metavar="P", help="penalty on ids already used; 1 = off")
    g.add_argument("--compile", choices=("auto", "on", "off"), help="static KV cache + compiled decode step")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--greedy", action="store_true", help="decode greedily (temperature 0)")
    g.add_argument("--system-prompt", metavar="TEXT", help="system prompt")
    g.add_argument("--language", metavar="LANG", help="reply-language hint, e.g. English")
    g.add_argument("--server", metavar="URL", help="use an OpenAI-compatible (vLLM) server instead of a local model")
    g.add_argument("--server-model", metavar="NAME", help="model name on the server")


# argparse dest → "section.key" in Config.
_MODEL_FLAGS = {
    "model": "model.name",
    "device": "model.device",
    "dtype": "model.dtype",
    "attn_implementation": "model.attn_implementation",
    "quantization": "model.quantization",
    "context_limit": "model.context_limit",
    "max_new_tokens": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "repetition_penalty": "generation.repetition_penalty",
    "compile": "model.compile",
    "seed": "generation.seed",
    "system_prompt": "generation.system_prompt",
    "language": "generation.language",
    "server": "server.url",
    "server_model": "server.model",
}


def load_config(args: argparse.Namespace, extra: dict[str, str] | None = None) -> cfg.Config:
    """Load the file named by ``--config`` (or the default), then apply the command-line flags."""
    config = cfg.load(getattr(args, "config", None))
    flags = dict(_MODEL_FLAGS, **(extra or {}))
    overrides: dict[str, Any] = {key: getattr(args, dest, None) for dest, key in flags.items()}
    if getattr(args, "greedy", False):
        overrides["generation.temperature"] = 0.0
    return cfg.with_overrides(config, overrides)


def add_input_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The input flags that ``chat`` and ``kiosk`` share (same spelling, same meaning); returns the group so a
    command can add its own output flags to it."""
    g = parser.add_argument_group("input and output")
    g.add_argument(
        "--input-device", metavar="DEV", help="input device: index or name substring (see `voiceassist devices`)"
    )
    g.add_argument(
        "--from-file",
        metavar="FILE",
        action="append",
        default=[],
        help="an audio file stands in for the microphone (repeatable: played one after another)",
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help="with --from-file: read the audio as fast as possible instead of in real time",
    )
    g.add_argument("--stay", action="store_true", help="with --from-file: keep running after the input ended")
    return g


def load_input_config(args: argparse.Namespace, extra: dict[str, str] | None = None) -> cfg.Config:
    """:func:`load_config` plus the shared input flags: ``--input-device``, ``--tts``, and the check that
    ``--fast``/``--stay`` come with ``--from-file``."""
    config = load_config(args, dict({"input_device": "audio.input_device"}, **(extra or {})))
    if getattr(args, "tts", False):
        config = cfg.with_overrides(config, {"tts.enabled": True})
    if (args.fast or args.stay) and not args.from_file:
        raise ConfigError("--fast and --stay only apply to --from-file; give --from-file FILE or drop them")
    return config
