"""The one training stack: torch + accelerate, shared by DPO, PPO, RLOO and the reward model.

The same code runs in one CPU process and under ``accelerate launch`` (DDP, FSDP or DeepSpeed; example
configs in ``configs/accelerate/``). Each optimizer step's batch is the *global* batch
(``split_batches``): every process takes its slice, gradients are averaged by the wrapped model, so one
process with batch 4 and two processes with 2 each take the same step. Checkpoints are accelerate's own
state (model, optimizer, scheduler, RNG of every process) plus our step counter, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from openrlaif.config import TrainConfig
from openrlaif.core.errors import UserError


def config_fingerprint(cfg) -> str:
    """A checkpoint belongs to one resolved config."""
    import hashlib

    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a launched job (no distributed init needed)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolved_mixed_precision(choice: str) -> str:
    """train.mixed_precision with 'auto' decided: bf16 where this machine computes it natively, else 'no'."""
    if choice != "auto":
        return choice
    from openrlaif.models.loading import native_bf16

    return "bf16" if native_bf16() else "no"


def make_accelerator(tc: TrainConfig):
    """Gradient accumulation is ours (``accumulate``), so the accelerator steps on every optimizer call."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    # accelerate keeps one state per process and refuses a second Accelerator with other settings (e.g. a
    # notebook or a test that trains twice with different mixed_precision): start each stage afresh. The
    # process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=resolved_mixed_precision(tc.mixed_precision),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        step_scheduler_with_optimizer=True,
    )
    end_process_group_at_exit()
    return accelerator


_EXIT_HOOK = {"registered": False}


def end_process_group_at_exit() -> None:
    """When this process belongs to a process group (``accelerate launch``, ``torchrun``), destroy the group at
    interpreter exit, while Python is still whole. Left to the interpreter's teardown, gloo's worker threads can
    outlive it and the process aborts (SIGABRT, "terminate called without an active exception") after its work
    is done and written. Registered once; a no-op in a single process or when the group is already gone."""
    import atexit

    import torch.distributed as dist

    if _EXIT_HOOK["registered"] or not (dist.is_available() and dist.is_initialized()):
        return

    def destroy() -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(destroy)
    _EXIT_HOOK["registered"] = True


def cast_frozen_once_for(accelerator, model) -> None:
    """Under bf16 autocast in one process, ``model``'s frozen weights (a LoRA policy's base, its reference pass)
    cast to bf16 once instead of at every forward (``models.loading.cast_frozen_once``; the same numbers).
    Sharded engines (DeepSpeed, FSDP) and multi-process runs manage their own parameters and are left alone."""
    from accelerate.utils import DistributedType

    from openrlaif.models.loading import cast_frozen_once

    if accelerator.mixed_precision == "bf16" and accelerator.distributed_type == DistributedType.NO:
        cast_frozen_once(model, "bfloat16")


def prepare(accelerator, model, *objects):
    """``accelerator.prepare(*objects)`` for a training stage whose trainable model is (or wraps) ``model``, after
    ``model``'s frozen weights got their one bf16 cast (``cast_frozen_once_for``): every stage prepares through
    here, so none can forget it. Returns what ``accelerator.prepare`` returns."""
    cast_frozen_once_for(accelerator, model)
    return accelerator.prepare(*objects)


