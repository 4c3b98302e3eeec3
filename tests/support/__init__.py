"""Real parts the tests drive: a private PulseAudio server with null sinks, espeak-ng speech, mixing helpers."""
