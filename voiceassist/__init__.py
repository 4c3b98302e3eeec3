"""voiceassist: a real-time voice assistant over a persistent multi-turn Qwen2-Audio conversation."""

__version__ = "0.1.0"
