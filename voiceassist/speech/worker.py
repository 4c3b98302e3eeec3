"""The speech-synthesis worker: a separate process that turns text into sound files, killable at any time.

Run as a script (``python -u worker.py``), never imported by the assistant: it must stay free of voiceassist
imports so that it starts fast and a hang or crash in the speech engine cannot take the assistant with it
(pyttsx3's ``runAndWait`` is known to hang when driven from threads).

Protocol: one JSON object per line. The worker first writes ``{"ready": true, "engine": NAME}`` (or
``{"ready": false, "error": MESSAGE}`` and exits), then answers each request on stdin with one line:
- ``{"cmd": "config", "voice": V, "rate": WPM, "volume": 0..1}`` → ``{"ok": true, "voice": RESOLVED_ID}``
- ``{"cmd": "synth", "text": T, "path": P}`` → ``{"ok": true, "path": P}`` (P now holds the sound file)
- ``{"cmd": "voices"}`` → ``{"ok": true, "voices": [{"id", "name", "languages"}, ...]}``
and ``{"ok": false, "error": MESSAGE}`` when a request fails. stdout carries only the protocol: anything
the engine prints goes to stderr.

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

    def synth(self, text: str, path: str) -> None:
        self.engine.save_to_file(text, path)
        self.engine.runAndWait()
        # pyttsx3 2.99's espeak driver can return from runAndWait before espeak's last callback has written
        # the file (about 1 run in 4 on a busy machine): wait for the driver to finish. The assistant's
        # per-sentence deadline still bounds this wait.
        driver = self.engine.proxy._driver
        while getattr(driver, "_speaking", False):
            time.sleep(0.002)
        deadline = time.monotonic() + 2.0  # other drivers: the file may appear a moment later
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)


class EspeakCliEngine:
    """espeak-ng's command line: the fallback behind the same interface."""

    name = "espeak-ng"

    def __init__(self) -> None:
        self.exe = shutil.which("espeak-ng") or shutil.which("espeak")
        if self.exe is None:
            raise RuntimeError("espeak-ng is not installed")
        self.voice, self.rate, self.volume = "", 175, 1.0

    def voices(self) -> list[dict[str, Any]]:
        lines = subprocess.run([self.exe, "--voices"], capture_output=True, text=True, timeout=30,
                               check=True).stdout.splitlines()[1:]
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 5:  # Pty Language Age/Gender VoiceName File [Other languages]
                out.append({"id": parts[4], "name": parts[3].replace("_", " "),
                            "languages": [parts[1]] + [p.strip("()") for p in parts[5:] if not p[0].isdigit()]})
        return out

    def configure(self, voice_id: str | None, rate: int, volume: float) -> None:
        self.voice, self.rate, self.volume = voice_id or "", rate, volume

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
    for test in (lambda v: v["id"].lower() == w,
                 lambda v: v["id"].lower().rsplit("/", 1)[-1] == w,
                 lambda v: w in [lang.lower() for lang in v["languages"]],
                 lambda v: w in v["name"].lower(),
                 lambda v: w in v["id"].lower()):
        for v in voices:
            if test(v):
                return v["id"]
    sample = ", ".join(v["id"] for v in voices[:8])
    raise LookupError(f"voice {wanted!r} not found; available voices include {sample} "
                      f"(run `voiceassist voices` for all {len(voices)})")


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
    for line in sys.stdin:
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "synth":
                engine.synth(req["text"], req["path"])
                if not os.path.exists(req["path"]) or os.path.getsize(req["path"]) == 0:
                    raise RuntimeError("the engine produced no sound file")
                send({"ok": True, "path": req["path"]})
            elif cmd == "config":
                voice_id = None
                if req.get("voice"):
                    voices = voices if voices is not None else engine.voices()
                    voice_id = resolve_voice(voices, req["voice"])
                engine.configure(voice_id, int(req.get("rate", 175)), float(req.get("volume", 1.0)))
                send({"ok": True, "voice": voice_id or ""})
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