def adamw(accelerator, params, lr: float):
    """AdamW without weight decay over a stage's trainable parameters. On a CPU (one process or several) it runs
    torch's fused kernel, which steps every parameter in one pass: the embedded model's LoRA r16 adapter on every
    linear layer (420 tensors) took 22 ms a step with the default loop and 5-6 ms fused (docs/benchmarks.md,
    session 39). Elsewhere it is torch's default, the path the GPU engines (DeepSpeed, FSDP) were written against."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True if accelerator.device.type == "cpu" else None)


def items_per_step(accelerator, tc: TrainConfig, batch_size: int, field: str, items: str) -> int:
    """The fewest items an optimizer step can share out (micro-batches x processes); a ``batch_size`` below it is
    a config error naming ``field``."""
    per_step = tc.grad_accum_steps * accelerator.num_processes
    if batch_size < per_step:
        raise UserError(f"{field}: {batch_size} {items} cannot feed {tc.grad_accum_steps} micro-batch(es) on "
                        f"{accelerator.num_processes} process(es); raise it to at least {per_step}")
    return per_step


def micro_batches(items: Sequence, n: int) -> list[list]:
    """Split one optimizer step's items into ``n`` near-equal, non-empty micro-batches (fewer if short)."""
    items = list(items)
    n = max(1, min(n, len(items)))
    return [items[j * len(items) // n:(j + 1) * len(items) // n] for j in range(n)]


def epoch_steps(n_items: int, batch_size: int, epochs: int, rng, resume_step: int, min_items: int):
    """(epoch, step, item indices) of every optimizer step still to take. Each epoch shuffles the items with
    ``rng`` (drawn even for epochs a resumed run skips, so the orders match an uninterrupted run); steps are
    numbered from 1 across epochs; those done before ``resume_step`` and tails smaller than ``min_items`` (too
    small to share out over processes and micro-batches) are skipped."""
    step = 0
    for epoch in range(epochs):
        order = list(range(n_items))
        rng.shuffle(order)
        for b in range(0, n_items, batch_size):
            idx = order[b : b + batch_size]
            step += 1
            if step > resume_step and len(idx) >= min_items:
                yield epoch, step, idx


def accumulate(accelerator, model, chunks: list[list], loss_fn: Callable[[list], tuple]) -> list:
    """Gradients of one optimizer step from several micro-batches.

    ``loss_fn(chunk) -> (mean loss over the chunk, anything)``; each loss is weighted by the chunk's share
    of the step's items, so the summed gradient is the mean over the whole step whatever the split.
    Gradients are synchronised across processes only on the last micro-batch (``no_sync`` before)."""
    total = sum(len(c) for c in chunks)
    outputs = []
    for j, chunk in enumerate(chunks):
        last = j == len(chunks) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss, out = loss_fn(chunk)
            accelerator.backward(loss * (len(chunk) / total))
        outputs.append(out)
    return outputs


def shards(items: list, world: int) -> list[list]:
    """Every process's share of a global batch: contiguous slices, as even as possible, rank order."""
    n = len(items)
    return [items[rank * n // world:(rank + 1) * n // world] for rank in range(world)]


def shard(items: list, accelerator) -> list:
    """This process's share of a global batch (``shards``)."""
    return shards(items, accelerator.num_processes)[accelerator.process_index]


def gather_mean(value: torch.Tensor | float, accelerator) -> float:
    """Mean of a per-process scalar over all processes (for metrics)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).reshape(1)
    return float(accelerator.gather(t).mean())


def _trainable_weights_only(models, weights, output_dir) -> None:
    """accelerate save-state hook: keep only the trainable parameters of each model's state dict. (Under
    DeepSpeed and FSDP accelerate saves through the engine and passes no state dicts: nothing to filter.)"""
    if len(weights) != len(models):
        return
    for i, model in enumerate(models):
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        missing = trainable - set(weights[i])
        if missing:  # the state dict names parameters differently: keep everything rather than lose state
            continue
        weights[i] = {name: tensor for name, tensor in weights[i].items() if name in trainable}


def _check_trainable_weights(models, input_dir) -> None:
    """accelerate load-state hook: the checkpoint must hold every trainable parameter (it is loaded with
    strict=False because the frozen ones are left out), else resuming would silently start from scratch."""
    from safetensors import safe_open

    for i, model in enumerate(models):
        path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        if not path.is_file():
            continue  # another serialisation (e.g. a sharded or DeepSpeed state): accelerate checks it itself
        with safe_open(str(path), framework="pt") as fh:
            saved = set(fh.keys())
        missing = [name for name, param in model.named_parameters() if param.requires_grad and name not in saved]
        if missing:
            raise UserError(f"{input_dir} does not hold this model's trainable weights (e.g. {missing[0]}); "
                            "delete that checkpoint directory to train from the start")


class Checkpointer:
    """round_K/checkpoint: accelerate state + ``progress.json`` ({step, ...}); resumed by a re-run of the stage."""

    def __init__(self, directory: Path, every: int, accelerator, fingerprint: str = ""):
        self.directory = Path(directory)
        self.every = every
        self.accelerator = accelerator
        self.fingerprint = fingerprint  # the config that wrote it: a checkpoint of another config is not resumed
        # only what trains is saved: the frozen base weights are on disk already (GBs for big models); hooks are
        # registered even with every=0, since a preemption writes a checkpoint whatever the period
        accelerator.register_save_state_pre_hook(_trainable_weights_only)
        accelerator.register_load_state_pre_hook(_check_trainable_weights)

    def resume(self) -> dict | None:
        """Load the latest checkpoint into the prepared objects; returns its progress, or None."""
        from openrlaif.core.progress import console

        path = self.directory / "progress.json"
        if not path.is_file():
            return None
        progress = json.loads(path.read_text())
        if progress.get("fingerprint", "") != self.fingerprint:
            console.print(f"[yellow]{self.directory} was written with another config: starting over[/yellow]")
            return None
        self.accelerator.load_state(str(self.directory), strict=False)  # the frozen weights are not in it
        console.print(f"[green]resuming from {self.directory} at step {progress['step']}[/green]")
        return progress

    def maybe_save(self, step: int, **progress) -> bool:
        if self.every <= 0 or step % self.every:
            return False
        self.save(step=step, **progress)
        return True

    def save(self, **progress) -> None:
        tmp = self.directory.with_name(self.directory.name + ".tmp")
        if self.accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        if self.accelerator.is_main_process:
            (tmp / "progress.json").write_text(json.dumps({**progress, "fingerprint": self.fingerprint}))
            old = self.directory.with_name(self.directory.name + ".old")
            if self.directory.exists():
                os.replace(self.directory, old)
            os.replace(tmp, self.directory)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def stop_if_preempted(self, step: int, saved: bool, **progress) -> None:
        """After optimizer step ``step``: when a signal asked training to stop (on any process), write the
        checkpoint (unless ``saved`` at this step already) and raise ``Preempted`` on every process together."""
        import torch

        from openrlaif.core.preempt import Preempted, requested

        flag = torch.tensor([1.0 if requested() else 0.0], device=self.accelerator.device)
        if float(self.accelerator.gather(flag).max()) == 0.0:
            return
        if not saved:
            self.save(step=step, **progress)
        raise Preempted(step, requested() or "a signal on another process")

    def clear(self) -> None:
        """The stage finished: its outputs are saved, the checkpoint is no longer needed."""
        if self.accelerator.is_main_process:
            shutil.rmtree(self.directory, ignore_errors=True)
