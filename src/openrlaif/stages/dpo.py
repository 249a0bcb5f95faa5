"""Stage `train` (algo dpo): Direct Preference Optimization with LoRA on the AI preferences.

The reference policy is the starting policy itself: the LoRA adapter disabled. Reference log-probs
are computed once before training; soft judge labels become cDPO label smoothing (1 - p_chosen).
The adapter is saved as a peft directory in ``round_K/policy``.
"""

from __future__ import annotations

import math
import random
import time

import torch

from openrlaif.config import RunConfig, TrainConfig
from openrlaif.core.faults import kill_point
from openrlaif.core.store import RunStore, atomic_write_json
from openrlaif.data.preferences import text_of, training_pairs
from openrlaif.models.logprobs import SequenceLogprobs, encode_response, pair_logprobs
from openrlaif.models.policy import add_lora, reference_policy, round_adapters, save_adapter
from openrlaif.optimize.losses import dpo_loss, ipo_loss


def smoothing_for(pref: dict, tc: TrainConfig) -> float:
    """cDPO label smoothing for one pair: 1 - p_chosen with soft labels, else the fixed value."""
    if tc.soft_labels and pref.get("p_chosen") is not None:
        return min(max(1.0 - float(pref["p_chosen"]), 0.0), 0.5)
    return tc.label_smoothing


REFERENCE_PAIRS = 8  # pairs per reference forward after the first step's (24 pairs of ~170-token rows: 5.2-5.9 s in
#                     batches of 2, 4.4-5.2 s in batches of 8, no better in 12; docs/benchmarks.md, session 39)


