"""Wake-word renderings for the tests and benchmarks that say one over a reply."""

from __future__ import annotations

import numpy as np

from support.speech import SR, silence
from voiceassist.events import AudioBlock
from voiceassist.wake.detector import build

BLOCK = 320  # 20 ms at 16 kHz, the capture stage's block


def heard_alone(word: str, wake: np.ndarray) -> bool:
    """The detector of ``word`` fires on this rendering said alone, in quiet (1 s before, 1.5 s after). The
    renderings it misses even so are espeak's limit (BENCHMARKS.md "Wake word"), not the echo's."""
    det = build(word)
    mic = np.concatenate([silence(1.0), wake, silence(1.5)])
    return any(det.process(AudioBlock(mic[i : i + BLOCK], i / SR)) for i in range(0, len(mic), BLOCK))
