"""Wake word (issue #13): a detector on the capture path and a gate between the segmenter and the turn queue.

- :mod:`voiceassist.wake.detector` — :class:`~voiceassist.wake.detector.WakeDetector`: 16 kHz mono float32
  blocks in, :class:`~voiceassist.wake.detector.Detection` s (time, word, probability) out; engines over
  pymicro-wakeword and pyopen-wakeword (the ``wake`` extra), imported only when a detector is built.
- :mod:`voiceassist.wake.gate` — :class:`~voiceassist.wake.gate.WakeGate`: a pure state machine that decides
  which segmenter utterances become turns (after the wake word, in a follow-up window) and when a wake word
  means "stop".
- :mod:`voiceassist.wake.offline` — the same two over an audio file (``voiceassist wake``, ``segment
  --wake-word``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voiceassist.errors import ConfigError

if TYPE_CHECKING:
    from voiceassist.config import Config


def check_config(config: Config) -> None:
    """Before anything slow loads: the wake word's model resolves (one-line ConfigError / ModelError, also for a
    missing extra), and push-to-talk, which takes no wake word (the key already says when the user is
    addressed), is not asked for with it."""
    if not config.wake.word:
        return
    from voiceassist.wake.detector import resolve

    resolve(config.wake.word, config.wake.engine)
    if config.ui.mode == "ptt":
        raise ConfigError(
            f"a wake word ([wake] word = {config.wake.word!r}) does not go with push-to-talk ([ui] mode = 'ptt'): "
            "use --mode handsfree, or --wake-word '' to turn the wake word off"
        )
