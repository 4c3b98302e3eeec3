"""Wake-word detection: 16 kHz mono float32 blocks in, :class:`Detection` s out.

Two engines, both self-contained wheels (TFLite runtime and models inside; the ``wake`` extra):

- ``micro`` — pymicro-wakeword (microWakeWord models, as on Home Assistant's voice satellites): a 40-channel
  TFLite-Micro front end every 10 ms, a streaming int8 model every 30 ms, the mean of its last 5 outputs
  compared with the cutoff. ~50-80 kB models; a built-in name or a path to a microWakeWord ``.json`` file.
- ``open`` — pyopen-wakeword (openWakeWord models): mel spectrogram → a shared speech embedding every 80 ms →
  a small classifier. Heavier (see BENCHMARKS.md), but on some voices it hears what ``micro`` misses; a built-in
  name or a path to an openWakeWord ``.tflite`` classifier.

We write by hand only the thin layer neither package has: float blocks of any length → the engine's fixed hop,
a timestamp on every probability (from the blocks' capture clock), the threshold and a refractory period.

Malformed model files are checked *before* they reach the TFLite C library: its loader returns NULL on a bad
file and the packages then hand that NULL to the interpreter, which crashes the process instead of raising.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voiceassist.errors import ConfigError, ModelError
from voiceassist.events import SAMPLE_RATE, AudioBlock  # both engines take 16 kHz 16-bit mono

BUILTIN_WORDS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")  # shipped in both wheels
ENGINES = ("micro", "open")
MICRO_HOP = 160  # samples per microWakeWord feature frame (10 ms); a probability every `stride` frames (30 ms)
OPEN_HOP = 1280  # samples per openWakeWord step (80 ms): one embedding and one probability each
OPEN_CUTOFF = 0.5  # openWakeWord's own default threshold (its models ship no config)
TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite model
EXTRA_HINT = "wake-word detection needs the 'wake' extra: pip install 'voiceassist[wake]'"


@dataclass(frozen=True)
class Detection:
    """The wake word was heard."""

    t: float  # capture clock at the end of the audio that fired it (≈ the end of the wake word), s
    word: str  # model id, e.g. "okay_nabu"
    probability: float  # the engine's score when it crossed the threshold, 0..1


@dataclass(frozen=True)
class WakeModel:
    """A resolved wake-word model: which engine, which file, its own cutoff."""

    word: str  # id reported in detections (built-in name, or the model file's stem)
    phrase: str  # what to say, for people ("Okay Nabu")
    engine: str  # "micro" or "open"
    path: Path  # micro: the .json config; open: the .tflite classifier
    cutoff: float  # the model's own detection threshold (micro: from its JSON; open: 0.5)


def _package_dir(engine: str) -> Path:
    import importlib

    try:
        pkg = importlib.import_module("pymicro_wakeword" if engine == "micro" else "pyopen_wakeword")
    except ImportError:
        raise ModelError(EXTRA_HINT) from None
    return Path(str(pkg.__file__)).parent


def _check_tflite(path: Path, what: str) -> None:
    """One-line ModelError unless ``path`` is a readable TFLite flatbuffer."""
    try:
        head = path.open("rb").read(8)
    except FileNotFoundError:
        raise ModelError(f"{what} {path} does not exist; check the path") from None
    except OSError as err:
        raise ModelError(f"{what} {path} cannot be read ({err.strerror}); check its permissions") from None
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
        raise ModelError(f"{what} {path} is not a TFLite model (no TFL3 header); give a .tflite wake-word model")


def _not_a_model(path: Path, why: str) -> ModelError:
    return ModelError(f"{path} is not a microWakeWord model ({why}); give a built-in name or a model's .json file")


def _read_micro_json(path: Path) -> WakeModel:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"wake-word model {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a folder; give a microWakeWord model's .json file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"wake-word model {path} cannot be read ({err}); check its permissions") from None
    except json.JSONDecodeError as err:
        raise _not_a_model(path, f"invalid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(config, dict):
        raise _not_a_model(path, "not a JSON object")
    micro = config.get("micro")
    if config.get("type", "micro") != "micro" or not isinstance(micro, dict):
        raise _not_a_model(path, "no 'micro' settings")
    model = config.get("model")
    cutoff = micro.get("probability_cutoff")
    window = micro.get("sliding_window_size")
    if not isinstance(model, str) or not model:
        raise _not_a_model(path, "no 'model' file named")
    if not isinstance(cutoff, int | float) or not 0 < cutoff < 1:
        raise _not_a_model(path, "'micro.probability_cutoff' missing or not between 0 and 1")
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 100:
        raise _not_a_model(path, "'micro.sliding_window_size' missing or not an integer from 1 to 100")
    _check_tflite(path.parent / model, f"the model file named by {path},")
    phrase = config.get("wake_word")
    word = Path(model).stem
    return WakeModel(word, phrase if isinstance(phrase, str) and phrase else word, "micro", path, float(cutoff))


def resolve(word: str, engine: str = "micro") -> WakeModel:
    """A built-in name (``okay_nabu`` ...) or a model path → :class:`WakeModel`; one-line errors otherwise.

    A path is anything with a ``/`` or ending in ``.json`` / ``.tflite``: ``.json`` is a microWakeWord model,
    ``.tflite`` an openWakeWord classifier (engine ``open``). A built-in name uses ``engine``.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown wake-word engine {engine!r}; use one of: {', '.join(ENGINES)}")
    word = word.strip()
    if not word:
        raise ConfigError("no wake word given; use one of: " + ", ".join(BUILTIN_WORDS) + ", or a model path")
    looks_like_path = "/" in word or word.endswith((".json", ".tflite"))
    if not looks_like_path:
        if word not in BUILTIN_WORDS:
            raise ConfigError(
                f"unknown wake word {word!r}; built-in: {', '.join(BUILTIN_WORDS)} "
                "(or give a path to a microWakeWord .json model)"
            )
        models = _package_dir(engine) / "models"
        if engine == "micro":
            return _read_micro_json(models / f"{word}.json")
        _check_tflite(models / f"{word}.tflite", "built-in openWakeWord model")
        return WakeModel(word, word.replace("_", " ").title(), "open", models / f"{word}.tflite", OPEN_CUTOFF)
    path = Path(word).expanduser()
    if path.suffix == ".tflite":
        _package_dir("open")
        _check_tflite(path, "wake-word model")
        return WakeModel(path.stem, path.stem.replace("_", " "), "open", path, OPEN_CUTOFF)
    _package_dir("micro")
    return _read_micro_json(path)


