"""The bookkeeping every on-policy trainer (PPO, RLOO, GRPO, online DPO) does around its updates, once: after an
update (monitor check, checkpoint, kill point, progress bar), at the end (the adapter, the monitor's rows, the
metrics) and the summary's first-vs-last-quarter means."""

from __future__ import annotations

from openrlaif.core.faults import kill_point
from openrlaif.core.progress import advance
from openrlaif.core.store import RunStore


def after_update(step: int, model, monitor, checkpoint, accelerator, bar, progress: dict, elapsed: float,
                 **state) -> bool:
    """Update ``step`` (1-based) is done: the over-optimisation monitor checks when due, the checkpoint saves when
    due (with ``state``: what the trainer needs to resume), a crash test may kill the process here, a SIGTERM or
    SIGINT received meanwhile checkpoints and stops (``core.preempt``), the bar moves. Returns True when the
    monitor asks training to stop."""
    monitor.check(step, model, accelerator.is_main_process)
    saved = checkpoint.maybe_save(step, seconds=elapsed, monitor=monitor.state.to_dict(), **state)
    kill_point("train.step")
    checkpoint.stop_if_preempted(step, saved, seconds=elapsed, monitor=monitor.state.to_dict(), **state)
    advance(bar, 1, (step - progress["step"]) / max(elapsed - progress["seconds"], 1e-9), "steps")
    return monitor.should_stop()


def finish(model, tok, store: RunStore, k: int, monitor, checkpoint, accelerator, metrics: list[dict]) -> None:
    """Training is over: the main process saves the adapter to round_K/policy (the monitor's best with
    monitor.final_policy=best) and appends the metrics; every process then drops the checkpoint."""
    from openrlaif.models.policy import save_adapter

    if accelerator.is_main_process:
        save_adapter(model, tok, store.path("policy", k))
        monitor.finish(accelerator.is_main_process)
        store.append_metrics(metrics + monitor.rows())
    accelerator.wait_for_everyone()
    checkpoint.clear()


def quarter_means(metrics: list[dict], key: str) -> tuple[float, float]:
    """Mean of ``key`` over the first and the last quarter of the updates (at least one each)."""
    quarter = max(1, len(metrics) // 4)
    first, last = metrics[:quarter], metrics[-quarter:]
    return (round(sum(m[key] for m in first) / len(first), 4), round(sum(m[key] for m in last) / len(last), 4))
