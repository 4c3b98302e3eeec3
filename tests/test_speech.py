"""Speech output: the sentence splitter, and the real Speaker (pyttsx3 + espeak-ng in a worker process) playing
through PortAudio into a PulseAudio null sink whose monitor we record.

Timing targets (first sample ≤ 150 ms after the sentence's last token, stop ≤ 100 ms) are measured in
scripts/bench_speech.py; here the margins are wide and the assertions are about behaviour: sound arrives, the
recording goes quiet after stop() while the reply would have gone on for seconds, a killed or hung worker is
replaced and speech goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.pulse import MonitorRecorder

from voiceassist.config import TtsConfig
from voiceassist.speech import SentenceSplitter, Speaker, speakable, spoken_prefix

REPO = Path(__file__).resolve().parent.parent
FRAME = 160  # 10 ms at 16 kHz, for level envelopes
LOUD = 0.01  # RMS of a 10 ms frame above this is sound (espeak speech is ~0.1-0.3 RMS; a null sink is 0)


# ---- sentence splitting (pure) -----------------------------------------------------------------------------


def split(text: str, pieces: list[str] | None = None) -> list[str]:
    """Feed ``text`` (as ``pieces`` if given, like model tokens) and flush; check the concatenation invariant."""
    pieces = pieces if pieces is not None else [text]
    assert "".join(pieces) == text
    s = SentenceSplitter()
    out: list[str] = []
    for p in pieces:
        out += s.feed(p)
    out += s.flush()
    assert "".join(out) == text
    return out


def tokens(text: str) -> list[str]:
    """Model-like pieces: words with their leading space, single digits, runs of punctuation (like BPE)."""
    import re

    return re.findall(r" ?[A-Za-z']+| ?\d| ?[^\sA-Za-z\d]+|\s+", text)


@pytest.mark.parametrize(
    "text, want",
    [
        ("Hello there. How are you? I'm fine!", ["Hello there.", " How are you?", " I'm fine!"]),
        ("Pi is 3.14 today. Yes.", ["Pi is 3.14 today.", " Yes."]),
        ("We met in 2024. Then we left.", ["We met in 2024.", " Then we left."]),
        ("Dr. Smith is in. Mr. Jones is out.", ["Dr. Smith is in.", " Mr. Jones is out."]),
        ("Take fruit, e.g. apples. Then go.", ["Take fruit, e.g. apples.", " Then go."]),
        ("Apples, pears, etc. The end.", ["Apples, pears, etc.", " The end."]),
        ("Apples, pears, etc. and more.", ["Apples, pears, etc. and more."]),
        ("It was J. R. R. Tolkien. Yes.", ["It was J. R. R. Tolkien.", " Yes."]),
        ("Well... maybe not. Hmm... The end.", ["Well... maybe not.", " Hmm...", " The end."]),
        ("Wait… what? Really?!", ["Wait… what?", " Really?!"]),
        ('He said "no." Then he left.', ['He said "no."', " Then he left."]),
        ("See No. 5 here. Or not.", ["See No. 5 here.", " Or not."]),
        ("Steps:\n1. Mix it.\n2. Bake it\nDone", ["Steps:\n", "1. Mix it.", "\n2. Bake it\n", "Done"]),
        ("No ending at all", ["No ending at all"]),
    ],
)
def test_splitter_sentences(text, want):
    assert split(text) == want
    assert split(text, tokens(text)) == want  # streamed like tokens: the same sentences


def test_splitter_emits_a_sentence_as_soon_as_it_is_complete():
    s = SentenceSplitter()
    assert s.feed("The first sentence") == []
    assert s.feed(".") == ["The first sentence."]  # no need to wait for the next token
    assert s.feed(" It costs 3") == []
    assert s.feed(".") == []  # "3." may become "3.5": wait
    assert s.feed("5 euros") == []
    assert s.feed("!") == [" It costs 3.5 euros!"]
    assert s.feed(" Dr") == [] and s.feed(".") == [] and s.feed(" Who") == []
    assert s.flush() == [" Dr. Who"]


def test_splitter_cuts_run_on_text_at_clause_breaks():
    text = ("this goes on and on without any full stop, " * 8).strip()
    parts = split(text, tokens(text))
    assert len(parts) >= 2
    assert all(len(p) <= 300 for p in parts)
    assert all(p.rstrip().endswith(",") for p in parts[:-1])  # cut after a comma, not inside a clause


def test_speakable_drops_markup_and_reads_links():
    assert speakable("**Bold** and `code`, see [the docs](https://x.org/a).") == "Bold and code , see the docs."
    assert speakable("Go to https://example.org/a/b?c=1 now") == "Go to example.org now"
    assert speakable(" --- \n") == ""
    assert speakable("\x1b[31mred\x1b[0m") == "[31mred [0m"  # control bytes gone (ESC), text kept


def test_spoken_prefix_cuts_at_words():
    s = " The quick brown fox jumps."
    assert spoken_prefix(s, 0.0) == ""
    assert spoken_prefix(s, 1.0) == s
    assert spoken_prefix(s, 0.5) == " The quick brown"
    for f in np.linspace(0, 1, 21):
        p = spoken_prefix(s, float(f))
        assert s.startswith(p) and not p.endswith(" ")
    assert len(spoken_prefix(s, 0.3)) < len(spoken_prefix(s, 0.7))


# ---- the synthesis worker process --------------------------------------------------------------------------


def test_worker_synthesizes_every_sentence_and_follows_the_rate():
    """pyttsx3 2.99's espeak driver sometimes returns before its file is written; the worker must wait."""
    from voiceassist.speech import SynthWorker

    fast, slow = SynthWorker(rate=300), SynthWorker(rate=100)
    try:
        seconds = {}
        for n in range(12):
            audio, rate = fast.synthesize(f"Sentence {n} of the test, with a few more words.")
            assert rate == 22050 and len(audio) / rate > 0.5 and np.max(np.abs(audio)) > 0.1
            seconds[n] = round(len(audio) / rate, 3)
        slow_audio, _ = slow.synthesize("Sentence 1 of the test, with a few more words.")
        # What it saw, if it fails (once seen: ratio 1.93 in a full run; not reproduced alone or under load).
        seen = (
            f"fast {seconds} s, slow {len(slow_audio) / rate:.3f} s; engines {fast.engine}/{slow.engine}, "
            f"voices {fast.voice_id!r}/{slow.voice_id!r}, restarts {fast.restarts}/{slow.restarts}"
        )
        assert fast.engine.startswith("pyttsx3") and fast.restarts == slow.restarts == 0, seen
        # Every fast sentence at the same rate (they are nearly as long as each other: one rate for the whole
        # worker), and the same sentence at a third of the rate ~2.9× as long here (3× less the fixed pauses).
        assert max(seconds.values()) < 1.15 * min(seconds.values()), seen
        assert len(slow_audio) / rate > 2.5 * seconds[1], seen
    finally:
        fast.close()
        slow.close()


