"""Audio in and out: sources (microphone, file), resampling to 16 kHz mono, device listing."""

# #16: libasound's own messages ("ALSA lib pcm.c:...") go to the debug log, not the terminal; installed before
# anything imports sounddevice (PortAudio's initialisation is where most of them are printed).
from voiceassist.audio.chatter import quiet_alsa as _quiet_alsa  # noqa: E402

_quiet_alsa()
