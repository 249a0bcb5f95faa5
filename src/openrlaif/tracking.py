"""Experiment tracking: metrics.jsonl always; TensorBoard by default; Weights & Biases and MLflow when configured.

The run directory's ``metrics.jsonl`` is the record. When a stage finishes, the rows it added are sent to
every configured tracker (scalars named ``round_K/<stage>/<metric>`` at the row's step), and after each eval
its side-by-side samples go out as a table. A resumed run continues the same W&B / MLflow run (their ids
are kept in the manifest), and rows are sent once: the manifest remembers how many were published.
"""

from __future__ import annotations

import atexit
import hashlib
import math
from pathlib import Path
from typing import Any, Protocol

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, read_jsonl

SKIP = {"stage", "round", "event", "step", "epoch"}


class Tracker(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def scalar_rows(rows: list[dict], start_index: int = 0) -> list[tuple[dict[str, float], int]]:
    """metrics.jsonl rows -> ({"round_K/stage/metric": value}, step): numeric fields only, flattened one level
    (e.g. ``monitor: {alarm_step}``). A row without ``step`` takes its index in the file (a stage's summary)."""
    out = []
    for i, row in enumerate(rows):
        prefix = f"round_{row.get('round', 1)}/{row.get('stage', 'run')}"
        values: dict[str, float] = {}
        for key, value in row.items():
            if key in SKIP:
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, v in items:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    continue
                values[f"{prefix}/{key}" + (f".{sub}" if sub else "")] = float(v)
        if values:
            step = row.get("step")
            out.append((values, int(step) if isinstance(step, (int, float)) else start_index + i))
    return out


class TensorBoardTracker:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(logdir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        def cell(v) -> str:
            return str(v).replace("|", "\\|").replace("\n", " ")[:500]

        md = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        md += "".join("| " + " | ".join(cell(v) for v in r) + " |\n" for r in rows)
        self.writer.add_text(name, md, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    def __init__(self, cfg: RunConfig, store: RunStore, run_id: str):
        import wandb  # present: check_trackers ran before the run started
        wc = cfg.tracking.wandb
        self.wandb = wandb
        self.run = wandb.init(project=wc.project, entity=wc.entity, mode=wc.mode, id=run_id, resume="allow",
                              name=cfg.name, dir=str(store.root), config=cfg.model_dump(mode="json"),
                              settings=wandb.Settings(silent=True, console="off"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values | {"trainer/step": step})

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=[[str(v) for v in r] for r in rows])})

    def flush(self) -> None:
        pass  # W&B writes in the background; finish() at close waits for it

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, cfg: RunConfig, store: RunStore, run_id: str | None):
        import mlflow
        mc = cfg.tracking.mlflow
        self.mlflow = mlflow
        local = mc.tracking_uri is None  # a SQLite store and artifacts inside the run directory
        mlflow.set_tracking_uri(f"sqlite:///{(store.root / 'mlflow.db').resolve()}" if local else mc.tracking_uri)
        experiment = mlflow.get_experiment_by_name(mc.experiment)
        if experiment is None:
            location = (store.root / "mlartifacts").resolve().as_uri() if local else None
            mlflow.create_experiment(mc.experiment, artifact_location=location)
            experiment = mlflow.get_experiment_by_name(mc.experiment)
        if run_id is None:
            self.run = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=cfg.name)
            flat = {f"{section}.{k}": v for section, fields in cfg.model_dump(mode="json").items()
                    if isinstance(fields, dict) for k, v in fields.items() if not isinstance(v, (dict, list))}
            mlflow.log_params({k: str(v)[:500] for k, v in list(flat.items())[:100]})
        else:
            self.run = mlflow.start_run(run_id=run_id)
        self.run_id = self.run.info.run_id

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.mlflow.log_dict({"columns": columns, "data": [[str(v) for v in r] for r in rows]}, f"{name}.json")

    def flush(self) -> None:
        pass  # every MLflow call is written when it returns

    def close(self) -> None:
        self.mlflow.end_run()


def check_trackers(cfg: RunConfig) -> None:
    """Fail before a run starts when a configured tracker's package is missing."""
    import importlib.util

    needs = [("tensorboard", cfg.tracking.tensorboard, "pip install tensorboard (or tracking.tensorboard=false)"),
             ("wandb", cfg.tracking.wandb is not None, "pip install 'openrlaif[tracking]' (or remove tracking.wandb)"),
             ("mlflow", cfg.tracking.mlflow is not None, "pip install 'openrlaif[tracking]' (or remove tracking.mlflow)")]
    for module, wanted, fix in needs:
        if wanted and importlib.util.find_spec(module) is None:
            raise UserError(f"tracking.{module}: the {module} package is not installed; {fix}")