# ---- engines: fixed hops of int16 audio in, probabilities out ------------------------------------------------


class _Engine(Protocol):
    hop: int  # samples per step

    def step(self, pcm: bytes) -> list[float]:
        """One hop of 16-bit PCM → the probabilities that became ready at its end (0 or more)."""
        ...

    def reset(self) -> None: ...


def _checked_load(lib_path: Path, model_path: Path) -> None:
    """Ask the TFLite C library to verify and load the model once; ModelError (not a crash) when it can't."""
    import ctypes

    from pymicro_wakeword.wakeword import TfLiteWakeWord  # the packages' ctypes bindings of the C API

    from voiceassist.audio.chatter import QuietDecoders  # the C library prints its own "ERROR: ..." on fd 2

    lib = TfLiteWakeWord(lib_path).lib
    with QuietDecoders():
        model = lib.TfLiteModelCreateFromFile(str(model_path.resolve()).encode())
    if not model:
        raise ModelError(f"wake-word model {model_path} is damaged (TFLite cannot load it); use another file")
    lib.TfLiteModelDelete(ctypes.c_void_p(model))


class _MicroEngine:
    hop = MICRO_HOP

    def __init__(self, model: WakeModel) -> None:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

        lib = next((_package_dir("micro") / "lib").glob("*tensorflowlite_c.*"), None)
        if lib is None:
            raise ModelError("pymicro-wakeword has no TFLite library for this platform; " + EXTRA_HINT)
        config = json.loads(model.path.read_text(encoding="utf-8"))
        _checked_load(lib, model.path.parent / config["model"])
        try:
            self._mww = MicroWakeWord.from_config(model.path, libtensorflowlite_c_path=lib)
        except (ValueError, KeyError, OSError) as err:
            raise ModelError(f"wake-word model {model.path} cannot be used ({err}); use another file") from None
        self._features = MicroWakeWordFeatures()
        self._stride = int(self._mww.stride)  # feature frames per model call (3 for the built-in models)
        self._frames = 0

    def step(self, pcm: bytes) -> list[float]:
        out = []
        for feature in self._features.process_streaming(pcm):
            self._frames += 1
            p = self._mww.process_streaming_prob(feature)
            # The package returns 0.0 between model calls; only every stride-th frame is a real score.
            if p is not None and self._frames % self._stride == 0:
                out.append(float(p))
        return out

    def reset(self) -> None:
        self._mww.reset()
        self._features.reset()
        self._frames = 0


