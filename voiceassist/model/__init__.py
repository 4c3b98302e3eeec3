"""The local Qwen2-Audio model: loading, the persistent session, the audio encoder, the tiny offline model."""
