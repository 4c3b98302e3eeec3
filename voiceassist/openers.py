"""The one place that opens the assistant's parts: the backend, the input, the speaker.

Used by ``chat``, ``ask``, the kiosk and the App (``/tts on``). Each imports lazily: a thin client never imports
torch, a text-only run never imports the speech engines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from voiceassist.config import Config

if TYPE_CHECKING:
    from voiceassist.audio.sources import AudioSource
    from voiceassist.backend import Backend
    from voiceassist.pipeline.speech import Speaker


def open_backend(config: Config) -> Backend:
    """The backend the configuration asks for: the vLLM server at ``server.url`` when set (a thin client: no
    torch needed), else the local model session."""
    if config.server.url:
        from voiceassist.remote.backend import RemoteBackend

        return RemoteBackend(config)
    from voiceassist.model.budget import check_session
    from voiceassist.model.loading import load_session

    session = load_session(config)
    # A capped context limit is said, a system prompt that leaves no room is refused (exit 2), at start.
    check_session(session, config.model.context_limit, config.generation.max_new_tokens)
    return session


def open_input(
    config: Config,
    files: Sequence[str] = (),
    *,
    fast: bool = False,
    check_device: bool = True,
    on_device_state: Callable[[str, str], None] | None = None,
) -> AudioSource:
    """The source, not started: ``files`` played one after another (fast: as fast as possible), else the
    microphone (reopened by name when it comes back after a loss). Files, and with ``check_device`` the input
    device, are checked here, before the model loads, so a wrong path costs no waiting (AudioFileError /
    DeviceError: one line naming the problem)."""
    if files:
        from voiceassist.audio.files import open_audio

        for path in files:
            open_audio(path).close()
        if len(files) > 1:
            from voiceassist.audio.filesequence import FileSequence

            return FileSequence(list(files), realtime=not fast, block_ms=config.audio.block_ms)
        from voiceassist.audio.sources import open_source

        return open_source(config.audio, from_file=files[0], fast=fast)
    from voiceassist.audio.reconnect import reconnecting_microphone

    if check_device:
        from voiceassist.audio.devices import resolve_device

        resolve_device(config.audio.input_device or None, "input")  # DeviceError: names what is available
    return reconnecting_microphone(config.audio, on_state=on_device_state)


def open_speaker(config: Config, warn: Callable[[str], None]) -> Speaker | None:
    """The Speaker when ``tts.enabled``; None when off, or (after one ``warn`` line) when it cannot work here."""
    if not config.tts.enabled:
        return None
    try:
        return create_speaker(config)
    except Exception as err:  # noqa: BLE001 - speech is optional: say why once and go on in text
        warn(f"speech output unavailable ({' '.join(str(err).split())}); replies stay text only")
        return None


def create_speaker(config: Config) -> Speaker:
    """A new Speaker (raises when speech output cannot work here)."""
    from voiceassist.speech import Speaker as SpeechSpeaker

    return SpeechSpeaker(config.tts, config.audio.output_device)