class _OpenEngine:
    hop = OPEN_HOP

    def __init__(self, model: WakeModel) -> None:
        from pyopen_wakeword import OpenWakeWord, OpenWakeWordFeatures

        pkg = _package_dir("open")
        lib = next((pkg / "lib").glob("*tensorflowlite_c.*"), None)
        if lib is None:
            raise ModelError("pyopen-wakeword has no TFLite library for this platform; " + EXTRA_HINT)
        _checked_load(lib, model.path)
        self._oww = OpenWakeWord.from_model(model.path, libtensorflowlite_c_path=lib)
        self._features = OpenWakeWordFeatures.from_builtin(libtensorflowlite_c_path=lib)

    def step(self, pcm: bytes) -> list[float]:
        out: list[float] = []
        for embedding in self._features.process_streaming(pcm):
            out.extend(float(p) for p in self._oww.process_streaming(embedding))
        return out

    def reset(self) -> None:
        self._oww.reset()
        self._features.reset()


_ENGINES: dict[str, Callable[[WakeModel], Any]] = {"micro": _MicroEngine, "open": _OpenEngine}


class Trigger:
    """Threshold + refractory period over a stream of (time, score): the decision, apart from the engines (the
    benchmark replays recorded scores through it at other thresholds)."""

    def __init__(self, threshold: float, refractory_s: float) -> None:
        self.threshold = threshold
        self.refractory_s = refractory_s
        self._quiet_until = float("-inf")  # no detection before this time, s

    def fires(self, t: float, p: float) -> bool:
        if p > self.threshold and t >= self._quiet_until:
            self._quiet_until = t + self.refractory_s
            return True
        return False

    def reset(self) -> None:
        self._quiet_until = float("-inf")


class WakeDetector:
    """Feed blocks of any length; get a :class:`Detection` at each threshold crossing, at most one per
    ``refractory_ms`` (the score stays high for a few hundred ms after a wake word)."""

    def __init__(self, model: WakeModel, threshold: float = 0.0, refractory_ms: int = 1500) -> None:
        self.model = model
        self.trigger = Trigger(threshold or model.cutoff, refractory_ms / 1000)  # threshold 0 = the model's own
        self._engine: _Engine = _ENGINES[model.engine](model)
        self._carry = np.zeros(0, np.int16)  # samples not yet making a whole hop
        self._t_next = 0.0  # capture clock of the first carried sample, s
        self.peak = 0.0  # highest score since the last take_peak() (for meters and the benchmark)
        self.trace: list[tuple[float, float]] | None = None  # set to a list to record every (t, score)

    @property
    def word(self) -> str:
        return self.model.word

    @property
    def threshold(self) -> float:
        return self.trigger.threshold

    def process(self, block: AudioBlock) -> list[Detection]:
        """One block (16 kHz mono float32, any length) → the detections it completed, in time order."""
        samples = np.asarray(block.samples, dtype=np.float32).reshape(-1)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        if len(self._carry):
            pcm = np.concatenate((self._carry, pcm))
        else:
            self._t_next = float(block.t)
        hop = self._engine.hop
        out: list[Detection] = []
        n = len(pcm) // hop
        for i in range(n):
            t_end = self._t_next + (i + 1) * hop / SAMPLE_RATE  # end of this hop on the capture clock
            for p in self._engine.step(pcm[i * hop : (i + 1) * hop].tobytes()):
                self.peak = max(self.peak, p)
                if self.trace is not None:
                    self.trace.append((t_end, p))
                if self.trigger.fires(t_end, p):
                    out.append(Detection(t=round(t_end, 6), word=self.model.word, probability=round(p, 4)))
        self._carry = pcm[n * hop :].copy()
        self._t_next += n * hop / SAMPLE_RATE
        return out

    def take_peak(self) -> float:
        peak, self.peak = self.peak, 0.0
        return peak

    def reset(self) -> None:
        """Forget all audio (a new stream, or a device that came back)."""
        self._engine.reset()
        self._carry = np.zeros(0, np.int16)
        self.trigger.reset()
        self.peak = 0.0


def build(word: str, engine: str = "micro", threshold: float = 0.0, refractory_ms: int = 1500) -> WakeDetector:
    """Resolve ``word`` and build its detector (ConfigError / ModelError, one line, when it can't be)."""
    return WakeDetector(resolve(word, engine), threshold, refractory_ms)
