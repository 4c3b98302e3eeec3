"""``voiceassist segment FILE [--json]``: cut a file into utterances with the live path, as fast as it can.

The path is the microphone's: FileSource (streaming resampler, 20 ms blocks) → Segmenter. Times are seconds on
the file's timeline. ``--json`` prints exactly one object:
``{"file": PATH, "duration_s": S, "segments": [{"start": S, "end": S, "duration": S, "turn": K,
"reason": "silence"|"cap"|"end_of_input"}, ...]}``; segments of one turn (chunks of a long stretch of speech)
share ``turn``.

``--reference PLAYED`` (#12): the microphone recording has what was played through the loudspeaker in it; the
echo canceller of the live capture chain (``audio.echo``) removes it before the VAD. PLAYED is resampled to
16 kHz mono; sample 0 of it is taken to reach the microphone ``--reference-delay-ms`` after the recording's
start (default 0: both started together; the canceller finds the room's delay itself, and re-aligns when it is
more than ~250 ms off); after its end it counts as silence. ``[audio] noise_suppression`` (auto: on with a
reference) and ``auto_gain`` apply with or without a reference, as they do live.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from voiceassist.commands.common import add_config_arg, load_config
from voiceassist.errors import ConfigError

# argparse dest → "section.key": the VAD settings worth trying from the command line.
_VAD_FLAGS = {
    "aggressiveness": "vad.aggressiveness",
    "hangover_ms": "vad.hangover_ms",
    "snr_gate_db": "vad.snr_gate_db",
    "min_speech_ms": "vad.min_speech_ms",
    "max_chunk_s": "vad.max_chunk_s",
    "engine": "vad.engine",
    "silero_max_gain_db": "vad.silero_max_gain_db",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="cut an audio file into utterances, as the live assistant would",
        description="Run an audio file through the same resampler and VAD segmenter as the "
        "microphone, as fast as possible, and print the utterances.",
    )
    p.add_argument("file", metavar="FILE", help="WAV, FLAC, OGG or MP3 file, any rate and channel count")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    e = p.add_argument_group("echo cancellation")
    e.add_argument(
        "--reference",
        metavar="PLAYED",
        help="audio file of what the loudspeaker played during the recording: its echo is cancelled first",
    )
    e.add_argument(
        "--reference-delay-ms",
        type=int,
        metavar="N",
        help="the reference's first sample reaches the microphone N ms after the recording starts (default 0)",
    )
    g = p.add_argument_group("VAD (override the [vad] configuration)")
    g.add_argument("--aggressiveness", type=int, metavar="0-3", help="webrtcvad aggressiveness")
    g.add_argument("--hangover-ms", type=int, metavar="MS", help="silence that ends an utterance")
    g.add_argument("--snr-gate-db", type=float, metavar="DB", help="speech must be this far above the noise floor")
    g.add_argument("--min-speech-ms", type=int, metavar="MS", help="shorter bursts are ignored")
    g.add_argument("--max-chunk-s", type=float, metavar="S", help="longest single audio (at most 30)")
    g.add_argument("--engine", metavar="NAME", help="frame classifier: webrtc, silero or webrtc+silero")
    g.add_argument(
        "--silero-max-gain-db", type=float, metavar="DB", help="most gain on Silero's input (quiet talkers); 0 = off"
    )
    _add_wake_flags(p)
    add_config_arg(p)
    p.set_defaults(func=run)


def segment_file(
    path: str,
    vad_config: Any,
    block_ms: int = 20,
    audio_config: Any = None,
    reference: str | None = None,
    reference_delay_ms: int = 0,
) -> tuple[float, list[dict[str, Any]]]:
    """(file duration in s, segments as in the --json output) for one file; ``reference``: what was played."""
    from voiceassist.audio import echo, farend
    from voiceassist.audio.files import read_audio_16k
    from voiceassist.audio.sources import EndOfInput, FileSource
    from voiceassist.config import AudioConfig
    from voiceassist.events import Utterance
    from voiceassist.vad import Segmenter

    audio_config = audio_config or AudioConfig()
    played = read_audio_16k(reference) if reference else None  # unreadable: AudioFileError, one line
    source = FileSource(path, realtime=False, block_ms=block_ms)
    source.start()
    canceller: echo.EchoCanceller | None = None
    if played is not None:
        ref = farend.ArrayReference(played, source.start_t + reference_delay_ms / 1000)
        ns = echo.ns_wanted(audio_config.noise_suppression, True)
        canceller = echo.EchoCanceller(ref, noise_suppression=ns, auto_gain=audio_config.auto_gain)
    else:
        canceller, _ = echo.from_config(audio_config, speech_output=False, reference=None)
    segmenter = Segmenter(vad_config)
    # (start_t, chunk durations, reasons) per utterance: only the timing, so hours of speech stay small
    turns: list[tuple[float, tuple[float, ...], tuple[str, ...]]] = []

    def keep(events: list) -> None:
        turns.extend((e.start_t, e.durations, e.reasons) for e in events if isinstance(e, Utterance))

    try:
        while True:
            try:
                block = source.read(timeout=1.0)
            except EndOfInput:
                break
            if block is not None and canceller is not None:
                out = canceller.process(block)
                segmenter.set_echo_active(canceller.echo_active)
                keep(segmenter.feed(out))
            elif block is not None:
                keep(segmenter.feed(block))
        if canceller:
            keep(segmenter.feed(canceller.flush()))
        keep(segmenter.flush())
    finally:
        source.close()
    segments = []
    for turn, (start_t, durations, reasons) in enumerate(turns, start=1):
        start = start_t - source.start_t
        for chunk_s, reason in zip(durations, reasons):
            segments.append(
                {
                    "start": round(start, 3),
                    "end": round(start + chunk_s, 3),
                    "duration": round(chunk_s, 3),
                    "turn": turn,
                    "reason": reason,
                }
            )
            start += chunk_s
    return source.duration_s, segments


def run(args: argparse.Namespace) -> int:
    from voiceassist.textsafe import safe_display

    config = load_config(args, _VAD_FLAGS)
    if args.reference_delay_ms is not None and not args.reference:
        raise ConfigError("--reference-delay-ms needs --reference PLAYED (the file of what was played)")
    if args.reference_delay_ms is not None and abs(args.reference_delay_ms) > 60000:
        raise ConfigError(f"--reference-delay-ms {args.reference_delay_ms} is out of range; use -60000 to 60000")
    if _wake_on(args, config):
        return _run_wake(args, config)
    name = safe_display(args.file)  # a file name is untrusted text on a terminal (#16)
    duration, segments = segment_file(
        args.file,
        config.vad,
        config.audio.block_ms,
        config.audio,
        reference=args.reference,
        reference_delay_ms=args.reference_delay_ms or 0,
    )
    if args.json:
        print(json.dumps({"file": args.file, "duration_s": round(duration, 3), "segments": segments}))
        return 0
    if not segments:
        print(f"{name}: {duration:.2f} s, no speech found")
        return 0
    turns = len({s["turn"] for s in segments})
    print(f"{name}: {duration:.2f} s, {len(segments)} segment(s) in {turns} turn(s)")
    print(f"{'#':>3}  {'start':>8}  {'end':>8}  {'length':>7}  {'turn':>4}  reason")
    for i, s in enumerate(segments, start=1):
        print(f"{i:>3}  {s['start']:>8.2f}  {s['end']:>8.2f}  {s['duration']:>6.2f}s  {s['turn']:>4}  {s['reason']}")
    return 0


# ---- --wake-word (issue 13): only the segments that would become turns ------------------------------------------


def _add_wake_flags(p: argparse.ArgumentParser) -> None:
    from voiceassist.commands.wake import add_wake_args

    add_wake_args(p, "print only the turns the wake word opens (okay_nabu, hey_jarvis, alexa, hey_mycroft or a .json)")


def _wake_on(args: argparse.Namespace, config: Any) -> bool:
    """Only --wake-word turns the gate on here: a [wake] word in the config file does not change `segment`."""
    return bool(getattr(args, "wake_word", None))


def _run_wake(args: argparse.Namespace, config: Any) -> int:
    from voiceassist.audio.files import open_audio
    from voiceassist.commands.wake import WAKE_FLAGS
    from voiceassist.config import with_overrides
    from voiceassist.wake.offline import detectors_for, gated_segments

    config = with_overrides(config, {key: getattr(args, dest, None) for dest, key in WAKE_FLAGS.items()})
    detectors_for(config.wake)  # an unknown word or a bad model: one line, before the file is read
    open_audio(args.file).close()
    duration, segments, detections = gated_segments(args.file, config.vad, config.wake, config.audio.block_ms)
    if args.json:
        wakes = [{"time": d.t, "word": d.word, "probability": d.probability} for d in detections]
        print(
            json.dumps({"file": args.file, "duration_s": round(duration, 3), "segments": segments, "detections": wakes})
        )
        return 0
    from voiceassist.textsafe import safe_display

    turns = len({s["turn"] for s in segments})
    print(f"{safe_display(args.file)}: {duration:.2f} s, {len(detections)} wake word(s), {turns} turn(s)")
    if segments:
        print(f"{'#':>3}  {'wake':>8}  {'start':>8}  {'end':>8}  {'length':>7}  {'turn':>4}  via")
    for i, s in enumerate(segments, start=1):
        wake = f"{s['wake']:>8.2f}" if s["wake"] is not None else f"{'-':>8}"
        print(
            f"{i:>3}  {wake}  {s['start']:>8.2f}  {s['end']:>8.2f}  {s['duration']:>6.2f}s  {s['turn']:>4}  {s['via']}"
        )
    return 0
