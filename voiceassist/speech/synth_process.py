"""The speech-synthesis worker: a separate process that turns text into sound files, killable at any time.

Run as a script (``python -u synth_process.py``), never imported by the assistant: it must stay free of voiceassist
imports so that it starts fast and a hang or crash in the speech engine cannot take the assistant with it
(pyttsx3's ``runAndWait`` is known to hang when driven from threads).

Protocol: one JSON object per line. The worker first writes ``{"ready": true, "engine": NAME}`` (or
``{"ready": false, "error": MESSAGE}`` and exits), then answers each request on stdin with one line:
- ``{"cmd": "config", "voice": V, "rate": WPM, "volume": 0..1}`` → ``{"ok": true, "voice": RESOLVED_ID,
  "default_voice": ID}`` (the engine's own default voice, "" when it does not say)
- ``{"cmd": "synth", "text": T, "path": P[, "voice": ID]}`` → ``{"ok": true, "path": P}`` (P now holds the sound
  file); with ``voice``, that exact voice id reads it ("" = the default voice) and stays set for later requests.
  A voice no longer installed is refused with ``{"ok": false, "error": ..., "missing_voice": ID}``
- ``{"cmd": "voices"}`` → ``{"ok": true, "voices": [{"id", "name", "languages"}, ...]}``
and ``{"ok": false, "error": MESSAGE}`` when a request fails. When the engine fails to write a finished
sound file (pyttsx3: twice), the worker exits (status 3) without answering: the assistant restarts it, as after
a crash. stdout carries only the protocol: anything the engine prints goes to stderr.

Engines: pyttsx3 (espeak-ng on Linux through its C library, SAPI5 on Windows, NSSS on macOS); when pyttsx3 is
not installed or cannot start, espeak-ng's command line (same voices, same sound) if it is on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any


class Pyttsx3Engine:
    name = "pyttsx3"

    def __init__(self) -> None:
        import pyttsx3  # noqa: PLC0415  (optional dependency: the `tts` extra)

        self.engine = pyttsx3.init()
        self.driver = type(self.engine.proxy._driver).__module__.rsplit(".", 1)[-1]
        self.name = f"pyttsx3/{self.driver}"
        self.default_voice = str(self.engine.getProperty("voice") or "")
        if self.driver == "espeak":
            # pyttsx3 2.99: each runAndWait() first runs the queued endLoop, i.e. driver.stop(), which calls
            # espeak's Cancel whenever espeak says it is busy. On a loaded machine it can still be busy with
            # the settings just queued (seen at a fresh worker's first sentence, 2 of 120 sentences under
            # load) or the previous sentence's end. espeak-ng's Cancel drops the queued commands and resets
            # the parameters to the saved ones (a worker speaking at 200 words/min, not its configured rate),
            # and stop() also flags the new sentence to be cancelled (an empty file: the 44-byte glitch below).
            # This worker never stops a sentence (a hung worker is killed), so stop() is a no-op.
            self.engine.proxy._driver.stop = lambda: None

    def voices(self) -> list[dict[str, Any]]:
        out = []
        for v in self.engine.getProperty("voices"):
            langs = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in (v.languages or [])]
            out.append({"id": str(v.id), "name": str(v.name or v.id), "languages": langs})
        return out

    def configure(self, voice_id: str | None, rate: int, volume: float) -> None:
        if voice_id:
            self.engine.setProperty("voice", voice_id)
        self.engine.setProperty("rate", rate)
        self.engine.setProperty("volume", volume)

    def set_voice(self, voice_id: str) -> None:
        self.engine.setProperty("voice", voice_id or self.default_voice)

    def has_voice(self, voice_id: str) -> bool:
        # espeak's SetVoiceByName accepts a voice whose file is gone (and speaks with another): ask the list,
        # which espeak builds from the files (~10 ms; only at a change of voice).
        return any(str(v.id) == voice_id for v in self.engine.getProperty("voices"))

    def synth(self, text: str, path: str) -> None:
        self._synth_once(text, path)
        if wav_state(path) == "partial":
            # pyttsx3 2.99's espeak driver sometimes writes the file with no samples (a bare 44-byte header):
            # seen on the second sentence of a fresh worker, in about 1 of 3 loopback-test runs on a loaded
            # machine. Asking again usually succeeds (the worker exits if it does not: see main()).
            print(f"pyttsx3 left {path} {_describe(path)}; synthesizing it again", file=sys.stderr, flush=True)
            self._synth_once(text, path)

    def _synth_once(self, text: str, path: str) -> None:
        self.engine.save_to_file(text, path)
        self.engine.runAndWait()
        # pyttsx3 2.99's espeak driver can return from runAndWait before espeak's last callback has written
        # the file (about 1 run in 4 on a busy machine): wait for the driver to finish. The assistant's
        # per-sentence deadline still bounds this wait.
        driver = self.engine.proxy._driver
        while getattr(driver, "_speaking", False):
            time.sleep(0.002)
        # runAndWait may also return before synthesis has even started, and the driver writes the WAV in its
        # own thread: a header saying "0 frames" first, the samples, then the real size at close. Reading it in
        # between gives an empty sound (a sentence silently not spoken), so wait for the finished file. Other
        # drivers (and formats) only need the file to appear.
        deadline = time.monotonic() + 2.0
        while wav_state(path) == "partial" and time.monotonic() < deadline:
            time.sleep(0.005)


def wav_state(path: str) -> str:
    """ "partial" (missing, or a WAV file still being written: no frames yet, or fewer bytes than its header
    promises), "done" (a WAV file with all its frames), or "other" (another format: nothing to check)."""
    import wave  # noqa: PLC0415

    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return "partial"
    if len(head) < 12:
        return "partial"
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return "other"
    try:
        with wave.open(path, "rb") as w:
            data = w.getnframes() * w.getsampwidth() * w.getnchannels()  # bytes the header promises
        # Python's wave writer puts a 44-byte header before the samples (written with the first block's
        # size, patched at close): done once the header promises frames and the file holds them all.
        return "done" if data > 0 and os.path.getsize(path) >= 44 + data else "partial"
    except (EOFError, wave.Error, OSError):
        return "partial"


def _describe(path: str) -> str:
    try:
        return f"unfinished ({os.path.getsize(path)} bytes)"
    except OSError:
        return "missing"


class EspeakCliEngine:
    """espeak-ng's command line: the fallback behind the same interface."""

    name = "espeak-ng"

    def __init__(self) -> None:
        exe = shutil.which("espeak-ng") or shutil.which("espeak")
        if exe is None:
            raise RuntimeError("espeak-ng is not installed")
        self.exe: str = exe
        self.voice, self.rate, self.volume = "", 175, 1.0

    def voices(self) -> list[dict[str, Any]]:
        lines = subprocess.run(
            [self.exe, "--voices"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.splitlines()[1:]
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 5:  # Pty Language Age/Gender VoiceName File [Other languages]
                out.append(
                    {
                        "id": parts[4],
                        "name": parts[3].replace("_", " "),
                        "languages": [parts[1]] + [p.strip("()") for p in parts[5:] if not p[0].isdigit()],
                    }
                )
        return out

    default_voice = ""  # espeak-ng's own default ("en")

    def configure(self, voice_id: str | None, rate: int, volume: float) -> None:
        self.voice, self.rate, self.volume = voice_id or "", rate, volume

    def set_voice(self, voice_id: str) -> None:
        self.voice = voice_id

    def has_voice(self, voice_id: str) -> bool:
        return True  # espeak-ng itself fails on a voice that is not installed

    def synth(self, text: str, path: str) -> None:
        args = [self.exe, "-s", str(self.rate), "-a", str(round(self.volume * 100)), "-w", path, "--stdin"]
        if self.voice:
            args[1:1] = ["-v", self.voice]
        subprocess.run(args, input=text.encode("utf-8"), capture_output=True, timeout=60, check=True)


def make_engine() -> Any:
    errors = []
    for cls in (Pyttsx3Engine, EspeakCliEngine):
        try:
            return cls()
        except Exception as err:  # noqa: BLE001  (any failure: try the next engine)
            errors.append(f"{cls.name}: {err}".replace("\n", " "))
    raise RuntimeError("; ".join(errors))


def resolve_voice(voices: list[dict[str, Any]], wanted: str) -> str:
    """The id of the voice ``wanted`` names: an exact id (or the part after '/'), a language code, else a
    name or id substring (case-insensitive, the first match). Raises LookupError naming some choices."""
    w = wanted.strip().lower()
    for test in (
        lambda v: v["id"].lower() == w,
        lambda v: v["id"].lower().rsplit("/", 1)[-1] == w,
        lambda v: w in [lang.lower() for lang in v["languages"]],
        lambda v: w in v["name"].lower(),
        lambda v: w in v["id"].lower(),
    ):
        for v in voices:
            if test(v):
                return v["id"]
    sample = ", ".join(v["id"] for v in voices[:8])
    raise LookupError(
        f"voice {wanted!r} not found; available voices include {sample} "
        f"(run `voiceassist voices` for all {len(voices)})"
    )


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # the engine's own prints (pyttsx3 prints "Audio saved to ...") must not reach the protocol
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        engine = make_engine()
    except Exception as err:  # noqa: BLE001
        send({"ready": False, "error": f"no speech engine could start ({err})"})
        return 1
    send({"ready": True, "engine": engine.name})
    voices: list[dict[str, Any]] | None = None
    current = ""  # the voice set now ("" = the default voice)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "synth":
                wanted = req.get("voice")
                if wanted is not None and wanted != current:
                    if wanted and not engine.has_voice(wanted):
                        send({"ok": False, "error": f"voice {wanted} is no longer installed", "missing_voice": wanted})
                        continue
                    engine.set_voice(wanted)
                    current = wanted
                engine.synth(req["text"], req["path"])
                if wav_state(req["path"]) == "partial":
                    # Still no sound (Pyttsx3Engine has already asked twice): this engine instance is in a bad
                    # state. Exit without an answer: the assistant treats it as a crash and says the sentence
                    # again on a fresh worker.
                    print(
                        f"the engine's sound file is {_describe(req['path'])}; exiting for a fresh worker",
                        file=sys.stderr,
                    )
                    return 3
                send({"ok": True, "path": req["path"]})
            elif cmd == "config":
                voice_id = None
                if req.get("voice"):
                    voices = voices if voices is not None else engine.voices()
                    voice_id = resolve_voice(voices, req["voice"])
                engine.configure(voice_id, int(req.get("rate", 175)), float(req.get("volume", 1.0)))
                current = voice_id or ""
                send({"ok": True, "voice": current, "default_voice": engine.default_voice})
            elif cmd == "voices":
                voices = voices if voices is not None else engine.voices()
                send({"ok": True, "voices": voices})
            else:
                send({"ok": False, "error": f"unknown request {cmd!r}"})
        except Exception as err:  # noqa: BLE001  (one failed request must not end the worker)
            send({"ok": False, "error": " ".join(str(err).split()) or type(err).__name__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