_BUSY_ESPEAK_CHILD = """
import sys, wave
sys.path.insert(0, sys.argv[1])
import synth_process
from pyttsx3.drivers import _espeak

cancels = []
real_cancel = _espeak.Cancel
_espeak.Cancel = lambda: (cancels.append(1), real_cancel())[1]
_espeak.IsPlaying = lambda: 1  # espeak still busy (with the settings just queued) at every runAndWait
engine = synth_process.Pyttsx3Engine()
engine.configure(None, 300, 1.0)
for n in range(2):
    engine.synth("Sentence 1 of the test, with a few more words.", sys.argv[2])
    with wave.open(sys.argv[2]) as w:
        print(round(w.getnframes() / w.getframerate(), 3), len(cancels), flush=True)
"""


def test_a_busy_espeak_at_the_start_of_a_sentence_cancels_nothing(tmp_path):
    """pyttsx3 2.99 begins every runAndWait() with driver.stop(): when espeak says it is busy (on a loaded
    machine: still taking the rate just set; seen at the first sentence of a fresh worker), stop() calls
    espeak's Cancel, which drops the queued commands and resets the parameters to the saved ones (the likely
    cause of the 1.93× seen once in a full run: a worker whose 300 words/min was dropped speaks at pyttsx3's
    200, 2.87 × 200/300 = 1.91) and flags the new sentence for cancelling (an empty file, said again). The
    worker's engine must never cancel. espeak's busy state is forced here (real pyttsx3 and espeak otherwise);
    each sentence keeps its length at 300 words/min (~1.7 s) at the first try."""
    child = tmp_path / "busy.py"
    child.write_text(_BUSY_ESPEAK_CHILD)
    r = subprocess.run(
        [sys.executable, str(child), str(REPO / "voiceassist" / "speech"), str(tmp_path / "s.wav")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line[:1].isdigit()]
    assert len(rows) == 2 and all(cancels == "0" for _, cancels in rows), (rows, r.stderr[-1000:])
    assert all(1.4 < float(seconds) < 2.0 for seconds, _ in rows), rows
    assert "synthesizing it again" not in r.stderr, r.stderr[-1000:]


# ---- the Speaker on a real output device -------------------------------------------------------------------


def levels(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    return np.sqrt(np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1))


def loud_seconds(x: np.ndarray) -> float:
    return float(np.sum(levels(x) > LOUD)) * FRAME / 16000


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def drain(q) -> list[str]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


@pytest.fixture
def speaker(pulse):
    made: list[Speaker] = []

    def make(**kw) -> Speaker:
        sp = Speaker(TtsConfig(rate=kw.pop("rate", 300), voice=kw.pop("voice", "")), **kw)
        made.append(sp)
        assert sp.wait_ready(15), drain(sp.errors)
        return sp

    yield make
    for sp in made:
        sp.close()


REPLY = "Sure, here is the first sentence. The second sentence follows it closely. And a third one ends the reply."


@pytest.mark.pulse
def test_speech_reaches_the_output_sink_sentence_by_sentence(pulse, speaker):
    sp = speaker()
    assert sp.engine.startswith("pyttsx3")
    rec = MonitorRecorder(pulse)
    first, rest = REPLY.split(". ", 1)
    for piece in tokens(first + "."):
        sp.feed(1, piece)
    # The first sentence is heard while the rest of the reply has not even been generated.
    assert wait_for(lambda: sp.first_heard(1) is not None, 5)
    assert sp.speaking() and sp.quiet_since() is None
    for piece in tokens(" " + rest):
        sp.feed(1, piece)
    sp.end_reply(1)
    assert wait_for(lambda: not sp.speaking(), 20)
    quiet = sp.quiet_since()
    assert quiet is not None and quiet <= time.monotonic()
    time.sleep(0.2)
    audio = rec.stop()
    assert sp.spoken_text(1) == REPLY
    assert sp.stop() == REPLY  # nothing left to stop: the whole reply was spoken
    assert 1.5 < loud_seconds(audio) < 8.0, loud_seconds(audio)  # three sentences at 300 words/min
    assert np.max(np.abs(audio)) > 0.2
    assert drain(sp.errors) == []


@pytest.mark.pulse
def test_stop_silences_playback_and_returns_what_was_spoken(pulse, speaker):
    sp = speaker()
    long_reply = " ".join(f"This is sentence number {n} of a long reply." for n in range(1, 9))
    rec = MonitorRecorder(pulse)
    sp.feed(2, long_reply)
    sp.end_reply(2)
    assert wait_for(lambda: sp.first_heard(2) is not None, 5)
    time.sleep(1.5)
    t_stop = time.monotonic()
    spoken = sp.stop()
    assert wait_for(lambda: not sp.speaking(), 1.0)
    quiet = sp.quiet_since()
    time.sleep(1.0)
    audio = rec.stop()
    # What was heard: a non-empty prefix cut at a word, well short of the eight sentences.
    assert spoken and long_reply.startswith(spoken) and len(spoken) < len(long_reply) / 3
    assert spoken[-1] != " " and long_reply[len(spoken)] in " ."
    assert sp.spoken_text(2) == spoken
    assert quiet is not None and quiet - t_stop < 0.25
    # The recording: sound before the stop, and silence from shortly after it (the reply had ~15 s to go).
    stop_frame = int((t_stop - rec.t0) * 100)
    lv = levels(audio)
    assert np.sum(lv[:stop_frame] > LOUD) > 50
    assert np.all(lv[stop_frame + 25 :] < LOUD), np.flatnonzero(lv[stop_frame:] > LOUD)[:5]
    # Later text of the stopped turn is ignored; a new turn speaks again.
    sp.feed(2, " More text for the stopped turn.")
    sp.end_reply(2)
    assert not sp.speaking()
    sp.feed(3, "A new turn.")
    sp.end_reply(3)
    assert wait_for(lambda: sp.first_heard(3) is not None, 5)


@pytest.mark.pulse
def test_killed_worker_is_restarted_and_speech_goes_on(pulse, speaker):
    sp = speaker()
    sp.feed(4, "One sentence before the crash.")
    assert wait_for(lambda: sp.first_heard(4) is not None, 5)
    old = sp.worker_pid
    os.kill(old, signal.SIGKILL)
    # Killed mid-reply: the next sentences go to a new worker (started at once, or retried on the crash).
    sp.feed(4, " Two sentences after it. Here is the second.")
    sp.end_reply(4)
    assert wait_for(lambda: not sp.speaking(), 15)
    rec = MonitorRecorder(pulse)
    sp.feed(5, "And the next reply is spoken too.")
    sp.end_reply(5)
    assert wait_for(lambda: sp.first_heard(5) is not None, 5)
    assert wait_for(lambda: not sp.speaking(), 10)
    audio = rec.stop()
    assert sp.worker_pid not in (None, old)
    assert sp.restarts >= 1 or sp.worker_pid != old
    assert sp.spoken_text(4) == "One sentence before the crash. Two sentences after it. Here is the second."
    assert loud_seconds(audio) > 0.8
    assert drain(sp.errors) == []  # a crash that a restart fixed is not worth a message


@pytest.mark.pulse
def test_hung_worker_is_killed_reported_once_and_replaced(pulse, speaker):
    sp = speaker(sentence_timeout_s=1.0)
    hung = sp.worker_pid
    os.kill(hung, signal.SIGSTOP)  # a real hang: the process exists but never answers
    rec = MonitorRecorder(pulse)
    sp.feed(6, "This sentence meets a hung engine. This one gets a new engine. So does this one.")
    sp.end_reply(6)
    assert wait_for(lambda: not sp.speaking(), 15)
    time.sleep(0.1)
    audio = rec.stop()
    errors = drain(sp.errors)
    assert len(errors) == 1 and "hung" in errors[0] and "\n" not in errors[0], errors
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)  # killed and reaped
    assert sp.worker_pid not in (None, hung)
    assert loud_seconds(audio) > 1.0  # the next two sentences were spoken
    # The skipped sentence counts as passed: the spoken text stays a prefix of the reply.
    assert sp.spoken_text(6).endswith("So does this one.")


