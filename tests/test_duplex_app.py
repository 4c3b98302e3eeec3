"""Full duplex over an open loudspeaker (#12): the App with echo cancellation, real devices, the room process.

The Speaker plays into ``va_sink``; the room process (tests/support/room.py: loudspeaker clipping, 60 ms by the
devices' clocks, RT60 0.45 s, the echo as loud as the user) plays it, and the user's speech, into ``va_mic``,
whose monitor is the microphone. The tiny random-weight Qwen2-Audio answers (noise text, spoken anyway by espeak-ng).

- Its own voice never becomes a turn and never barges in (the canceller removes it).
- The user talking over a reply stops it (barge-in without a headset): only the heard part stays, and what the
  user said is the next turn.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
from support.app_devices import collect, make_speaker, tiny_config
from support.speech import silence, speech_16k

from voiceassist.app import App
from voiceassist.audio.sources import MicrophoneSource
from voiceassist.config import Config
from voiceassist.openers import open_backend

pytest.importorskip("pywebrtc_audio")
pytestmark = [pytest.mark.pulse, pytest.mark.slow]
SR = 16000


def config(**overrides) -> Config:
    return tiny_config(
        {
            "generation.max_new_tokens": 300,
            "tts.enabled": True,
            "tts.rate": 150,
            "audio.echo_cancel": "on",
            "audio.full_duplex": True,
        },
        **overrides,
    )


@pytest.fixture(scope="module")
def session():
    return open_backend(config())


def describe(evs: list) -> list:
    return [
        (round(e.t, 2), e.kind, getattr(e, "turn", ""), getattr(e, "state", ""), getattr(e, "message", ""))
        for e in evs
        if e.kind not in ("token",)
    ]


@pytest.mark.xfail(
    reason="not reliable yet (#12): with the double-talk barge-in (pipeline/duplex.py) 4 of 5 runs under the exclusive "
    "lock pass, one confirmed 1.25 s after the onset (limit 0.85 s): AEC3's suppressor leaves the user's speech in "
    "bursts of 60-120 ms with gaps up to 0.5 s, so speech spanning barge_in_ms shows late (before it: 1.58-1.84 s in "
    "6 of 6 runs)",
    strict=False,
)
def test_over_an_open_loudspeaker_the_reply_is_not_a_turn_and_the_user_barges_in(room, session, tmp_path):
    cfg = config()
    session.reset()
    session.generation = cfg.generation
    speaker = make_speaker(cfg)
    app = App(cfg, MicrophoneSource(None), session, speaker=speaker)
    assert app.echo_canceller is not None and app.echo_canceller.reference is not None
    wav = tmp_path / "barge.wav"
    sf.write(wav, np.concatenate([speech_16k("Stop please, I have another question.", tmp_path), silence(0.3)]), SR)
    app.start()
    try:
        app.submit_text("Tell me a long story.")
        # The reply plays through the room into the microphone; the canceller converges on it.
        evs = collect(app, 60, lambda e: speaker.first_heard(1) is not None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            speaker.speaking() and time.monotonic() - (speaker.first_heard(1) or 1e18) > 7.0
        ):
            evs += collect(app, 0.05)
        assert speaker.speaking(), f"the reply ended before the user could talk over it: {describe(evs)}"
        state = app.echo_state()
        assert state is not None and state["convergence"] == "converged", state
        # Seven seconds of the assistant's voice in the microphone: no turn, no barge-in.
        heard = [e for e in evs if (e.kind == "utterance" and e.durations) or e.kind == "interrupted"]
        assert not heard, describe(evs)
        said_at = room.say(wav)  # the user talks over the reply
        evs += collect(app, 20, lambda e: any(x.kind == "interrupted" for x in e))
        evs += collect(app, 40, lambda e: any(x.kind == "utterance" and x.turn == 2 for x in e))
    finally:
        app.stop()
    inter = [e for e in evs if e.kind == "interrupted"]
    print(describe(evs), app.echo_state(), "confirmed", [round(e.t - said_at, 3) for e in inter], "s after onset")
    assert len(inter) == 1 and inter[0].reason == "barge_in" and inter[0].turn == 1, describe(evs)
    confirm_s = inter[0].t - said_at
    assert 0.3 <= confirm_s <= cfg.tts.barge_in_ms / 1000 + 0.2 + 0.15, confirm_s  # + the room's own delay
    kept = inter[0].kept_text
    assert kept == speaker.spoken_text(1) and app.history()[0]["interrupted"] and app.history()[0]["reply"] == kept
    utt2 = next(e for e in evs if e.kind == "utterance" and e.turn == 2)
    assert len(utt2.durations) == 1 and 1.0 < utt2.durations[0] < 5.0  # the user's words are the next turn
