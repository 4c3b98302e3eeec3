# Sourced by scripts/run and scripts/test: installs what is missing, quickly a no-op when nothing is.
# Usage: . scripts/setup.sh; ensure_system_packages PKG...; ensure_venv EXTRAS [--test-torch]
# Env: VOICEASSIST_VENV (default .venv in the repository), PYTHON (default python3).

VENV="${VOICEASSIST_VENV:-$PWD/.venv}"
PY="${PYTHON:-python3}"

say() { printf '[setup] %s\n' "$*" >&2; }

ensure_system_packages() {
    # Debian/Ubuntu packages, installed as root or through sudo; elsewhere, say what is needed and go on.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            say "please install these system packages, then run again: ${missing[*]}"; return 0; fi
    fi
    if ! command -v apt-get >/dev/null; then say "not a Debian system: install ${missing[*]} yourself"; return 0; fi
    say "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
    # $1: the project's extras to install, e.g. "all" or "test"; $2 == --test-torch: pin the tested CPU torch.
    local extras="$1" pin_torch="${2:-}"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            say "voiceassist needs Python 3.11 or newer; set PYTHON=python3.11 (or newer) and run again"; exit 1; }
        say "creating the virtual environment in $VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    if [ "$pin_torch" = --test-torch ] && ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
        # The tests run on the CPU build of this tested release (pip takes it from a local wheel where one
        # is configured); an unpinned torch would pull a multi-GB CUDA build first.
        say "installing torch==2.13.0"
        "$VENV/bin/python" -m pip install -q torch==2.13.0
    fi
    # Reinstall only when pyproject.toml or the extras changed since the last install.
    local stamp="$VENV/.voiceassist-$extras" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing voiceassist[$extras] and its dependencies"
        "$VENV/bin/python" -m pip install -q -e ".[$extras]"
        echo "$want" > "$stamp"
    fi
}

# What the tests drive for real: PortAudio, PulseAudio (null sinks as devices), espeak-ng speech, tmux, sox.
TEST_SYSTEM_PACKAGES=(libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils espeak-ng tmux sox libsndfile1 libspeexdsp1)
# What running the assistant needs: PortAudio for the microphone, espeak-ng for speech output on Linux,
# SpeexDSP for the wake word's linear echo canceller (voiceassist/wake/linear.py; optional there).
RUN_SYSTEM_PACKAGES=(libportaudio2 libasound2-plugins libsndfile1 espeak-ng libspeexdsp1)