@pytest.mark.pulse
def test_lost_output_device_is_reported_once_and_speech_comes_back_with_it(pulse, speaker):
    sp = speaker()
    sp.feed(8, "This sentence is cut when the device goes away. So is this one, which never plays.")
    sp.end_reply(8)
    assert wait_for(lambda: sp.first_heard(8) is not None, 5)
    pulse.unload_sink("va_sink")  # the only sink: PulseAudio ends our stream
    # The App must not wait forever for "speaking" to end (it would ignore the microphone meanwhile).
    assert wait_for(lambda: not sp.speaking(), 5)
    errors = drain(sp.errors)
    assert len(errors) == 1 and "output device" in errors[0], errors
    pulse.load_sink("va_sink")
    pulse._run("pactl", "set-default-sink", "va_sink")
    time.sleep(1.2)  # the speaker retries the device once a second
    rec = MonitorRecorder(pulse)
    sp.feed(9, "The device is back.")
    sp.end_reply(9)
    assert wait_for(lambda: sp.first_heard(9) is not None, 10), drain(sp.errors)
    assert wait_for(lambda: not sp.speaking(), 10)
    assert loud_seconds(rec.stop()) > 0.3


@pytest.mark.pulse
def test_unknown_voice_is_reported_once_and_the_default_voice_speaks(pulse, speaker):
    sp = speaker(voice="no-such-voice-xyz")
    rec = MonitorRecorder(pulse)
    sp.feed(7, "Still speaking.")
    sp.end_reply(7)
    assert wait_for(lambda: sp.first_heard(7) is not None, 5) and wait_for(lambda: not sp.speaking(), 10)
    audio = rec.stop()
    errors = drain(sp.errors)
    assert len(errors) == 1 and "no-such-voice-xyz" in errors[0] and "default voice" in errors[0]
    assert loud_seconds(audio) > 0.3