def tracker_names(cfg: RunConfig) -> list[str]:
    tc = cfg.tracking
    return [name for name, on in (("tensorboard", tc.tensorboard), ("wandb", tc.wandb is not None),
                                  ("mlflow", tc.mlflow is not None)) if on]


_OPEN: dict[tuple[str, str], Any] = {}  # trackers stay open for the life of the process (one W&B run, one writer)


def close_all() -> None:
    """Close every open tracker (end of `rlaif run` or of a stage command; also at interpreter exit)."""
    while _OPEN:
        _, tracker = _OPEN.popitem()
        try:
            tracker.close()
        except Exception:  # closing a dashboard must never fail a finished run
            pass


atexit.register(close_all)


def open_tracker(name: str, cfg: RunConfig, store: RunStore):
    """The tracker ``name`` for this run directory, opened once per process. W&B and MLflow run ids are
    created once per run directory and kept in the manifest, so a resumed run continues the same run."""
    key = (name, str(store.root.resolve()))
    if key not in _OPEN:
        _OPEN[key] = _new_tracker(name, cfg, store)
    return _OPEN[key]


def _new_tracker(name: str, cfg: RunConfig, store: RunStore):
    ids = store.read_manifest().get("tracking", {})
    if name == "tensorboard":
        return TensorBoardTracker(store.root / "tensorboard")
    if name == "wandb":
        run_id = ids.get("wandb_run_id") or hashlib.sha256(str(store.root.resolve()).encode()).hexdigest()[:12]
        tracker = WandbTracker(cfg, store, run_id)
        _remember(store, wandb_run_id=run_id)
        return tracker
    tracker = MlflowTracker(cfg, store, ids.get("mlflow_run_id"))
    _remember(store, mlflow_run_id=tracker.run_id)
    return tracker


def _remember(store: RunStore, **fields) -> None:
    store.update_manifest(tracking=store.read_manifest().get("tracking", {}) | fields)


def publish(cfg: RunConfig, store: RunStore, samples_of_round: int | None = None) -> dict[str, int]:
    """Send each tracker the metrics rows it has not had yet (and, after an eval, that round's samples).
    A tracker that fails is reported and retried after the next stage; the others go on. Returns rows sent
    per tracker."""
    from openrlaif.core.progress import console

    rows = read_jsonl(store.metrics_path) if store.metrics_path.is_file() else []
    sent: dict[str, int] = {}
    for name in tracker_names(cfg):
        done = store.read_manifest().get("tracking", {}).get("published_rows", {}).get(name, 0)
        new = rows[done:]
        if not new and samples_of_round is None:
            sent[name] = 0
            continue
        try:
            tracker = open_tracker(name, cfg, store)
            for values, step in scalar_rows(new, done):
                tracker.scalars(values, step)
            if samples_of_round is not None:
                columns, table = sample_table(store, samples_of_round)
                if table:
                    tracker.table(f"round_{samples_of_round}/eval/samples", columns, table, samples_of_round)
            tracker.flush()
        except UserError:
            raise
        except Exception as err:  # dashboards are a convenience: never lose the stage over one
            console.print(f"[yellow]tracking: {name} failed ({type(err).__name__}: {str(err)[:300]}); the rows stay in "
                          f"{store.metrics_path} and are sent after the next stage[/yellow]")
            continue
        published = store.read_manifest().get("tracking", {}).get("published_rows", {})
        _remember(store, published_rows=published | {name: len(rows)})
        sent[name] = len(new)
    return sent


def sample_table(store: RunStore, k: int, limit: int = 32) -> tuple[list[str], list[list[Any]]]:
    path = store.path("samples.jsonl", k)
    if not path.is_file():
        return [], []
    columns = ["set", "prompt", "trained", "start", "principle", "p_trained_better"]
    rows = [[r.get(c) for c in columns] for r in read_jsonl(path)[:limit]]
    return columns, rows


def read_tensorboard(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars in a TensorBoard log directory: {tag: [(step, value), ...]} (for tests and quick looks)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(logdir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out

