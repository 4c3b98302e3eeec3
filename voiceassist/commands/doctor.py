"""``voiceassist doctor [--model M] [--dtype D] [--quantization Q] [--json]``: what this machine has and what the
model needs, with a verdict and advice. Reads no weights and downloads nothing (a hub model not downloaded yet is
assessed from the published 7B shape shipped in the package).

Exit codes: 0 the model fits as configured (perhaps with a lowered context: see ``advice``); 1 it does not;
2 a bad configuration. ``--json`` prints one object; its contract: ``model.parameters``,
``model.weights_bytes`` and ``model.kv_bytes_per_token`` (for the dtype it would load), ``fits`` (bool) and
``advice`` (a list of lines), plus ``machine``, ``device``, ``gpus``, ``audio``, ``speech``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
from pathlib import Path
from typing import Any

from voiceassist.commands.common import add_config_arg, load_config
from voiceassist.errors import ModelError, VoiceAssistError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this machine has and what the model needs: a verdict and advice")
    add_config_arg(p)
    p.add_argument("--model", metavar="M", help="hub id, local folder, 'tiny' or 'random-7b'")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", help="auto, float32, bfloat16 or float16")
    p.add_argument("--quantization", help="none, 8bit or 4bit")
    p.add_argument("--context-limit", type=int, metavar="TOKENS", help="context budget in tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    report = diagnose(config.model)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print("\n".join(describe(report)))
    return 0 if report["fits"] else 1


def diagnose(mc: Any) -> dict[str, Any]:
    """The whole report as a dict (the ``--json`` object)."""
    from voiceassist.model import loading, memory

    machine = {
        "cpu": _cpu_name(),
        "cpu_bf16_native": memory.cpu_bf16_native(),
        "ram_total_bytes": memory.ram_total(),
        "ram_available_bytes": memory.ram_available(),
        "python": platform.python_version(),
    }
    gpus = _gpus()
    files, path = _model_files(mc.name)
    advice: list[str] = []
    model: dict[str, Any] = {"name": mc.name, "files": files, "quantization": mc.quantization}
    device: dict[str, Any] = {}
    fits = False
    try:
        plan = loading.plan_load(mc, path)
        fits = True
        need = plan.need
        context = plan.context_limit
        device = {"name": plan.device, "free_bytes": plan.free_bytes}
        advice.extend(plan.notes)
    except VoiceAssistError as err:
        advice.append(str(err))
        try:
            cfg = loading.model_config(mc.name, path)
            dev = loading.resolve_device(mc.device)
            dname = mc.dtype if mc.dtype != "auto" else "bfloat16"
            need = memory.estimate(cfg, dname, mc.quantization if dev.startswith("cuda") else "none", mc.context_limit)
            context = min(mc.context_limit, need.max_context(memory.free_on(dev)))
            device = {"name": dev, "free_bytes": memory.free_on(dev)}
        except (VoiceAssistError, OSError, ValueError):
            need = None
            context = 0
    if need is not None:
        model.update(
            dtype=need.dtype,
            parameters=need.parameters,
            weights_bytes=need.weights_bytes,
            kv_bytes_per_token=need.kv_bytes_per_token,
            working_bytes=need.working_bytes,
            context_limit=context,
            total_bytes=need.total(context or mc.context_limit),
        )
    if device.get("name", "").startswith("cuda"):
        device["bf16_native"] = memory.gpu_bf16_native(device["name"])
    elif device:
        device["bf16_native"] = machine["cpu_bf16_native"]
    audio = _audio()
    speech = _speech()
    advice.extend(_advice(mc, model, device, gpus, machine, audio, speech, fits))
    return {
        "machine": machine,
        "gpus": gpus,
        "device": device,
        "audio": audio,
        "speech": speech,
        "model": model,
        "fits": fits,
        "advice": advice,
    }


def _advice(mc, model, device, gpus, machine, audio, speech, fits) -> list[str]:
    out: list[str] = []
    if mc.name == "random-7b":
        out.append("random-7b has random weights: its memory and timings are the real 7B's, its replies are noise")
    elif mc.name == "tiny":
        out.append("tiny is the offline test model (random weights): its replies are noise")
    if fits and model.get("dtype") == "float32":
        out.append("float32 is exact (bf16 rounding and chunk shapes can change a greedy reply) but twice the memory")
    if mc.quantization == "8bit":
        out.append("8-bit (bitsandbytes LLM.int8) decodes several times slower than bf16 or 4-bit; prefer 4bit")
    if not gpus and device.get("name") == "cpu" and mc.name not in ("tiny",):
        out.append("no CUDA GPU: the 7B on CPU answers in minutes, not seconds; use a GPU or --server URL (vLLM)")
    if not machine["cpu_bf16_native"] and device.get("name") == "cpu" and model.get("dtype") == "bfloat16":
        out.append("this CPU has no native bf16 (no AVX512-BF16/AMX): bf16 is emulated, slower than float32")
    if audio.get("error"):
        out.append(f"audio: {audio['error']}")
    elif not audio.get("inputs"):
        out.append("no audio input device: use --from-file FILE, or connect a microphone (`voiceassist devices`)")
    if not speech.get("engines"):
        out.append("no speech engine: pip install 'voiceassist[tts]' and apt install espeak-ng to speak replies")
    if model.get("files") == "not downloaded":
        out.append(f"{mc.name} is not downloaded: `huggingface-cli download {mc.name}` on a connected machine")
    return out


def describe(report: dict[str, Any]) -> list[str]:
    from voiceassist.model.memory import gb

    m, d, mod = report["machine"], report["device"], report["model"]
    lines = [
        f"machine: {m['cpu']} · RAM {gb(m['ram_available_bytes'])} free of {gb(m['ram_total_bytes'])} · "
        f"CPU bf16 {'native' if m['cpu_bf16_native'] else 'emulated'}"
    ]
    for g in report["gpus"]:
        lines.append(
            f"GPU {g['device']}: {g['name']} (compute capability {g['capability']}) · {gb(g['free_bytes'])} free of "
            f"{gb(g['total_bytes'])} · bf16 {'native' if g['bf16_native'] else 'not native'}"
        )
    if not report["gpus"]:
        lines.append("GPU: none (torch sees no CUDA device)")
    a = report["audio"]
    lines.append(
        f"audio: {a['error']}"
        if a.get("error")
        else f"audio: {len(a['inputs'])} input and {len(a['outputs'])} output devices"
        f" (default input: {a.get('default_input') or 'none'})"
    )
    lines.append(f"speech: {', '.join(report['speech']['engines']) or 'no engine'}")
    lines.append(f"model: {mod['name']} · files: {mod['files']}")
    if "parameters" in mod:
        lines.append(
            f"needs on {d.get('name', '?')} in {mod['dtype']}"
            + (f" ({mod['quantization']})" if mod["quantization"] != "none" else "")
            + f": {mod['parameters'] / 1e9:.2f}e9 parameters, weights {gb(mod['weights_bytes'])}, KV cache "
            f"{mod['kv_bytes_per_token'] / 2**20:g} MiB/token, {mod['context_limit'] or 'no'} tokens fit → "
            f"{gb(mod['total_bytes'])} in all; {gb(d.get('free_bytes', 0))} free"
        )
    lines.append(f"verdict: {'fits' if report['fits'] else 'does NOT fit'}")
    lines.extend(f"  - {line}" for line in report["advice"])
    return lines


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    from voiceassist.model import memory

    out = []
    for i in range(torch.cuda.device_count()):
        dev = f"cuda:{i}"
        free, total = torch.cuda.mem_get_info(torch.device(dev))
        major, minor = torch.cuda.get_device_capability(torch.device(dev))
        out.append(
            {
                "device": dev,
                "name": torch.cuda.get_device_name(torch.device(dev)),
                "capability": f"{major}.{minor}",
                "free_bytes": int(free),
                "total_bytes": int(total),
                "bf16_native": memory.gpu_bf16_native(dev),
            }
        )
    return out


def _model_files(name: str) -> tuple[str, str | None]:
    """(what was found, a local folder or None) — never downloads, never probes the network."""
    from voiceassist.model import loading

    if name == loading.RANDOM_7B:
        return "none needed (built in memory)", None
    if name == "tiny":
        from voiceassist.model.tiny import tiny_model_dir

        return "built on first use (cache)", str(tiny_model_dir())
    p = Path(name).expanduser()
    if p.exists() or loading._looks_like_path(name):
        try:
            return str(loading._check_folder(p)), str(p)
        except ModelError as err:
            raise ModelError(str(err)) from None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, local_files_only=True)
        return folder, folder
    except Exception:  # noqa: BLE001 - not in the cache (or no hub library): assessed from the shipped shape
        return "not downloaded", None


def _audio() -> dict[str, Any]:
    try:
        from voiceassist.audio.devices import list_devices

        inputs = [d["name"] for d in list_devices("input")]
        outputs = [d["name"] for d in list_devices("output")]
        import sounddevice as sd

        default_in = None
        try:
            default_in = sd.query_devices(kind="input")["name"]
        except Exception:  # noqa: BLE001 - no default input
            pass
        return {"inputs": inputs, "outputs": outputs, "default_input": default_in}
    except Exception as err:  # noqa: BLE001 - PortAudio missing or broken: reported, not raised
        return {"inputs": [], "outputs": [], "error": " ".join(str(err).split())[:200]}


def _speech() -> dict[str, Any]:
    engines = []
    if importlib.util.find_spec("pyttsx3") is not None:
        engines.append("pyttsx3")
    if shutil.which("espeak-ng") or shutil.which("espeak"):
        engines.append("espeak-ng")
    return {"engines": engines}