# ---- the commands ------------------------------------------------------------------------------------------


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voiceassist", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def test_say_to_file_writes_a_valid_wav(tmp_path):
    out = tmp_path / "out.wav"
    r = cli("say", "Hello from the speech engine. A second sentence.", "--to-file", str(out), "--rate", "200")
    assert r.returncode == 0, r.stderr
    info = sf.info(str(out))
    assert info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1
    data, rate = sf.read(str(out), dtype="float32")
    assert 1.5 < len(data) / rate < 8 and np.sqrt(np.mean(data**2)) > 0.02
    # A slower rate makes longer speech: the setting reaches the engine.
    slow = tmp_path / "slow.wav"
    assert (
        cli(
            "say", "Hello from the speech engine. A second sentence.", "--to-file", str(slow), "--rate", "100"
        ).returncode
        == 0
    )
    assert sf.info(str(slow)).duration > 1.5 * info.duration


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["say", "hi", "--to-file", "/no/such/folder/x.wav"], 3, "does not exist"),
        (["say", "   "], 7, "nothing to say"),
        (["say", "hi", "--voice", "no-such-voice-xyz", "--to-file", "{tmp}/v.wav"], 7, "not found"),
        (["say", "hi", "--rate", "5"], 2, "rate"),
    ],
)
def test_say_errors_are_one_line(tmp_path, args, code, words):
    r = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("ALSA lib")]
    assert r.returncode == code and len(lines) == 1 and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())


