"""Device loss and recovery with a real PortAudio device: a PulseAudio null sink's monitor, whose sink module
is unloaded (the device disappears) and loaded again (it comes back)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from voiceassist.audio.reconnect import (
    ReconnectingSource,
    open_stream_count,
    reconnecting_microphone,
    reinitialize_portaudio,
)
from voiceassist.audio.sources import MicrophoneSource
from voiceassist.config import AudioConfig
from voiceassist.errors import DeviceError

pytestmark = pytest.mark.pulse


def _read_until_block(src, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        block = src.read(0.1)
        if block is not None:
            return block
    return None


def test_lost_device_is_reported_once_and_reopened_by_name(pulse):
    states: list[tuple[str, str]] = []
    src = reconnecting_microphone(AudioConfig(input_device="default"), on_state=lambda s, d: states.append((s, d)))
    src.start()
    try:
        assert states == [("open", "default")]
        assert _read_until_block(src, 5) is not None
        stats = src.stats
        blocks_before = stats.blocks

        pulse.unload_sink("va_sink")
        with pytest.raises(DeviceError) as err:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                src.read(0.1)
        assert "\n" not in str(err.value)
        assert states[-1][0] == "lost" and src.state == "lost" and src.lost_count == 1

        # The App's protocol while the device is gone: close() + start() attempts that fail with DeviceError.
        src.close()
        assert src.state == "lost"  # still lost, not "closed": the status must keep saying so
        with pytest.raises(DeviceError):
            src.start()

        pulse.load_sink("va_sink")
        back = time.monotonic()
        src.start()
        assert states[-1] == ("open", "default") and src.reconnects == 1
        block = _read_until_block(src, 5)
        assert block is not None
        resumed_s = time.monotonic() - back
        # Same counters object across the reopening, still counting.
        assert src.stats is stats and stats.blocks > blocks_before
        assert resumed_s < 3.0, f"capture resumed {resumed_s:.2f} s after the device came back"
    finally:
        src.close()
    assert states[-1] == ("closed", "")
    deadline = time.monotonic() + 3  # MicrophoneSource closes on a helper thread (bounded at 2 s)
    while open_stream_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_stream_count() == 0, "a stream was left open"


def test_plain_reader_reconnects_inside_read(pulse):
    """A reader that just keeps calling read() after the DeviceError gets None, then audio again."""
    src = reconnecting_microphone(AudioConfig(input_device="default"))
    src.start()
    try:
        assert _read_until_block(src, 5) is not None
        pulse.unload_sink("va_sink")
        with pytest.raises(DeviceError):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                src.read(0.1)
        assert src.read(0.1) is None  # lost: quiet, no exception storm
        time.sleep(0.5)
        assert src.read(0.1) is None
        pulse.load_sink("va_sink")
        assert _read_until_block(src, 6) is not None
        assert src.state == "open" and src.reconnects == 1
    finally:
        src.close()


class _NoAdcTimes(MicrophoneSource):
    """A real PulseAudio device whose callbacks are handed no ADC time, as some drivers give (a named fake of
    PortAudio's time info only: every PulseAudio device here reports one)."""

    def _callback(self, indata, frames, time_info, status):
        untimed = SimpleNamespace(inputBufferAdcTime=0.0, currentTime=time_info.currentTime)
        super()._callback(indata, frames, untimed, status)


@pytest.mark.parametrize("adc_times", [True, False])
def test_the_open_devices_timing_reaches_the_echo_cancellers_question(pulse, adc_times):
    """The App's canceller asks its source whether the block stamps are ADC times (and, if not, says once that
    it estimates the delay itself); in the CLI that source is this wrapper, so the answer must be the device's."""
    kind = MicrophoneSource if adc_times else _NoAdcTimes
    src = ReconnectingSource(lambda name: kind(name if name is not None else "default"))
    assert src.timing_reported is True  # nothing open yet: nothing known against the device
    src.start()
    try:
        assert _read_until_block(src, 5) is not None
        assert src.timing_reported is adc_times
    finally:
        src.close()


def test_the_echos_lag_reaches_the_open_devices_timeline(pulse):
    """The App hands the canceller the source's observe_echo (the evidence the microphone timeline's slow moves
    need); the CLI's source is this wrapper, so each measurement must reach the MicrophoneSource inside."""
    src = reconnecting_microphone(AudioConfig(input_device="default"))
    src.observe_echo(0.08)  # nothing open yet: nothing to tell, no error
    src.start()
    try:
        assert _read_until_block(src, 5) is not None
        for _ in range(3):
            src.observe_echo(0.08)
        echo = list(src._inner._timeline._echo)  # the microphone's side: negated
        assert len(echo) == 3 and len(set(echo)) == 1 and abs(echo[0] + 0.08) < 0.05, echo
    finally:
        src.close()


def test_portaudio_is_not_reinitialised_under_an_open_stream(pulse):
    """Pa_Terminate would close every stream of the process (e.g. the speaker's): it is skipped then."""
    import sounddevice as sd

    out = sd.OutputStream(device="default", channels=1, samplerate=16000)
    try:
        assert open_stream_count() == 1
        assert reinitialize_portaudio() is False
        assert not out.closed
        out.start()
        assert out.active  # still a working stream
    finally:
        out.close()
    assert open_stream_count() == 0 and reinitialize_portaudio() is True


class FakeQuietMicrophone:
    """A fake, named as such: a device whose callbacks stop without any error (what an unplugged USB
    microphone often does): it delivers ``n`` blocks, then only timeouts."""

    def __init__(self, n: int) -> None:
        from voiceassist.audio.sources import CaptureStats

        self.name, self.stats, self.n = "quiet-mic", CaptureStats(), n

    def start(self) -> None:
        pass

    def read(self, timeout: float):
        if self.n > 0:
            self.n -= 1
            self.stats.blocks += 1
            return object()
        time.sleep(timeout)
        return None

    def close(self) -> None:
        pass


def test_silent_stall_counts_as_lost_without_portaudio():
    opened: list[str | None] = []

    def factory(name):
        opened.append(name)
        return FakeQuietMicrophone(3)

    src = ReconnectingSource(factory, stall_s=0.3, reinit=False)
    src.start()
    got = [src.read(0.05) for _ in range(3)]
    assert all(b is not None for b in got)
    with pytest.raises(DeviceError, match="delivered no audio"):
        for _ in range(40):
            src.read(0.05)
    src.close()
    src.start()  # reopened by the name the first open resolved to
    assert opened == [None, "quiet-mic"] and src.stats.blocks == 3


def test_kiosk_reports_device_loss_and_resumes_capture(pulse, tmp_path):
    """The whole kiosk (tiny model, speech output on) listening on the null sink's monitor and speaking into
    the sink: the greeting is spoken, espeak questions are answered; the sink module is unloaded (input AND
    output device lost: event, status file); loaded again: capture resumes within 3 s and the next question
    is answered, without a restart; the speech output comes back too."""
    import json

    from support.kiosk import KioskProcess
    from support.speech import speech_wav

    from voiceassist.kiosk.status import read_status

    wav = speech_wav(tmp_path / "q.wav", 0.3, "Where is the exhibition?", 0.8)
    status = tmp_path / "status.json"
    conf = tmp_path / "k.toml"
    conf.write_text(
        f'[kiosk]\nstatus_file = "{status}"\nidle_reset_s = 0\ngreeting = "Welcome to the museum."\n'
        '[generation]\nmax_new_tokens = 12\n[audio]\ninput_device = "default"\n[tts]\nenabled = true\n'
    )
    k = KioskProcess(["--config", str(conf), "--model", "tiny"])

    def status_after(n: int, state: str, timeout: float, what: str) -> None:
        k.wait_for(
            lambda r: r.get("type") == "status" and r["state"] == state and k.records.index(r) >= n, timeout, what
        )

    def ask(turn: int) -> None:
        """Play the question once the kiosk listens (not speaking, past the echo tail); wait for the reply."""
        k.wait_for(
            lambda r: k.of_type("status") and k.of_type("status")[-1]["state"] == "listening",
            20,
            f"listening before question {turn}",
        )
        time.sleep(0.8)  # tts.echo_tail_ms: speech right after the assistant's own is ignored
        pulse.play(wav)
        k.wait_for(lambda r: r.get("type") == "reply_done" and r["turn"] == turn, 30, f"reply {turn}")

    try:
        k.wait_for(lambda r: r.get("message") == "kiosk ready", 120, "ready")
        status_after(0, "speaking", 10, "greeting spoken")
        ask(1)
        k.wait_for(lambda r: k.of_type("status")[-1]["state"] == "listening", 20, "reply 1 spoken")

        pulse.unload_sink("va_sink")  # input AND output device gone
        k.wait_for(lambda r: r.get("type") == "status" and r["state"] == "device_lost", 10, "device_lost")
        err = k.wait_for(lambda r: r.get("type") == "error" and r["source"] == "audio", 5, "audio error")
        assert "\n" not in err["message"]
        time.sleep(0.3)
        assert read_status(status)["device"]["input"]["state"] == "lost"
        assert read_status(status)["state"] == "device_lost"
        time.sleep(1.5)  # a few failed reconnection attempts while it is gone

        pulse.load_sink("va_sink")
        back_t = time.monotonic()  # the kiosk's "t" is the same system-wide monotonic clock
        rec = k.wait_for(
            lambda r: r.get("type") == "log" and r.get("device_state") == "open" and r["t"] > back_t - 0.1, 10, "reopen"
        )
        resumed_s = rec["t"] - back_t
        assert read_status(status)["device"]["input"]["state"] == "open"
        ask(2)
        assert resumed_s < 3.0, f"capture resumed {resumed_s:.2f} s after the device came back"
        # Reply 2 (12 tokens of the tiny model: some words to say) goes to the output stream of the lost sink:
        # reported (tts error), and the kiosk must not stay "speaking" (deaf) with nothing reaching the device.
        k.wait_for(lambda r: r.get("type") == "error" and r["source"] == "tts", 15, "speech output error")
        ask(3)
        n = len(k.records)
        status_after(n - 1, "speaking", 10, "reply 3 spoken")
        status_after(n, "listening", 15, "reply 3 done")
        deadline = time.monotonic() + 3  # the status file follows the JSON line within the same event
        while read_status(status)["device"]["output"]["state"] != "open" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_status(status)["device"]["output"]["state"] == "open", [
            (r["type"], r.get("state"), r.get("message", "")[:80]) for r in k.records[-14:]
        ]
        print(json.dumps({"device_resumed_s": round(resumed_s, 3)}))
        t0 = time.monotonic()
        k.proc.terminate()
        rc = k.finish(timeout=8)
        stop_s = time.monotonic() - t0
        stacks = "\n".join(line for line in k.stderr_tail(10**7).splitlines() if "ALSA lib" not in line)
        assert rc == 0 and stop_s < 5, (
            f"no clean stop within 5 s of SIGTERM (rc {rc}, {stop_s:.1f} s):\n{stacks[-8000:]}"
        )
    finally:
        k.kill()
