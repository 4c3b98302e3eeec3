"""Speaking the replies: sentence-streamed synthesis in a killable worker process, interruptible playback.

- :mod:`~voiceassist.speech.sentences`: streaming text → sentences; what is speakable; spoken prefixes.
- :mod:`~voiceassist.speech.synth_process`: the synthesis process (pyttsx3, or espeak-ng's command line).
- :mod:`~voiceassist.speech.synth_client`: starts, feeds, times out and restarts that process.
- :mod:`~voiceassist.speech.player`: the output stream and the count of what was really played.
- :mod:`~voiceassist.speech.speaker`: :class:`Speaker`, the one class the App uses.
"""

from voiceassist.speech.sentences import SentenceSplitter, speakable, spoken_prefix
from voiceassist.speech.speaker import Speaker
from voiceassist.speech.synth_client import SynthWorker, Voice, list_voices

__all__ = ["Speaker", "SentenceSplitter", "SynthWorker", "Voice", "list_voices", "speakable", "spoken_prefix"]
