"""The status ladder and its tracker: pure functions of the stages' flags (no threads, no devices)."""

from __future__ import annotations

from voiceassist.events import AssistantState as S
from voiceassist.pipeline.state import StateFlags, StateTracker, ladder


def test_the_first_rung_that_matches_wins():
    everything = StateFlags(
        muted=True, device_lost=True, recording_s=1.25, hearing=True, busy=True, pending=2, speaking=True
    )
    assert ladder(everything) == (S.MUTED, "")
    assert ladder(StateFlags(device_lost=True, recording_s=1.0, hearing=True, busy=True)) == (S.DEVICE_LOST, "")
    assert ladder(StateFlags(recording_s=1.25, hearing=True, busy=True)) == (S.RECORDING, "1.2 s")
    assert ladder(StateFlags(hearing=True, busy=True, speaking=True)) == (S.HEARING, "")
    assert ladder(StateFlags(busy=True, speaking=True)) == (S.THINKING, "")
    assert ladder(StateFlags(pending=1, speaking=True)) == (S.THINKING, "")  # handed over, not yet taken
    assert ladder(StateFlags(speaking=True)) == (S.SPEAKING, "")
    assert ladder(StateFlags()) == (S.LISTENING, "")


def test_the_tracker_emits_changes_and_notes_but_never_a_bare_repeat():
    tr = StateTracker()
    assert tr.update(StateFlags()) == (S.LISTENING, "")
    assert tr.update(StateFlags()) is None  # unchanged
    assert tr.update(StateFlags(), detail="new conversation") == (S.LISTENING, "new conversation")
    assert tr.update(StateFlags(), detail="new conversation") is None  # the same note again: nothing new
    assert tr.update(StateFlags(), detail="new conversation", force=True) == (S.LISTENING, "new conversation")
    assert tr.update(StateFlags(busy=True)) == (S.THINKING, "")
    assert tr.update(StateFlags(busy=True, pending=3)) is None  # still thinking


def test_a_recording_reports_its_length_as_it_grows():
    tr = StateTracker()
    assert tr.update(StateFlags(recording_s=0.0)) == (S.RECORDING, "0.0 s")
    assert tr.update(StateFlags(recording_s=0.5)) == (S.RECORDING, "0.5 s")
    assert tr.update(StateFlags(recording_s=0.5)) is None
    assert tr.update(StateFlags(recording_s=0.5), detail="ignored: the length is the detail") is None
    assert tr.update(StateFlags()) == (S.LISTENING, "")


def test_states_are_their_json_strings():
    assert S.DEVICE_LOST == "device_lost" and f"{S.THINKING}" == "thinking"
    from voiceassist.events import Status

    assert Status(S.SPEAKING, t=1.0).to_json() == {"type": "status", "t": 1.0, "state": "speaking", "detail": ""}


def test_waiting_for_the_wake_word_is_the_idle_rung_when_a_wake_word_is_set():
    # Only when nothing else is going on: hearing, thinking and speaking all outrank it.
    assert ladder(StateFlags(waiting_for_wake=True)) == (S.WAITING_FOR_WAKE, "")
    assert ladder(StateFlags(waiting_for_wake=True, speaking=True)) == (S.SPEAKING, "")
    assert ladder(StateFlags(waiting_for_wake=True, busy=True)) == (S.THINKING, "")
    assert ladder(StateFlags(waiting_for_wake=True, hearing=True)) == (S.HEARING, "")
    assert ladder(StateFlags(waiting_for_wake=True, muted=True)) == (S.MUTED, "")
    assert S.WAITING_FOR_WAKE == "waiting_for_wake"
