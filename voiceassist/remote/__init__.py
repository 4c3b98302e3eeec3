"""The thin client: the conversation answered by a vLLM (OpenAI-compatible) server; no torch, no transformers.

``voiceassist.remote.backend.RemoteBackend`` implements ``voiceassist.backend.Backend``;
``voiceassist.openers.open_backend`` picks it when ``server.url`` (``--server URL``) is set. Install for a thin
client: ``pip install 'voiceassist[remote]'``. (Nothing is imported here, so importing a submodule never
imports the package's other modules: no import cycle.)
"""
