"""Full duplex (#12): the barge-in decided on double talk, from the VAD's frame verdicts on AEC3's output.

Real parts offline: the reply's echo through the test room (60 ms, RT60 0.45 s, the echo as loud as the user),
the user's speech added, the real EchoCanceller (AEC3 + noise suppression, as ``echo_cancel = "on"`` runs it)
with the reply as its far end, the real Segmenter, the real FullDuplexPolicy. Only the playback timeline is a
fake (``AlwaysSpeaking``): the reply plays throughout, with no Speaker to say so.

In double talk AEC3 suppresses whatever of the user is quieter than the echo, so the segmenter's start trigger
fires 1-1.6 s after the user's onset (measured here, and 1.58-1.84 s in tests/test_duplex_app.py before).
"""

from __future__ import annotations

import numpy as np
import pytest
from support.audio_scenes import phrase
from support.echo_path import RoomSpec, echo_of
from support.playback import AlwaysSpeaking
from support.speech import SR

from voiceassist.audio.echo import EchoCanceller
from voiceassist.audio.farend import ArrayReference
from voiceassist.config import Config
from voiceassist.events import AudioBlock
from voiceassist.pipeline.duplex import FullDuplexPolicy
from voiceassist.vad import Segmenter

pytest.importorskip("pywebrtc_audio")

USER_AT_S = 9.0  # the canceller has converged by then
BARGE_IN_S = 0.5  # tts.barge_in_ms
REPLY = (
    "Once upon a time there was a little village by the sea, where fishermen lived with their families.",
    "Every morning they went out on their boats and came back in the evening with fish for the market.",
    "One day a storm came from the north and the sea rose higher than anyone could remember.",
)


@pytest.fixture(scope="module")
def reply() -> np.ndarray:
    return np.concatenate([phrase(t, speed=150) for t in REPLY])


def barge_ins(reply: np.ndarray, user: np.ndarray | None) -> list[float]:
    """Capture-clock times (s) the policy barges in, the user (if any) talking from USER_AT_S."""
    mic = echo_of(reply, RoomSpec(delay_ms=60, rt60_s=0.45))
    if user is not None:
        at = int(USER_AT_S * SR)
        mic[at : at + len(user)] += user
    aec = EchoCanceller(ArrayReference(reply, 0.0), noise_suppression=True)
    cfg = Config().vad
    seg = Segmenter(cfg)
    policy = FullDuplexPolicy(
        AlwaysSpeaking(),
        lambda: aec.state().convergence == "converged",
        enabled=True,
        tail_s=0.5,
        barge_in=False,
        barge_in_s=BARGE_IN_S,
    )
    out = []
    block = SR // 50  # the capture stage's 20 ms blocks
    for i in range(0, len(mic) - block, block):
        processed = aec.process(AudioBlock(mic[i : i + block], i / SR))
        seg.set_echo_active(aec.echo_active)
        seg.feed(processed)
        for t, speech in seg.frames:
            if policy.double_talk(t, speech, cfg.frame_ms / 1000):
                out.append((i + block) / SR)
    return out


@pytest.mark.parametrize("text", ["Stop please, I have another question.", "Wait, tell me about the weather instead."])
def test_talking_over_the_reply_barges_in_within_barge_in_ms_and_a_bit(reply, text):
    got = barge_ins(reply, phrase(text))
    print(text, "barge-ins at", got)
    assert got and all(t >= USER_AT_S for t in got), got
    # + 0.3: leaked echo no longer starts or extends a double talk (pipeline/duplex.py), which costs a real
    # barge-in ~50 ms (0.66 and 0.72 s before, 0.66 and 0.78 s after)
    assert BARGE_IN_S <= got[0] - USER_AT_S <= BARGE_IN_S + 0.3, got


@pytest.mark.parametrize("text", [None, "Yeah.", "Uh-huh."])
def test_the_reply_alone_or_a_backchannel_never_barges_in(reply, text):
    got = barge_ins(reply, None if text is None else phrase(text))
    print(text, "barge-ins at", got)
    assert got == []
