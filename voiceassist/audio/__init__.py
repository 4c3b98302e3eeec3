"""Audio in and out: sources (microphone, file), resampling to 16 kHz mono, device listing."""
