"""Tracking on a real tiny run: TensorBoard by default, W&B in offline mode, MLflow on a local SQLite store.
Each backend is read back and must hold the same numbers as metrics.jsonl, and the eval samples table."""

import json

import pytest

from conftest import tiny_overrides
from openrlaif import pipeline
from openrlaif.config import load_config
from openrlaif.core.store import read_jsonl
from openrlaif.tracking import read_tensorboard, scalar_rows


def test_scalar_rows_flatten_numbers_only():
    rows = [{"stage": "train", "round": 2, "step": 3, "loss": 0.5, "name": "x", "ok": True, "nan": float("nan"),
             "monitor": {"alarm_step": 4, "note": "y"}},
            {"stage": "eval", "round": 1, "event": "done", "win_rate": 0.75}]
    assert scalar_rows(rows, 10) == [({"round_2/train/loss": 0.5, "round_2/train/monitor.alarm_step": 4.0}, 3),
                                     ({"round_1/eval/win_rate": 0.75}, 11)]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    import os

    out = tmp_path_factory.mktemp("tracking") / "run"
    os.environ["WANDB_SILENT"] = "true"
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "tracking.wandb={project: openrlaif-test, mode: offline}", "tracking.mlflow={experiment: tiny}"])
    pipeline.run(cfg, out)
    return cfg, out


def expected(out):
    return {tag: value for values, _ in scalar_rows(read_jsonl(out / "metrics.jsonl")) for tag, value in values.items()}


def test_tensorboard_holds_the_metrics(tracked_run):
    _, out = tracked_run
    tb = read_tensorboard(out / "tensorboard")
    want = expected(out)
    assert "round_1/train/loss" in tb and "round_1/eval/win_rate" in tb
    train_rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("stage") == "train" and "loss" in r]
    assert [(s, pytest.approx(v, abs=1e-6)) for s, v in tb["round_1/train/loss"]] == \
        [(r["step"], pytest.approx(r["loss"], abs=1e-6)) for r in train_rows]
    assert tb["round_1/eval/win_rate"][-1][1] == pytest.approx(want["round_1/eval/win_rate"])
    # the eval samples as a text table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    texts = []
    for events in (out / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("tensors", []):
            texts += [tag for _ in acc.Tensors(tag)]
    assert any("round_1/eval/samples" in t for t in texts)


def test_mlflow_holds_the_metrics(tracked_run):
    from mlflow.tracking import MlflowClient

    _, out = tracked_run
    manifest = json.loads((out / "manifest.json").read_text())
    run_id = manifest["tracking"]["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    history = client.get_metric_history(run_id, "round_1.train.loss")
    train_rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("stage") == "train" and "loss" in r]
    assert sorted((m.step, round(m.value, 6)) for m in history) == sorted((r["step"], round(r["loss"], 6)) for r in train_rows)
    win = client.get_metric_history(run_id, "round_1.eval.win_rate")
    assert win[-1].value == pytest.approx(expected(out)["round_1/eval/win_rate"])
    run = client.get_run(run_id)
    assert run.data.params["train.beta"] == "0.1"
    artifacts = [a.path for a in client.list_artifacts(run_id, "round_1/eval")]
    assert "round_1/eval/samples.json" in artifacts


def test_wandb_offline_run(tracked_run):
    _, out = tracked_run
    manifest = json.loads((out / "manifest.json").read_text())
    run_id = manifest["tracking"]["wandb_run_id"]
    runs = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs, list((out / "wandb").iterdir())
    data = b"".join(f.read_bytes() for r in runs for f in r.glob("*.wandb"))
    for tag in (b"round_1/train/loss", b"round_1/eval/win_rate", b"round_1/eval/samples"):
        assert tag in data, tag
    n = len(read_jsonl(out / "metrics.jsonl"))
    assert manifest["tracking"]["published_rows"] == {"tensorboard": n, "wandb": n, "mlflow": n}


def test_publish_sends_each_row_once(tracked_run):
    from openrlaif.core.store import RunStore
    from openrlaif.tracking import publish

    cfg, out = tracked_run
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"wandb": None, "mlflow": None})})
    assert publish(cfg, RunStore(out)) == {"tensorboard": 0}  # everything was sent when the stages finished


def test_extending_the_run_continues_the_same_tracking_runs(tracked_run):
    """Run last: a second `run` on the directory (here: one more round) logs into the same MLflow run and the
    same W&B run id, and TensorBoard gets round 2's rows once."""
    from mlflow.tracking import MlflowClient

    cfg, out = tracked_run
    before = json.loads((out / "manifest.json").read_text())["tracking"]
    pipeline.run(cfg, out, rounds=2)
    after = json.loads((out / "manifest.json").read_text())["tracking"]
    assert after["mlflow_run_id"] == before["mlflow_run_id"] and after["wandb_run_id"] == before["wandb_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    assert client.get_metric_history(after["mlflow_run_id"], "round_2.train.loss")
    assert client.get_metric_history(after["mlflow_run_id"], "round_1.train.loss")
    tb = read_tensorboard(out / "tensorboard")
    steps = [s for s, _ in tb["round_1/train/loss"]]
    assert len(steps) == len(set(steps))  # round 1 was not sent twice
    assert "round_2/eval/win_rate" in tb