def reference_batches(chosen: list, rejected: list, tc: TrainConfig, processes: int, seed: int) -> list[list[int]]:
    """The pairs of the reference pass, batch by batch: first the first step's pairs in the very batches
    (micro-batches, process shares) the policy will run them in, since the same shapes give the same rounding and so,
    under bf16 autocast too, the fresh adapter's first step sees exactly its reference; then every other pair, in
    batches of ``REFERENCE_PAIRS`` pairs of similar lengths (a forward without gradients runs faster in larger
    batches, and the policy has moved before it meets them)."""
    from openrlaif.models.accel import epoch_steps, micro_batches, shards

    steps = [idx for _, _, idx in epoch_steps(len(chosen), tc.batch_size, 1, random.Random(seed), 0, 1)]
    if not steps:
        return []
    first = [part for chunk in micro_batches(steps[0], tc.grad_accum_steps)
             for part in shards(chunk, processes) if part]
    rest = sorted((i for idx in steps[1:] for i in idx),
                  key=lambda i: len(chosen[i].input_ids) + len(rejected[i].input_ids))
    return first + [rest[a : a + REFERENCE_PAIRS] for a in range(0, len(rest), REFERENCE_PAIRS)]


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Train a LoRA adapter with DPO on preferences.jsonl and save it to round_K/policy.

    Runs as is under `accelerate launch` (each process takes its share of every batch)."""
    from transformers import get_linear_schedule_with_warmup

    from openrlaif.core.progress import advance, bar
    from openrlaif.models.accel import (
        Checkpointer,
        accumulate,
        adamw,
        cast_frozen_once_for,
        config_fingerprint,
        epoch_steps,
        gather_mean,
        items_per_step,
        make_accelerator,
        micro_batches,
        prepare,
        shard,
    )
    from openrlaif.models.loading import load_causal_lm, set_threads
    from openrlaif.models.logprobs import forks_supported

    tc = cfg.train
    # 1. Preference pairs from the label stage, with any human verdicts from the audit desk applied.
    prefs, human = training_pairs(store, k, cfg=cfg)
    accelerator = make_accelerator(tc)
    per_step = items_per_step(accelerator, tc, tc.batch_size, "train.batch_size", "pairs")
    # 2. The starting policy with a LoRA adapter (fresh, or round k-1's to continue) and the reference.
    set_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype, math_attention_up_to=cfg.model.math_attention_up_to)
    tok = loaded.tokenizer
    model = add_lora(loaded.model, tc, *round_adapters(cfg, store, k))
    cast_frozen_once_for(accelerator, model)  # before the reference pass, which runs ahead of `prepare` (it casts too)
    pad_id = tok.pad_token_id
    chosen = [encode_response(tok, p["prompt"], text_of(p["chosen"]), tc.max_length) for p in prefs]
    rejected = [encode_response(tok, p["prompt"], text_of(p["rejected"]), tc.max_length) for p in prefs]
    smoothing = torch.tensor([smoothing_for(p, tc) for p in prefs])
    fork = tc.fork_pairs and forks_supported(model)  # a pair's prompt runs once
    # 3. Reference log-probs, once (or per step when train.precompute_ref_logps is false).
    model.eval()
    ref_c, ref_r = torch.zeros(len(prefs)), torch.zeros(len(prefs))

    def reference(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # under the policy forward's own autocast (train.mixed_precision): the reference and the policy agree at step 0
        with torch.inference_mode(), accelerator.autocast(), reference_policy(model):
            c, r = pair_logprobs(SequenceLogprobs(model), [chosen[i] for i in idx], [rejected[i] for i in idx],
                                 pad_id, fork)
        return c.clone(), r.clone()

    if tc.precompute_ref_logps:
        with bar("reference logps", len(prefs), "pairs") as pg:
            t0, done = time.perf_counter(), 0
            for idx in reference_batches(chosen, rejected, tc, accelerator.num_processes, cfg.seed):
                ref_c[idx], ref_r[idx] = reference(idx)
                done += len(idx)
                advance(pg, len(idx), done / (time.perf_counter() - t0), "pairs")
    # 4. Optimise the adapter: the policy forward goes through accelerate's wrapper.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(accelerator, params, tc.learning_rate)
    steps_per_epoch = math.ceil(len(prefs) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total), total)
    policy, optimizer, scheduler = prepare(accelerator, model, SequenceLogprobs(model), optimizer, scheduler)
    checkpoint = Checkpointer(store.path("checkpoint", k), tc.checkpoint_every, accelerator,
                              config_fingerprint(cfg))
    progress = checkpoint.resume() or {"step": 0, "pairs_done": 0, "metrics": [], "seconds": 0.0}
    # With monitor.every: DPO's implicit reward on fixed held-out answers vs the run's judge (over-optimisation).
    from openrlaif.optimize.monitor import OveroptimizationMonitor

    monitor = OveroptimizationMonitor(cfg, store, k, tok, None, progress.get("monitor"), last_step=total,
                                      implicit_beta=tc.beta)
    rng = random.Random(cfg.seed)
    metrics, step, pairs_done = progress["metrics"], progress["step"], progress["pairs_done"]

    def pair_loss(chunk: list[int]):
        mine = shard(chunk, accelerator)
        if not tc.precompute_ref_logps:
            ref_c[mine], ref_r[mine] = reference(mine)
        pc, pr = pair_logprobs(policy, [chosen[i] for i in mine], [rejected[i] for i in mine], pad_id, fork,
                               accelerator.device)
        if tc.loss == "ipo":
            loss_vec, r_c, r_r = ipo_loss(pc, pr, ref_c[mine], ref_r[mine], tc.beta)
        else:
            loss_vec, r_c, r_r = dpo_loss(pc, pr, ref_c[mine], ref_r[mine], tc.beta, smoothing[mine])
        return loss_vec.mean(), (loss_vec.detach(), r_c, r_r)

    t_start = time.perf_counter() - progress["seconds"]
    with bar("dpo", total, "steps") as pg:
        advance(pg, progress["step"], 0.0, "steps")
        for epoch, step, idx in epoch_steps(len(prefs), tc.batch_size, tc.epochs, rng, progress["step"], per_step):
            model.train()
            lr = scheduler.get_last_lr()[0]
            outs = accumulate(accelerator, policy, micro_batches(idx, tc.grad_accum_steps), pair_loss)
            grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_vec, r_c, r_r = (torch.cat(parts) for parts in zip(*outs))
            pairs_done += len(idx)
            elapsed = time.perf_counter() - t_start
            metrics.append({
                "stage": "train", "round": k, "step": step, "epoch": epoch,
                "loss": round(gather_mean(loss_vec.mean(), accelerator), 6),
                "reward_accuracy": round((r_c > r_r).float().mean().item(), 4),
                "reward_margin": round((r_c - r_r).mean().item(), 6),
                "chosen_reward": round(r_c.mean().item(), 6),
                "rejected_reward": round(r_r.mean().item(), 6),
                "grad_norm": round(float(grad_norm), 6),
                "lr": lr,
                "pairs_per_s": round(pairs_done / elapsed, 4),
            })
            monitor.check(step, model, accelerator.is_main_process)
            state = dict(pairs_done=pairs_done, metrics=metrics, seconds=elapsed, monitor=monitor.state.to_dict())
            saved = checkpoint.maybe_save(step, **state)
            kill_point("train.step")
            checkpoint.stop_if_preempted(step, saved, **state)  # SIGTERM/SIGINT: checkpoint here, then stop
            advance(pg, 1, (step - progress["step"]) / max(elapsed - progress["seconds"], 1e-9), "steps")
            if monitor.should_stop():
                break
    seconds = time.perf_counter() - t_start
    # 5. Save the adapter (+ tokenizer) atomically, and the reference log-probs for inspection.
    if accelerator.is_main_process:
        save_adapter(model, tok, store.path("policy", k))
        atomic_write_json(store.path("ref_logps.json", k), {"chosen": ref_c.tolist(), "rejected": ref_r.tolist()})
        monitor.finish(accelerator.is_main_process)
        store.append_metrics(metrics + monitor.rows())
    accelerator.wait_for_everyone()
    checkpoint.clear()
    last = metrics[-max(1, steps_per_epoch):]
    return {
        "pairs": len(prefs),
        "human_verdicts": {v: human[v] for v in ("agree", "flip", "flag", "disputed")},
        "held_for_review": human["held_for_review"],
        "steps": step,
        "seconds_training": round(seconds, 2),
        "pairs_per_s": round(pairs_done / seconds, 4),
        "final_loss": round(sum(m["loss"] for m in last) / len(last), 4),
        "final_reward_accuracy": round(sum(m["reward_accuracy"] for m in last) / len(last), 4),
        "first_loss": metrics[0]["loss"],
        "processes": accelerator.num_processes,
        "resumed_from_step": progress["step"],
        "monitor": monitor.state.summary(),
    }
