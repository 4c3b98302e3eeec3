"""``voiceassist say TEXT [--to-file out.wav]``: speak TEXT on the output device, or write it to a sound file.

Uses the ``[tts]`` settings (voice, rate, volume) and ``audio.output_device``; the flags override them.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from voiceassist.commands.common import add_config_arg, load_config
from voiceassist.config import TtsConfig
from voiceassist.errors import AudioFileError, SpeechError

if TYPE_CHECKING:
    from voiceassist.speech.speaker import Speaker

_FLAGS = {"voice": "tts.voice", "rate": "tts.rate", "volume": "tts.volume", "output_device": "audio.output_device"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("say", help="speak TEXT aloud, or write it to a WAV file with --to-file")
    p.add_argument("text", metavar="TEXT", help="what to say; '-' reads it from standard input")
    p.add_argument("--to-file", metavar="OUT.wav", help="write the speech to this file instead of playing it")
    p.add_argument("--voice", metavar="V", help="voice id or part of its name (see `voiceassist voices`)")
    p.add_argument("--rate", type=int, metavar="WPM", help="speaking rate in words per minute")
    p.add_argument("--volume", type=float, metavar="V", help="volume from 0.0 to 1.0")
    p.add_argument("--output-device", metavar="DEV", help="output device: a name substring or an index")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args, _FLAGS)
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise SpeechError("nothing to say: TEXT is empty; give the words to speak (or '-' to read stdin)")
    if args.to_file:
        write_file(config.tts, text, Path(args.to_file))
        return 0
    speak(config.tts, text, config.audio.output_device)
    return 0


def write_file(tts: TtsConfig, text: str, path: Path) -> None:
    """Synthesise ``text`` into ``path`` (16-bit WAV, the engine's rate); an existing file is replaced only
    when the new one is complete."""
    import soundfile as sf

    from voiceassist.speech.sentences import speakable
    from voiceassist.speech.synth_client import SynthWorker

    fmt = sf.available_formats()
    if path.suffix.lstrip(".").upper() not in fmt:
        raise AudioFileError(f"cannot write {path}: unknown sound file type {path.suffix!r}; use a .wav path")
    if not path.parent.is_dir():
        raise AudioFileError(f"cannot write {path}: folder {path.parent} does not exist")
    words = speakable(text)
    if not words:
        raise SpeechError("nothing to say: TEXT has no words to speak")
    worker = SynthWorker(tts.voice, tts.rate, tts.volume)
    try:
        worker.start()
        if worker.voice_error:
            raise SpeechError(worker.voice_error)
        samples, rate = worker.synthesize(words)
    finally:
        worker.close()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
        sf.write(str(tmp), samples, rate, subtype=subtype, format=path.suffix.lstrip(".").upper())
        os.replace(tmp, path)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        tmp.unlink(missing_ok=True)
        raise AudioFileError(f"cannot write {path}: {err}") from None
    from voiceassist.textsafe import safe_display

    print(f"wrote {safe_display(path)} ({len(samples) / rate:.1f} s, {rate} Hz)")


def speak(tts: TtsConfig, text: str, output_device: str) -> None:
    """Speak ``text`` on the output device and return when it has been heard; the first failure is raised."""
    from voiceassist.speech.speaker import Speaker

    speaker = Speaker(tts, output_device)
    try:
        speaker.wait_ready(timeout=20)
        if speaker.voice_error:  # an unknown voice: an error here, where the user asked for it
            raise SpeechError(speaker.voice_error)
        _raise_first(speaker)
        speaker.feed(0, text)
        speaker.end_reply(0)
        while speaker.speaking():
            _raise_first(speaker)
            time.sleep(0.02)
        _raise_first(speaker)
    except KeyboardInterrupt:
        speaker.stop()
        raise
    finally:
        speaker.close()


def _raise_first(speaker: Speaker) -> None:
    try:
        message = speaker.errors.get_nowait()
    except queue.Empty:
        return
    raise SpeechError(message.replace("; replies continue in text", ""))
