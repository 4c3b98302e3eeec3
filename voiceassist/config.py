"""Configuration: frozen dataclasses loaded from TOML and validated once, with one-line errors.

Where it comes from, first match wins: ``--config PATH``; ``$XDG_CONFIG_HOME/voiceassist/config.toml``
(``~/.config`` when unset); the built-in defaults below, which equal the shipped ``config.toml`` (a test keeps
them equal). Command-line flags override the file through :func:`with_overrides`.

Each field carries its unit, range or choices in ``metadata`` (built by :func:`_f`); validation and the error
messages are driven by that metadata only, so adding a setting is one line here plus its line in config.toml.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from voiceassist.errors import ConfigError


def _f(
    default: Any,
    doc: str,
    *,
    unit: str = "",
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A config field with its documentation, unit and allowed values (checked in :func:`_check`)."""
    return field(default=default, metadata={"doc": doc, "unit": unit, "lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class AudioConfig:
    """Audio devices and capture buffering."""

    input_device: str = _f("", "input device: a name substring or an index; empty = the system default")
    output_device: str = _f("", "output device for speech: a name substring or an index; empty = the default")
    block_ms: int = _f(20, "PortAudio block length", unit="ms", lo=5, hi=200)
    queue_blocks: int = _f(
        250, "capture queue length; on overflow the oldest block is dropped and counted", unit="blocks", lo=10, hi=10000
    )
    silence_warning_s: float = _f(
        5.0, "warn after this much digital silence (dead or muted microphone)", unit="s", lo=0.5, hi=3600
    )
    # ---- echo cancellation and clean-up before the VAD (issue #12; needs the aec extra: pywebrtc-audio) ----
    # Off by default for now: with it on, a wake word said over playback was not heard (the headset case of
    # tests/test_wake_app.py), and full duplex is not yet reliable; the half-duplex gate is the tested default.
    echo_cancel: str = _f(
        "off",
        "cancel the assistant's own voice from the microphone (WebRTC AEC3, with the exact samples played);"
        " auto = on while speech output is enabled and pywebrtc-audio is installed",
        choices=("auto", "on", "off"),
    )
    noise_suppression: str = _f(
        "auto",
        "WebRTC noise suppression before the VAD; auto = on with echo cancellation (measured: it removes the"
        " canceller's residual echo; without echo it loses quiet talkers)",
        choices=("auto", "on", "off"),
    )
    auto_gain: bool = _f(
        False, "WebRTC AGC2 before the VAD (measured: finds a quiet distant talker sooner, more false turns on knocks)"
    )
    full_duplex: bool = _f(
        False,
        "with echo cancellation converged, let speech over the assistant's voice barge in (open loudspeakers);"
        " off = the half-duplex gate (experimental: on a loaded machine the residual echo can barge in by itself)",
    )


@dataclass(frozen=True)
class VadConfig:
    """Voice-activity detection and utterance segmentation."""

    frame_ms: int = _f(30, "webrtcvad frame length", unit="ms", choices=(10, 20, 30))
    aggressiveness: int = _f(
        2, "webrtcvad aggressiveness, 0 (least) to 3 (most eager to reject non-speech)", lo=0, hi=3
    )
    start_ms: int = _f(120, "speech needed before an utterance starts", unit="ms", lo=10, hi=2000)
    pre_roll_ms: int = _f(
        300, "audio kept from before the start trigger, so the first syllable is heard", unit="ms", lo=0, hi=2000
    )
    hangover_ms: int = _f(
        600, "silence that ends an utterance; shorter pauses do not split it", unit="ms", lo=100, hi=5000
    )
    tail_ms: int = _f(
        200,
        "audio kept after the last speech frame (the utterance ends there, not at the end of the hang-over)",
        unit="ms",
        lo=0,
        hi=2000,
    )
    min_speech_ms: int = _f(250, "shorter bursts (coughs, clicks) never become utterances", unit="ms", lo=0, hi=5000)
    snr_gate_db: float = _f(
        6.0, "a frame counts as speech only this far above the adaptive noise floor", unit="dB", lo=0.0, hi=40.0
    )
    max_chunk_s: float = _f(
        30.0, "longest single audio; Qwen2-Audio's encoder takes at most 30 s", unit="s", lo=1.0, hi=30.0
    )
    cut_search_s: float = _f(
        2.0, "a capped chunk is cut at the quietest point of this last stretch", unit="s", lo=0.0, hi=10.0
    )
    max_chunks_per_turn: int = _f(
        4, "chunks of one continuous stretch of speech kept as one user turn", unit="chunks", lo=1, hi=32
    )
    speculate_after_ms: int = _f(
        150, "silence after which the audio so far is prefilled speculatively", unit="ms", lo=30, hi=5000
    )
    start_gap_ms: int = _f(
        200, "a gap this long before the start trigger fires abandons the would-be utterance", unit="ms", lo=10, hi=2000
    )
    onset_lookback_ms: int = _f(
        500,
        "a burst of speech ending this shortly before the start trigger is the"
        " utterance's onset (weak first syllables); 0 = off",
        unit="ms",
        lo=0,
        hi=2000,
    )
    resume_ms: int = _f(
        60,
        "speech needed to continue an utterance after a pause (single noise peaks do not)",
        unit="ms",
        lo=10,
        hi=1000,
    )
    noise_window_s: float = _f(
        5.0, "span of recent audio the adaptive noise floor is estimated from", unit="s", lo=0.5, hi=60.0
    )
    noise_rise_s: float = _f(
        1.5,
        "a new steady noise is learned this fast: when even the quietest frame of this"
        " last stretch is well above the floor, the floor is re-learned from it; 0 = off",
        unit="s",
        lo=0.0,
        hi=10.0,
    )
    noise_percentile: float = _f(
        10.0, "the noise floor is this percentile of recent frame levels", unit="%", lo=1.0, hi=50.0
    )
    min_level_dbfs: float = _f(-60.0, "frames quieter than this are never speech", unit="dBFS", lo=-100.0, hi=0.0)
    # ---- engine (issue #12) ----
    engine: str = _f(
        "silero",
        "frame classifier: webrtc (webrtcvad + level gate), silero (the Silero network), webrtc+silero"
        " (webrtcvad proposes, Silero confirms)",
        choices=("webrtc", "silero", "webrtc+silero"),
    )
    silero_threshold: float = _f(
        0.5, "Silero speech probability that starts speech (continues down to 0.15 below)", lo=0.05, hi=0.95
    )
    silero_max_gain_db: float = _f(
        24.0,
        "most gain on Silero's input only (the audio the model gets is untouched), raising a quiet or distant"
        " talker towards ordinary speech level (-26 dBFS); 0 = off",
        unit="dB",
        lo=0.0,
        hi=40.0,
    )


@dataclass(frozen=True)
class ModelConfig:
    """The local Qwen2-Audio model."""

    name: str = _f(
        "Qwen/Qwen2-Audio-7B-Instruct",
        "hub id, local folder, 'tiny' (offline random-weight model) or 'random-7b' (the 7B's full shape,"
        " random weights, built in memory: for measuring memory and speed)",
    )
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = _f(
        "auto",
        "auto = bfloat16 on a GPU with native bf16 (compute capability 8.0+), else float16; on CPU bfloat16 where"
        " the CPU has it natively, else float32 if it fits in RAM, else bfloat16 (float32 is exact; bf16 rounding"
        " can change a greedy reply)",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    attn_implementation: str = _f("sdpa", "attention kernel", choices=("sdpa", "eager", "flash_attention_2"))
    quantization: str = _f(
        "none", "weight quantization through bitsandbytes (GPU only)", choices=("none", "8bit", "4bit")
    )
    context_limit: int = _f(
        8192, "context budget; the oldest whole turns are dropped before it overflows", unit="tokens", lo=256, hi=131072
    )
    trimmed_encoder: bool = _f(True, "encode only the audio that exists, not 30 s of padding (exact)")
    speculative_prefill: bool = _f(True, "prefill during the hang-over, rolled back if speech resumes (exact)")
    # auto stays off on CUDA until scripts/bench_gpu.py has measured it faster there (no GPU has run it yet).
    compile: str = _f(
        "auto",
        "static KV cache + torch.compile'd decode step (greedy ids equal eager); auto = off until measured faster"
        " on CUDA (scripts/bench_gpu.py); a failing compile falls back to eager",
        choices=("auto", "on", "off"),
    )


@dataclass(frozen=True)
class GenerationConfig:
    """How replies are generated."""

    max_new_tokens: int = _f(512, "longest reply", unit="tokens", lo=1, hi=8192)
    # The sampling settings default to the model's own (its generation_config.json), as vLLM applies them.
    temperature: float = _f(
        -1.0, "sampling temperature; 0 = greedy; -1 = as the model ships (generation_config.json)", lo=-1.0, hi=2.0
    )
    top_p: float = _f(-1.0, "nucleus sampling mass; 0 = greedy; -1 = as the model ships", lo=-1.0, hi=1.0)
    top_k: int = _f(-1, "sample from the k likeliest tokens; 0 = off; -1 = as the model ships", lo=-1, hi=1000000)
    repetition_penalty: float = _f(
        -1.0,
        "penalty on every id already in the conversation (transformers' and vLLM's); 1 = off; -1 = as the model ships",
        lo=-1.0,
        hi=10.0,
    )
    seed: int = _f(-1, "random seed for sampling; -1 = not fixed", lo=-1, hi=2**31 - 1)
    system_prompt: str = _f("You are a helpful assistant.", "system prompt; kept when old turns are dropped")
    language: str = _f("", "reply-language hint, e.g. 'English' or 'French'; empty = the user's language")


@dataclass(frozen=True)
class UiConfig:
    """The terminal front end."""

    mode: str = _f("handsfree", "how turns start", choices=("handsfree", "ptt"))
    ptt_key: str = _f("space", "push-to-talk key (prompt_toolkit key name); acts only on an empty input line")
    ptt_release_ms: int = _f(
        600, "holding the key: recording ends when auto-repeats stop for this long", unit="ms", lo=100, hi=3000
    )


@dataclass(frozen=True)
class TtsConfig:
    """Speaking the replies."""

    enabled: bool = _f(False, "speak replies aloud")
    voice: str = _f(
        "auto",
        "auto = a voice of each sentence's language; or a voice id or name substring (see `voiceassist voices`); "
        "empty = the engine's default",
    )
    languages: str = _f(
        "zh, en, yue, fr, it, es, de, ja",
        "languages replies are expected in (ISO 639-1 codes, yue = Cantonese): auto's language detection chooses "
        "among them; text in another script is still recognised",
    )
    auto_voices: str = _f(
        "", 'voices auto prefers for their language, e.g. "en-us, fr-be"; empty = each language\'s main voice'
    )
    speculative_first_sentence: bool = _f(
        True,
        "during the hang-over, after the speculative prefill, decode and synthesise the reply's first sentence so "
        "it plays as soon as the hang-over ends (exact: rolled back if speech resumes)",
    )
    rate: int = _f(175, "speaking rate", unit="words/min", lo=50, hi=500)
    volume: float = _f(1.0, "speech volume", lo=0.0, hi=1.0)
    echo_tail_ms: int = _f(
        400, "microphone segments ignored this long after playback really ended", unit="ms", lo=0, hi=5000
    )
    barge_in: bool = _f(False, "speech over the assistant stops it (needs a headset or echo cancellation)")
    barge_in_ms: int = _f(500, "speech needed over playback to barge in", unit="ms", lo=100, hi=5000)


@dataclass(frozen=True)
class KioskConfig:
    """Unattended kiosk service."""

    greeting: str = _f("", "spoken at start and after each reset; empty = none")
    idle_reset_s: float = _f(
        60.0, "reset the conversation after this long without speech; 0 = never", unit="s", lo=0.0, hi=86400.0
    )
    max_turns: int = _f(20, "reset after this many turns; 0 = no limit", unit="turns", lo=0, hi=10000)
    store_audio: bool = _f(False, "keep visitors' audio (privacy: off by default)")
    store_transcripts: bool = _f(False, "keep transcripts (privacy: off by default)")
    store_dir: str = _f("", "folder for stored audio and transcripts; empty = the user's data folder")
    store_max_mb: float = _f(500.0, "rotate stored files beyond this total size", unit="MB", lo=1.0, hi=1e6)
    store_max_days: float = _f(30.0, "delete stored files older than this", unit="days", lo=0.01, hi=3650.0)
    status_file: str = _f("", "where the kiosk keeps its status; empty = $XDG_RUNTIME_DIR or /tmp")
    watchdog: bool = _f(True, "send systemd WATCHDOG=1 while every worker is alive")


@dataclass(frozen=True)
class ServerConfig:
    """A remote OpenAI-compatible server (vLLM) instead of the local model."""

    url: str = _f("", "server base URL, e.g. http://gpu-host:8000/v1; empty = the local model")
    api_key_env: str = _f("VOICEASSIST_API_KEY", "environment variable that holds the API key")
    model: str = _f("", "model name on the server; empty = the first one the server lists")
    timeout_s: float = _f(60.0, "give up on a request after this long", unit="s", lo=1.0, hi=3600.0)
    context_limit: int = _f(8192, "the server's context length", unit="tokens", lo=256, hi=1048576)
    retries: int = _f(
        5, "quick retries with backoff per send; then an error line, and the turn is sent again later", lo=0, hi=100
    )
    # #16: a server that accepts and never answers must not stall a turn for timeout_s.
    connect_timeout_s: float = _f(5.0, "give up opening a connection after this long", unit="s", lo=0.1, hi=600.0)
    first_byte_timeout_s: float = _f(
        10.0,
        "give up when the server has not begun its answer (HTTP headers) after this long; then timeout_s "
        "applies between the pieces of the reply",
        unit="s",
        lo=0.1,
        hi=3600.0,
    )


@dataclass(frozen=True)
class WakeConfig:
    """Wake word (kiosk): answer only when addressed."""

    word: str = _f(
        "",
        "wake word: empty = off (every utterance is a turn); a built-in name (okay_nabu, hey_jarvis, alexa,"
        " hey_mycroft) or a path to a microWakeWord .json model (or an openWakeWord .tflite)",
    )
    engine: str = _f(
        "micro", "detector for a built-in name: pymicro-wakeword or pyopen-wakeword", choices=("micro", "open")
    )
    threshold: float = _f(
        0.0, "detection score cutoff; 0 = the model's own (okay_nabu 0.85, hey_jarvis 0.97, ...)", lo=0.0, hi=0.999
    )
    refractory_ms: int = _f(
        1500,
        "after a detection, no other for this long (the score stays high after a wake word)",
        unit="ms",
        lo=0,
        hi=10000,
    )
    over_reply_drop: float = _f(
        0.25,
        "with echo cancellation on, the detection cutoff is this much lower while the assistant speaks (a wake word"
        " said over the reply scores lower; its own voice is cancelled); 0 = the same cutoff throughout",
        lo=0.0,
        hi=0.5,
    )
    listen_s: float = _f(
        5.0, "after the wake word alone, speech that starts within this is the turn", unit="s", lo=0.5, hi=60.0
    )
    follow_up_s: float = _f(
        5.0,
        "after a reply, speech that starts within this needs no wake word; 0 = always needed",
        unit="s",
        lo=0.0,
        hi=300.0,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration: one section per table in config.toml."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)


_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}


def _allowed(meta: Mapping[str, Any], typ: type) -> str:
    """What a field accepts, in words, for comments and error messages."""
    if meta["choices"]:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    unit = f" {meta['unit']}" if meta["unit"] else ""
    if meta["lo"] is not None:
        return f"{_TYPE_NAMES[typ]} from {meta['lo']} to {meta['hi']}{unit}"
    return _TYPE_NAMES[typ]


def _check(where: str, name: str, value: Any, typ: type, meta: Mapping[str, Any]) -> Any:
    """Return ``value`` converted to ``typ`` or raise ConfigError naming key, value and what is allowed."""
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if (ok and meta["choices"] and value not in meta["choices"]) or (
        ok and meta["lo"] is not None and not meta["lo"] <= value <= meta["hi"]
    ):
        ok = False
    if not ok:
        raise ConfigError(f"{where}: {name} = {value!r} is not allowed; use {_allowed(meta, typ)}")
    return value


def _build_section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table of settings, not {table!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")
        values[key] = _check(where, key, value, hints[key], known[key].metadata)
    return cls(**values)


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a validated Config from parsed TOML; ``source`` names the file in error messages."""
    sections: dict[str, Any] = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    built = {}
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; known sections: {', '.join(sections)}")
        built[name] = _build_section(sections[name], table, f"{source} [{name}]")
    return Config(**built)


def default_path() -> Path:
    """``$XDG_CONFIG_HOME/voiceassist/config.toml``, with ``~/.config`` when the variable is unset."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "voiceassist" / "config.toml"


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration from ``path``, else the user's file, else the defaults."""
    if path is None:
        candidate = default_path()
        if not candidate.is_file():
            return Config()
        path = candidate
    p = Path(path)
    text = _read_bounded(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {p} is not valid TOML: {err}") from None
    except RecursionError:  # tomllib parses nested arrays/tables recursively (#16: 500 levels in ~1 KB)
        raise ConfigError(
            f"config file {p} nests arrays or tables too deeply to parse; a configuration needs at most 2 levels"
        ) from None
    try:
        return from_dict(data, str(p))
    except RecursionError:  # a value nested just below the parser's limit, met while validating it
        raise ConfigError(f"config file {p} nests a value too deeply; settings are plain values") from None


# A configuration is a few kB; anything past this is not one (#16: `--config /dev/zero` grew to 14.5 GB).
CONFIG_MAX_BYTES = 1_000_000


def _read_bounded(p: Path) -> str:
    """The text of the config file ``p``: a regular file of at most CONFIG_MAX_BYTES, UTF-8; else ConfigError."""
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
            raise ConfigError(f"config file {p} is {kind}; point --config at a TOML file")
        # O_NONBLOCK: a path swapped for a FIFO between the stat and the open must not block the start.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"config file {p} is not a regular file; point --config at a TOML file")
            raw = f.read(CONFIG_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; check the --config path") from None
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read ({err.strerror or err}); check its permissions") from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise ConfigError(
            f"config file {p} is over {CONFIG_MAX_BYTES // 1000} kB, too large for a configuration; "
            "check the --config path"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {p} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return ``config`` with ``{"section.key": value}`` applied (None values are skipped), validated."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        section_name, key = dotted.split(".", 1)
        section = getattr(config, section_name)
        fld = {f.name: f for f in dataclasses.fields(section)}[key]
        typ = get_type_hints(type(section))[key]
        checked = _check(f"--{key.replace('_', '-')}", key, value, typ, fld.metadata)
        config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{key: checked})})
    return config


def to_toml(config: Config | None = None) -> str:
    """Render a configuration as commented TOML (used to write and check the shipped config.toml)."""
    config = config or Config()
    lines = [
        "# voiceassist configuration. Every key is optional; shown here with its default.",
        "# Loaded from --config PATH, else $XDG_CONFIG_HOME/voiceassist/config.toml.",
        "",
    ]
    for sec in dataclasses.fields(config):
        section = getattr(config, sec.name)
        lines.append(f"[{sec.name}]  # {type(section).__doc__}")
        hints = get_type_hints(type(section))
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            rendered = (
                ("true" if value else "false")
                if isinstance(value, bool)
                else (json.dumps(value) if isinstance(value, str) else repr(value))
            )
            lines.append(f"# {f.metadata['doc']}; {_allowed(f.metadata, hints[f.name])}")
            lines.append(f"{f.name} = {rendered}")
        lines.append("")
    return "\n".join(lines)
