"""``voiceassist say TEXT [--voice V] [--to-file out.wav] [--json]``: speak TEXT on the output device, or write it
to a sound file.

Uses the ``[tts]`` settings (voice, rate, volume) and ``audio.output_device``; the flags override them. With the
default ``voice = "auto"`` each sentence is read by a voice of its language, as replies are. ``--json`` prints one
line saying what was used::

    {"voice": "roa/fr", "voice_language": "fr-fr", "language": "fr", "engine": "pyttsx3/espeak",
     "duration_s": 1.2, "file": null, "sentences": [{"text", "language", "voice", "voice_language", "fallback"}]}

``voice``/``voice_language``/``language`` are those of the sentence covering most of TEXT (``language``: ISO
639-1, ``yue`` for Cantonese, null when none can be told); ``fallback`` says why the default voice read a
sentence ("" when a voice of its language did).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceassist.commands.common import add_config_arg, load_config
from voiceassist.config import TtsConfig
from voiceassist.errors import AudioFileError, SpeechError

if TYPE_CHECKING:
    from voiceassist.speech.language import VoiceChoice
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
    p.add_argument(
        "--json", action="store_true", help="print one JSON line: the voice, its language, the detected language"
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args, _FLAGS)
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise SpeechError("nothing to say: TEXT is empty; give the words to speak (or '-' to read stdin)")
    if args.to_file:
        record = write_file(config.tts, text, Path(args.to_file), quiet=args.json)
    else:
        record = speak(config.tts, text, config.audio.output_device)
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    return 0


def write_file(tts: TtsConfig, text: str, path: Path, quiet: bool = False) -> dict[str, Any]:
    """Synthesise ``text`` into ``path`` (16-bit WAV, the engine's rate), sentence by sentence with the voice
    each gets; an existing file is replaced only when the new one is complete. Returns the --json record."""
    import numpy as np
    import soundfile as sf

    from voiceassist.speech.language import VoicePicker
    from voiceassist.speech.sentences import SentenceSplitter, speakable
    from voiceassist.speech.speaker import _codes
    from voiceassist.speech.synth_client import SynthWorker, VoiceMissing

    fmt = sf.available_formats()
    if path.suffix.lstrip(".").upper() not in fmt:
        raise AudioFileError(f"cannot write {path}: unknown sound file type {path.suffix!r}; use a .wav path")
    if not path.parent.is_dir():
        raise AudioFileError(f"cannot write {path}: folder {path.parent} does not exist")
    words = speakable(text)
    if not words:
        raise SpeechError("nothing to say: TEXT has no words to speak")
    auto = tts.voice.strip().lower() == "auto"
    worker = SynthWorker("" if auto else tts.voice, tts.rate, tts.volume)
    notes: list[str] = []
    picker = VoicePicker(auto, _codes(tts.languages), _codes(tts.auto_voices), report=notes.append)
    splitter = SentenceSplitter()
    chosen: list[tuple[str, VoiceChoice]] = []
    pieces: list[np.ndarray] = []
    rate = 0
    try:
        worker.start()
        if worker.voice_error:
            raise SpeechError(worker.voice_error)
        picker.set_voices(worker.voices(), worker.default_voice, worker.voice_id)
        for sentence in splitter.feed(text) + splitter.flush():
            said = speakable(sentence)
            if not said:
                continue
            choice = picker.pick(said)
            try:
                audio, r = worker.synthesize(said, choice.voice if auto else None)
            except VoiceMissing as err:
                picker.voice_missing(err.voice, choice.language)
                choice = picker.pick(said)
                audio, r = worker.synthesize(said, choice.voice)
            if rate and r != rate:
                import soxr

                audio = soxr.resample(audio, r, rate).astype(np.float32)
            rate = rate or r
            pieces.append(audio)
            chosen.append((sentence, choice))
        default_voice = worker.default_voice
        engine = worker.engine
    finally:
        worker.close()
    for note in notes:
        print(f"voiceassist: {note}", file=sys.stderr)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
        sf.write(str(tmp), samples, rate, subtype=subtype, format=path.suffix.lstrip(".").upper())
        os.replace(tmp, path)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        tmp.unlink(missing_ok=True)
        raise AudioFileError(f"cannot write {path}: {err}") from None
    if not quiet:
        from voiceassist.textsafe import safe_display

        print(f"wrote {safe_display(path)} ({len(samples) / rate:.1f} s, {rate} Hz)")
    return _record(chosen, default_voice, engine, len(samples) / rate, str(path))


def _record(
    chosen: list[tuple[str, VoiceChoice]], default_voice: str, engine: str, duration_s: float, file: str | None
) -> dict[str, Any]:
    """The --json line: the voice of the sentence covering most of the text, then every sentence."""
    sentences: list[dict[str, Any]] = [
        {
            "text": text.strip(),
            "language": c.language,
            "voice": c.voice or default_voice,
            "voice_language": c.voice_language,
            "fallback": c.fallback,
        }
        for text, c in chosen
    ]
    main = max(sentences, key=lambda s: len(s["text"]), default=None)
    return {
        "voice": main["voice"] if main else default_voice,
        "voice_language": main["voice_language"] if main else "",
        "language": main["language"] if main else None,
        "engine": engine,
        "duration_s": round(duration_s, 3),
        "file": file,
        "sentences": sentences,
    }


def speak(tts: TtsConfig, text: str, output_device: str) -> dict[str, Any]:
    """Speak ``text`` on the output device and return (the --json record) when it has been heard; the first
    failure is raised."""
    from voiceassist.speech.speaker import Speaker

    speaker = Speaker(tts, output_device, detect_languages=True)
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
        chosen = speaker.voice_choices(0)
        first, last = speaker.first_heard(0), speaker.quiet_since()
        duration = max(0.0, last - first) if first is not None and last is not None else 0.0
        return _record(chosen, speaker.default_voice, speaker.engine, duration, None)
    except KeyboardInterrupt:
        speaker.stop()
        raise
    finally:
        speaker.close()


def _raise_first(speaker: Speaker) -> None:
    """Raise the first speech failure; a note about the choice of voice (a language without a voice: the
    default voice reads it) is not a failure: it goes to stderr and speech goes on."""
    while True:
        try:
            message = speaker.errors.get_nowait()
        except queue.Empty:
            return
        if message in speaker.notes:
            print(f"voiceassist: {message}", file=sys.stderr)
            continue
        raise SpeechError(message.replace("; replies continue in text", ""))
