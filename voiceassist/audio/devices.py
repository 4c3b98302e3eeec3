"""Listing and choosing PortAudio devices."""

from __future__ import annotations


def describe_devices() -> str:
    """A table of input and output devices (index, name, channels, default rate, default marks)."""
    try:
        import sounddevice as sd
    except OSError as err:  # libportaudio missing
        return f"no audio system: PortAudio could not be loaded ({err}); install libportaudio2"
    devices = sd.query_devices()
    if not len(devices):
        return "no audio devices found"
    default_in, default_out = sd.default.device
    lines = [f"{'idx':>3}  {'in':>3} {'out':>3}  {'rate':>6}  name"]
    for d in devices:
        mark = (" (default input)" if d["index"] == default_in else "") + (
            " (default output)" if d["index"] == default_out else "")
        lines.append(f"{d['index']:>3}  {d['max_input_channels']:>3} {d['max_output_channels']:>3}  "
                     f"{int(d['default_samplerate']):>6}  {d['name']}{mark}")
    return "\n".join(lines)
