"""Listing and choosing PortAudio devices.

A device is chosen by index (``3`` or ``"3"``), by name (case-insensitive; an exact name wins, else a unique
substring), or left empty for the system default. Every failure is a one-line
:class:`~voiceassist.errors.DeviceError` that lists what does exist, so the user can copy a valid choice.
"""

from __future__ import annotations

from typing import Any

from voiceassist.errors import DeviceError


def _sd() -> Any:
    """The sounddevice module, or DeviceError when PortAudio itself cannot be loaded."""
    try:
        import sounddevice as sd
    except OSError as err:  # libportaudio2 missing
        raise DeviceError(f"no audio system: PortAudio could not be loaded ({err}); install libportaudio2") from None
    return sd


def _channels_key(kind: str) -> str:
    return "max_input_channels" if kind == "input" else "max_output_channels"


def list_devices(kind: str) -> list[dict[str, Any]]:
    """The PortAudio devices that have ``kind`` ("input" or "output") channels."""
    sd = _sd()
    return [dict(d) for d in sd.query_devices() if d[_channels_key(kind)] > 0]


def _available(kind: str) -> str:
    devices = list_devices(kind)
    if not devices:
        return f"there is no {kind} device at all (run `voiceassist devices`)"
    return f"{kind} devices: " + ", ".join(f"{d['index']} {d['name']!r}" for d in devices)


def resolve_device(spec: str | int | None, kind: str = "input") -> dict[str, Any]:
    """The device info dict (``index``, ``name``, channels, ``default_samplerate``) that ``spec`` names."""
    sd = _sd()
    key = _channels_key(kind)
    devices = [dict(d) for d in sd.query_devices()]
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        default = sd.default.device[0 if kind == "input" else 1]
        if default is None or default < 0:
            usable = [d for d in devices if d[key] > 0]
            if not usable:
                raise DeviceError(
                    f"no {kind} device found: connect a microphone or start PulseAudio/PipeWire"
                    if kind == "input"
                    else f"no {kind} device found: connect speakers or start PulseAudio/PipeWire"
                )
            return usable[0]  # no default configured: the first device that can do it
        return devices[default]
    if isinstance(spec, int) or str(spec).strip().lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < len(devices):
            raise DeviceError(f"{kind} device index {index} does not exist; {_available(kind)}")
        if devices[index][key] <= 0:
            raise DeviceError(f"device {index} {devices[index]['name']!r} has no {kind} channels; {_available(kind)}")
        return devices[index]
    wanted = str(spec).strip().lower()
    usable = [d for d in devices if d[key] > 0]
    exact = [d for d in usable if d["name"].lower() == wanted]
    if exact:
        return exact[0]
    matches = [d for d in usable if wanted in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceError(f"no {kind} device matches {spec!r}; {_available(kind)}")
    names = ", ".join(f"{d['index']} {d['name']!r}" for d in matches)
    raise DeviceError(f"{kind} device {spec!r} is ambiguous, it matches {names}; give the index or more of the name")


def describe_devices() -> str:
    """A table of input and output devices (index, name, channels, default rate, default marks)."""
    try:
        sd = _sd()
    except DeviceError as err:
        return str(err)
    devices = sd.query_devices()
    if not len(devices):
        return (
            "no audio devices found: PortAudio sees no input or output device "
            "(no sound card, and no PulseAudio/PipeWire server running)"
        )
    default_in, default_out = sd.default.device
    apis = {i: a["name"] for i, a in enumerate(sd.query_hostapis())}
    lines = [f"{'idx':>3}  {'in':>3} {'out':>3}  {'rate':>6}  {'api':<6}  name"]
    for d in devices:
        mark = (" (default input)" if d["index"] == default_in else "") + (
            " (default output)" if d["index"] == default_out else ""
        )
        lines.append(
            f"{d['index']:>3}  {d['max_input_channels']:>3} {d['max_output_channels']:>3}  "
            f"{int(d['default_samplerate']):>6}  {apis.get(d['hostapi'], '?')[:6]:<6}  {d['name']}{mark}"
        )
    if not any(d["max_input_channels"] > 0 for d in devices):
        lines.append("no input device: voiceassist can only read audio files (--from-file)")
    if not any(d["max_output_channels"] > 0 for d in devices):
        lines.append("no output device: replies cannot be spoken aloud")
    return "\n".join(lines)
