"""The kiosk soak (scripts/soak.py) for 2 minutes: tiny model, real PulseAudio device, espeak questions looped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.pulse
def test_kiosk_soak_two_minutes(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--minutes", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    result = json.loads(out.read_text())
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-2000:]}\n{json.dumps(result['checks'])}"
    assert result["passed"] and result["utterances"] >= 0.8 * result["questions_played"]
