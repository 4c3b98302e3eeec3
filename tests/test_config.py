"""Configuration: the shipped file equals the defaults; every kind of bad input gets one clear line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from voiceassist import config as cfg
from voiceassist.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_defaults_and_documents_every_key():
    text = (ROOT / "config.toml").read_text()
    assert cfg.from_dict(tomllib.loads(text), "config.toml") == cfg.Config()
    assert text.strip() == cfg.to_toml().strip(), "regenerate config.toml with voiceassist.config.to_toml()"


def test_load_uses_xdg_file_then_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cfg.load() == cfg.Config()
    (tmp_path / "voiceassist").mkdir()
    (tmp_path / "voiceassist" / "config.toml").write_text("[vad]\nhangover_ms = 450\n")
    assert cfg.load().vad.hangover_ms == 450


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[vad]\nhangover_ms = 99999\n", "hangover_ms = 99999 is not allowed; use an integer from 100 to 5000 ms"),
        ("[vad]\nhangover_ms = 'long'\n", "hangover_ms = 'long' is not allowed; use an integer"),
        ("[vad]\nhang_over = 3\n", "unknown key 'hang_over'; known keys:"),
        ("[vda]\nx = 1\n", "unknown section [vda]; known sections:"),
        ("[model]\ndtype = 'int3'\n", "dtype = 'int3' is not allowed; use one of 'auto', 'float32'"),
        ("[tts]\nenabled = 1\n", "enabled = 1 is not allowed; use a boolean (true or false)"),
        ("[vad]\nhangover_ms = \n", "is not valid TOML"),
        ("vad = 3\n", "[vad]: must be a table of settings"),
    ],
)
def test_bad_config_gives_one_line(tmp_path, text, expected):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        cfg.load(p)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_float_accepts_integer_and_overrides_validate():
    c = cfg.from_dict({"generation": {"temperature": 1}})
    assert c.generation.temperature == 1.0 and isinstance(c.generation.temperature, float)
    c2 = cfg.with_overrides(c, {"model.name": "tiny", "generation.top_p": None})
    assert c2.model.name == "tiny" and c2.generation.top_p == c.generation.top_p
    with pytest.raises(ConfigError, match="--temperature: temperature = 9.0 is not allowed"):
        cfg.with_overrides(c, {"generation.temperature": 9.0})


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config", "/nonexistent/x.toml", "devices"], "does not exist"),
    ],
)
def test_cli_bad_config_exit_2(args, expected, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nblock_ms = 0\n")
    for argv, want in ((args[2:] + args[:2], expected), (["devices", "--config", str(bad)], "block_ms = 0")):
        proc = subprocess.run([sys.executable, "-m", "voiceassist", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert want in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
