"""The few error types a user can see.

Code below the edges raises these; only the edges (CLI, UI, daemon log) turn them into messages. Each carries
a one-line message that names the problem and says what to do, and the process exit code the CLI uses.
"""

from __future__ import annotations

from collections.abc import Callable


class VoiceAssistError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-line message shown to them."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # One line: a multi-line message would break the plain and JSON front ends.
        super().__init__(" ".join(message.split()))


class ConfigError(VoiceAssistError):
    """Bad configuration file, key, type or value, or a bad command-line value."""

    exit_code = 2


class AudioFileError(VoiceAssistError):
    """An audio file that is missing, empty, corrupt or not audio."""

    exit_code = 3


class DeviceError(VoiceAssistError):
    """An audio device that is missing, busy or lost."""

    exit_code = 4


class ModelError(VoiceAssistError):
    """A model that cannot be found, loaded or run."""

    exit_code = 5


class BackendError(VoiceAssistError):
    """The model backend (local or remote) failed during a turn; the conversation is unchanged.

    ``retryable``: the same turn may well succeed later (a server that was unreachable, timed out, answered
    5xx or dropped the stream), so the app keeps the turn and sends it again after a pause; False for failures
    that would only repeat (a refused request, a local model that ran out of memory).
    """

    exit_code = 6

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class SpeechError(VoiceAssistError):
    """Speech output failed: no speech engine, an engine that crashed or hung, an unknown voice."""

    exit_code = 7


def one_line(err: object) -> str:
    """An error (or any object) as one line of text."""
    return " ".join(str(err).split()) or type(err).__name__


def quietly(fn: Callable[[], object]) -> None:
    """Call ``fn()``, ignoring its errors (shutdown paths: closing is best effort)."""
    try:
        fn()
    except Exception:  # noqa: BLE001
        pass


class OutputError(VoiceAssistError):
    """An output the user asked for could not be written (``--events`` on a full disk, #16). The assistant goes
    on; this is the exit code it ends with."""

    exit_code = 8


class ModelSettingError(ModelError):
    """A model setting this machine cannot run: not enough memory for the model at this dtype and context, bf16
    asked on a GPU without native bf16, quantization on a CPU. Exit 2, like any bad setting: the message names
    the setting that would work."""

    exit_code = 2
