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
