"""The kiosk service, run for real: ``voiceassist kiosk`` subprocesses with the tiny Qwen2-Audio (random
weights: its replies are noise, every code path is real), espeak speech as input, real signals, a real
sd_notify socket; plus the status file/command, storage rotation and the install script's dry run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from support.kiosk import ROOT, KioskProcess, NotifySocket, kiosk_config, visitor_wav
from support.speech import silence

from voiceassist.config import KioskConfig
from voiceassist.kiosk import faults
from voiceassist.kiosk.status import StatusFile, describe, read_status
from voiceassist.kiosk.storage import Store

QUESTIONS = [
    "Hello, where is the exhibition?",
    "What time does the museum close today?",
    "Is there a cafe in the building?",
    "Thank you very much, goodbye.",
]


def _status_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voiceassist", "status", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


# ---- whole runs -----------------------------------------------------------------------------------------------


def test_kiosk_survives_model_fault_resets_after_max_turns_and_talks_to_systemd(tmp_path):
    """A fast file with 4 questions; turn 2 fails with a (simulated) CUDA out-of-memory in the middle of its
    reply; max_turns = 3. Storage on, in a temporary folder. A real NOTIFY_SOCKET with a watchdog."""
    wav = visitor_wav(tmp_path, QUESTIONS)
    store = tmp_path / "store"
    conf = kiosk_config(
        tmp_path,
        greeting="Welcome to the museum.",
        max_turns=3,
        store_audio=True,
        store_transcripts=True,
        store_dir=str(store),
        status_file=str(tmp_path / "status.json"),
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    k = KioskProcess(
        ["--config", str(conf), "--model", "tiny", "--from-file", str(wav), "--fast"],
        env={
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": "1000000",
            faults.ENV: "model:turns=2:kind=oom:at=token",
        },
    )
    try:
        rc = k.finish(timeout=150)
    finally:
        k.kill()
    msgs = notify.messages()
    notify.close()
    assert rc == 0, k.stderr
    assert not k.bad_lines, f"non-JSON lines on stdout: {k.bad_lines[:3]}"

    # The fault is reported once, as a one-line model error, and the kiosk answered the turns after it.
    errors = k.of_type("error")
    assert len(errors) == 1 and errors[0]["source"] == "model", errors
    assert "out of GPU memory" in errors[0]["message"] and "\n" not in errors[0]["message"]
    done = {r["turn"]: r for r in k.of_type("reply_done")}
    # The failed turn's streamed line is closed by an interrupted, empty reply_done (the App's contract).
    assert done[2]["interrupted"] and done[2]["n_tokens"] == 0
    assert sorted(t for t, r in done.items() if r["n_tokens"]) == [1, 3, 4]
    # Turn 4 starts a new conversation (reset after max_turns = 3): its context is a first turn's size.
    assert done[4]["context_tokens"] < done[3]["context_tokens"]
    resets = k.logs("conversation reset")
    assert [r["reset"] for r in resets] == ["max_turns"]
    assert len(k.logs("greeting")) == 2  # at start and after the reset

    # Privacy of the log: no token events and no reply text unless transcripts are kept (they are here).
    assert done[1]["text"] != "" and k.of_type("token")

    # Storage: audio of every turn and one transcript per conversation, private files.
    wavs = sorted(store.glob("*.wav"))
    transcripts = sorted(store.glob("*.jsonl"))
    assert len(wavs) == 4 and len(transcripts) == 2
    records = [json.loads(line) for p in transcripts for line in p.read_text().splitlines()]
    assert [r.get("error", "") != "" for r in records] == [False, True, False, False]
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in wavs + transcripts)

    # systemd: READY once, STATUS lines, a watchdog heartbeat, STOPPING at the end.
    assert sum(m.startswith("READY=1") for m in msgs) == 1
    assert any(m.startswith("STATUS=") for m in msgs) and "STOPPING=1" in msgs
    assert msgs.count("WATCHDOG=1") >= 2
    assert read_status(tmp_path / "status.json")["state"] == "stopped"


def test_idle_reset_sighup_reload_status_and_sigterm(tmp_path):
    """Real time, --stay: one question, then silence → idle reset; SIGHUP applies what it can and names what
    needs a restart; a broken file on SIGHUP keeps the old configuration; `voiceassist status` sees it;
    SIGTERM stops it cleanly within 5 s."""
    wav = visitor_wav(tmp_path, QUESTIONS[:1], gap_s=2.5)
    status = tmp_path / "status.json"
    conf = kiosk_config(tmp_path, idle_reset_s=1.0, status_file=str(status))
    k = KioskProcess(["--config", str(conf), "--model", "tiny", "--from-file", str(wav), "--stay"])
    try:
        k.wait_for(lambda r: r.get("message") == "kiosk ready", 120, "ready")
        k.wait_for(lambda r: r.get("type") == "reply_done", 30, "a reply")
        reset = k.wait_for(lambda r: r.get("message", "").startswith("conversation reset"), 15, "idle reset")
        assert reset["reset"] == "idle"
        # Privacy by default: the log holds no conversation text.
        assert not k.of_type("token") and all(r["text"] == "" for r in k.of_type("reply_done"))

        conf.write_text(
            conf.read_text().replace("idle_reset_s = 1.0", "idle_reset_s = 30.0") + '[model]\ndtype = "float32"\n'
        )
        k.proc.send_signal(signal.SIGHUP)
        rec = k.wait_for(lambda r: r.get("message", "").startswith("configuration reloaded"), 15, "reload")
        assert rec["applied"] == ["kiosk.idle_reset_s"] and rec["needs_restart"] == ["model.dtype"]

        conf.write_text("[kiosk]\nmax_turns = -4\n")
        k.proc.send_signal(signal.SIGHUP)
        rec = k.wait_for(lambda r: r.get("message", "").startswith("configuration not reloaded"), 15, "refusal")
        assert "max_turns = -4 is not allowed" in rec["message"]

        st = _status_cmd("--file", str(status), "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        data = json.loads(st.stdout)
        assert data["running"] and data["resets"] == 1 and data["turns"] == 1
        assert "max_turns" in data["last_error"]["message"]
        human = _status_cmd("--file", str(status))
        assert human.returncode == 0 and human.stdout.startswith("state:")

        rc, took = k.terminate(timeout=5)
        assert rc == 0 and took < 5
    finally:
        k.kill()
    assert k.logs("kiosk stopped")
    assert read_status(status)["state"] == "stopped"
    gone = _status_cmd("--file", str(status))
    assert gone.returncode == 3 and len(gone.stdout.strip().splitlines()) == 1 and "no kiosk" in gone.stdout


@pytest.mark.parametrize(
    "toml, expected, code",
    [
        ("[kiosk]\nidle_reset_s = -1\n", "idle_reset_s = -1.0 is not allowed", 2),
        ('[kiosk]\nstore_audio = true\nstore_dir = "/proc/voiceassist"\n', "is not a writable folder", 2),
    ],
)
def test_bad_configuration_is_one_line_and_non_zero(tmp_path, toml, expected, code):
    conf = tmp_path / "bad.toml"
    conf.write_text(toml)
    status = tmp_path / "status.json"
    r = subprocess.run(
        [sys.executable, "-m", "voiceassist", "kiosk", "--config", str(conf), "--status-file", str(status)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in r.stderr
    if status.exists():  # the error reached the status file too: `voiceassist status` says why it stopped
        st = _status_cmd("--file", str(status))
        assert st.returncode == 3 and expected in st.stdout and st.stdout.count("\n") == 1


def test_bad_fault_plan_is_refused():
    assert faults.parse_plan("") is None
    assert faults.parse_plan("model:turns=2,5:kind=backend:at=start").turns == frozenset({2, 5})
    with pytest.raises(Exception, match="is not a fault plan"):
        faults.parse_plan("model:turn=2")


# ---- status file and command ------------------------------------------------------------------------------------


def test_status_file_is_atomic_and_the_command_reports_running_or_not(tmp_path):
    path = tmp_path / "run" / "status.json"
    st = StatusFile(path)  # this test process plays the kiosk
    st.update(state="listening")
    st.device("input", "lost", "no audio for 1.0 s", name="USB mic")
    st.error("turn 3: out of GPU memory", "model")
    assert not list(path.parent.glob(".status-*"))  # no temporary file left behind
    data = read_status(path)
    lines = describe(data, path)
    assert lines[0] == "state:      listening"
    assert any(line.startswith("input:") and "USB mic: lost" in line for line in lines)
    assert any("out of GPU memory" in line for line in lines)

    r = _status_cmd("--file", str(path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["running"] is True

    data["pid"] = 2**22 + 12345  # beyond pid_max: no such process
    path.write_text(json.dumps(data))
    r = _status_cmd("--file", str(path))
    assert r.returncode == 3 and "pid" in r.stdout and "gone" in r.stdout

    r = _status_cmd("--file", str(tmp_path / "nothing.json"))
    assert r.returncode == 3 and r.stdout.count("\n") == 1 and "no kiosk is running" in r.stdout


# ---- storage -----------------------------------------------------------------------------------------------------


def test_nothing_is_stored_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert Store.from_config(KioskConfig()) is None
    assert not any(tmp_path.iterdir())


def test_storage_rotates_by_age_then_size_and_touches_only_its_files(tmp_path):
    kc = KioskConfig(
        store_audio=True, store_transcripts=True, store_dir=str(tmp_path), store_max_mb=1.0, store_max_days=1.0
    )
    store = Store(kc)
    keep = tmp_path / "notes.txt"
    keep.write_text("an administrator's file")
    audio = np.zeros(16000 * 5, np.float32)  # 5 s = 160 kB as 16-bit WAV
    now = time.time()
    for turn in range(1, 9):
        for p in store.record_turn(turn, [audio], "", reply="noise"):
            os.utime(p, (now - 100 + turn, now - 100 + turn))
    wavs = sorted(tmp_path.glob("*.wav"))
    total = sum(p.stat().st_size for p in tmp_path.iterdir() if p != keep)
    assert total <= 1_000_000 and 4 <= len(wavs) < 8
    assert wavs[-1].name.endswith("-t8-0.wav")  # the newest stay
    old = tmp_path / "20200101-000000-abcd-t1-0.wav"
    old.write_bytes(b"x")
    os.utime(old, (now - 3 * 86400, now - 3 * 86400))
    assert old in store.rotate()
    assert keep.exists()


# ---- the heartbeat, without a model -------------------------------------------------------------------------------


def test_heartbeat_stops_pinging_and_triggers_when_a_worker_dies(tmp_path, monkeypatch):
    from voiceassist.kiosk.systemd import Heartbeat, Notifier

    notify = NotifySocket(tmp_path / "n.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="va-model")
    worker.start()
    dead: list[list[str]] = []
    hb = Heartbeat(Notifier(), lambda: [] if worker.is_alive() else [worker.name], 0.05, dead.append)
    hb.start()
    time.sleep(0.3)
    msgs = notify.messages()
    stop.set()
    worker.join()
    deadline = time.monotonic() + 5
    while hb.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    msgs += notify.messages()
    notify.close()
    assert dead == [["va-model"]]
    assert msgs.count("WATCHDOG=1") >= 3 and msgs[-1] == "WATCHDOG=trigger"
    assert msgs[-2].startswith("STATUS=worker stopped: va-model")


# ---- installation --------------------------------------------------------------------------------------------------


def test_install_kiosk_dry_run_changes_nothing(tmp_path):
    prefix = tmp_path / "opt"
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "install-kiosk"),
            "--dry-run",
            "--prefix",
            str(prefix),
            "--user",
            "va-test-nobody",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "+ useradd --system" in out and "va-test-nobody" in out
    assert "ensure_venv" in out and "kiosk --check-config" in out
    assert "write /etc/systemd/system/voiceassist.service" in out and "systemctl enable --now" in out
    assert f"ExecStart={prefix}/.venv/bin/voiceassist kiosk" in out and "@PREFIX@" not in out
    assert 'status_file = "/run/voiceassist/status.json"' in out
    assert not prefix.exists()
    assert subprocess.run(["id", "va-test-nobody"], capture_output=True).returncode != 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_service_unit_verifies(tmp_path):
    unit = (ROOT / "scripts" / "voiceassist.service").read_text()
    exe = tmp_path / ".venv" / "bin" / "voiceassist"
    exe.parent.mkdir(parents=True)
    exe.symlink_to("/bin/true")
    path = tmp_path / "voiceassist.service"
    path.write_text(unit.replace("@PREFIX@", str(tmp_path)).replace("@USER@", "root"))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for key in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StartLimitIntervalSec=",
        "StartLimitBurst=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert key in unit


def test_sigterm_while_the_model_loads_stops_cleanly(tmp_path):
    status = tmp_path / "status.json"
    wav = tmp_path / "x.wav"
    sf.write(str(wav), silence(1.0), 16000)
    k = KioskProcess(["--model", "tiny", "--status-file", str(status), "--from-file", str(wav)])
    try:
        k.wait_for(lambda r: r.get("message") == "kiosk starting", 60, "start")  # the model loads now
        rc, took = k.terminate(timeout=5)
        assert rc == 0 and took < 5
    finally:
        k.kill()
    assert not k.of_type("reply_done") and read_status(status)["state"] == "stopped"
