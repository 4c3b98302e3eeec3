"""The thin client: the conversation answered by a vLLM (OpenAI-compatible) server; no torch, no transformers.

``RemoteBackend`` implements ``voiceassist.backend.Backend``; ``voiceassist.backend.open_backend`` picks it
when ``server.url`` (``--server URL``) is set. Install for a thin client: ``pip install 'voiceassist[remote]'``.
"""

from voiceassist.remote.backend import RemoteBackend, RemoteTurn

__all__ = ["RemoteBackend", "RemoteTurn"]