@pytest.mark.pulse
def test_say_plays_on_the_output_device(pulse):
    rec = MonitorRecorder(pulse)
    r = cli("say", "Testing the say command.", env=pulse.env)
    time.sleep(0.1)
    audio = rec.stop()
    assert r.returncode == 0, r.stderr
    assert loud_seconds(audio) > 0.5


def test_voices_lists_espeak_voices():
    r = cli("voices")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "languages"]
    en_us = [ln for ln in lines if ln.startswith("gmw/en-us ")]
    assert en_us and "English (America)" in en_us[0] and en_us[0].rstrip().endswith("en-us")
    assert len(lines) > 50  # espeak-ng ships over a hundred voices


def test_the_worker_waits_for_a_finished_wav(tmp_path):
    """pyttsx3's espeak driver writes the sound file from its own thread (header first, with the size of the
    one block it writes, then the samples): a file that exists is not yet a sound. A sentence read too early
    came out empty and was silently not spoken (seen under load in the loopback test)."""
    import threading
    import wave

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "voiceassist" / "speech"))
    try:
        import synth_process as worker  # a script (no voiceassist imports): load it the way it runs
    finally:
        sys.path.pop(0)
    path = tmp_path / "s1.wav"
    assert worker.wav_state(str(path)) == "partial"  # not there yet
    samples = (np.sin(np.arange(22050) / 10) * 8000).astype("<i2").tobytes()
    with wave.open(str(tmp_path / "ref.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes(samples)
    header = (tmp_path / "ref.wav").read_bytes()[:44]
    path.write_bytes(header + samples[: len(samples) // 3])  # the header promises more than is there
    assert worker.wav_state(str(path)) == "partial"
    with wave.open(str(path), "wb") as w:  # a header saying 0 frames
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
    assert worker.wav_state(str(path)) == "partial"
    # Written slowly from another thread, as the driver does: once "done", every sample is readable.
    path.unlink()

    def write() -> None:
        with open(path, "wb") as f:
            f.write(header)
            f.flush()
            for k in range(0, len(samples), 4410):
                f.write(samples[k : k + 4410])
                f.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 5
    while worker.wav_state(str(path)) != "done" and time.monotonic() < deadline:
        time.sleep(0.001)
    data, rate = sf.read(path, dtype="int16")
    writer.join()
    assert rate == 22050 and len(data) == 22050
    sf.write(tmp_path / "x.flac", np.zeros(100), 16000)
    assert worker.wav_state(str(tmp_path / "x.flac")) == "other"  # another format: nothing to wait for


def test_the_worker_exits_when_the_engine_twice_writes_no_sound(tmp_path):
    """The worker's answer to an engine that writes a bare WAV header: no "ok" for an empty sound, but an
    exit (status 3) that the Speaker handles as a crash (a fresh worker says the sentence again). The engine
    here is a stand-in (a class writing header-only files), since real espeak fails this way only by chance."""
    speech_dir = Path(__file__).resolve().parents[1] / "voiceassist" / "speech"
    driver = (
        "import sys, wave\n"
        f"sys.path.insert(0, {str(speech_dir)!r})\n"
        "import synth_process as worker\n"
        "class BareHeader:\n"
        "    name = 'stand-in'\n"
        "    calls = 0\n"
        "    def synth(self, text, path):\n"
        "        BareHeader.calls += 1\n"
        "        sys.stderr.write(f'synth call {BareHeader.calls}\\n')\n"
        "        with wave.open(path, 'wb') as w:\n"
        "            w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n"
        "worker.make_engine = BareHeader\n"
        "sys.exit(worker.main())\n"
    )
    request = json.dumps({"cmd": "synth", "text": "Hello.", "path": str(tmp_path / "s1.wav")}) + "\n"
    proc = subprocess.run([sys.executable, "-c", driver], input=request, capture_output=True, text=True, timeout=60)
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert lines == [{"ready": True, "engine": "stand-in"}]  # no answer to the request: the caller sees a crash
    assert "sound file is unfinished (44 bytes); exiting for a fresh worker" in proc.stderr
