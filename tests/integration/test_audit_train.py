"""The audit desk end to end without a browser: `rlaif audit` as a real process over real HTTP, and the
people's verdicts changing what `train` learns from."""

import json
import os
import subprocess
import sys
import time

import httpx
from browser import free_port
from conftest import labelled_run, tiny_overrides

from openrlaif.audit.queue import pair_id
from openrlaif.config import load_config
from openrlaif.pipeline import run_stage


def test_verdicts_override_the_ai_labels_when_train_runs(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    store, rows, db = labelled_run(cfg, tmp_path / "run")
    assert len(rows) >= 3
    db.record(pair_id(rows[0]), "flip", note="the other one is right")
    db.record(pair_id(rows[1]), "flag")
    for row in rows[2:]:
        db.record(pair_id(row), "agree")
    db.close()
    summary = run_stage("train", cfg, store)
    assert summary["human_verdicts"] == {"agree": len(rows) - 2, "flip": 1, "flag": 1, "disputed": 0}
    assert summary["pairs"] == len(rows) - 1
    # The reward model is scored against people on the held-out pairs that carry a verdict (here: all).
    rm = run_stage("reward", cfg, store)
    assert rm["human_verdicts"] == summary["human_verdicts"] and rm["heldout_pairs"] >= 1
    assert rm["heldout_human_pairs"] == rm["heldout_pairs"] and 0 <= rm["heldout_human_accuracy"] <= 1
    from openrlaif.report import write_report

    report = write_report(store)
    assert "## Human audit" in report and f"{len(rows)} of " in report and "1 flagged" in report


def test_rlaif_audit_serves_the_queue_on_loopback(tmp_path):
    run = tmp_path / "run"
    (run / "round_1").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    row = {"prompt": "Is the sky blue?", "chosen": "Yes, on a clear day.", "rejected": "No.", "p_chosen": 0.7,
           "principle": "honesty", "source": "ai", "round": 1}
    (run / "round_1" / "preferences.jsonl").write_text(json.dumps(row) + "\n")
    port = free_port()
    env = dict(os.environ, AUDIT_TOKEN="tok-123", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "openrlaif.cli", "audit", str(run), "--port", str(port),
                             "--token-env", "AUDIT_TOKEN"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/stats", headers={"Authorization": "Bearer tok-123"})
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["queued"] == 1
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
        assert (run / "audit.sqlite").is_file()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/?token=tok-123" in out


def test_rlaif_audit_on_a_run_without_labels_is_one_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "openrlaif.cli", "audit", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "rlaif label" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
