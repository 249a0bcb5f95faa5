"""Stage `reward`: a Bradley-Terry reward model (or a K-member ensemble) on the AI preferences.

Each member is the starting policy's backbone with a fresh one-output score head, trained with LoRA
(or fully) on cross-entropy to the judge's soft label, plus a small reward-centering term. A seeded
share of the pairs is held out for accuracy and calibration. Members go to ``round_K/reward_model/
member_i`` (peft adapter + score head, or full weights) and ``ensemble.json`` says how to combine them;
``openrlaif.reward.model.load_reward(RUN_DIR/round_K/reward_model)`` loads the result.
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
import time
from pathlib import Path

import torch

from openrlaif.config import RewardConfig, RunConfig, TrainConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, atomic_directory, atomic_write_json
from openrlaif.reward.loss import bradley_terry_loss, preference_accuracy
from openrlaif.reward.model import reward_scores


def split_pairs(n: int, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) indices; at least one held-out pair when the fraction is positive."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(n * heldout_fraction))) if heldout_fraction > 0 and n > 1 else 0
    return sorted(order[k:]), sorted(order[:k])


def build_reward_model(policy_path: str, rc: RewardConfig, seed: int, pad_id: int, dtype: str = "float32"):
    """The policy's backbone with a new one-output score head; LoRA unless full_finetune."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the score head's initialisation differs per member
    model = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1, dtype=getattr(torch, dtype))
    model.config.pad_token_id = pad_id
    if rc.full_finetune:
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj") if t in names]
    if not targets:
        raise UserError("reward.full_finetune: this model has no q/k/v/o or MLP projections for LoRA; set it to true")
    config = LoraConfig(r=rc.lora_r, lora_alpha=rc.lora_alpha, target_modules=targets, task_type="SEQ_CLS",
                        modules_to_save=["score"])
    return get_peft_model(model, config)


def pair_rewards(model, chosen, rejected, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from openrlaif.models.logprobs import collate

    ids, attn, _ = collate(chosen + rejected, pad_id)
    r = reward_scores(model, ids, attn)
    return r[: len(chosen)], r[len(chosen) :]


def evaluate(model, chosen, rejected, p_chosen: torch.Tensor, pad_id: int, batch_size: int) -> dict:
    """Held-out accuracy (the chosen side is the judge's pick), BT loss, and calibration error
    mean |sigmoid(r_c - r_r) - p_chosen|."""
    if not chosen:
        return {"n": 0}
    rc, rr = [], []
    with torch.inference_mode():
        for b in range(0, len(chosen), batch_size):
            c, r = pair_rewards(model, chosen[b : b + batch_size], rejected[b : b + batch_size], pad_id)
            rc.append(c)
            rr.append(r)
    rc, rr = torch.cat(rc), torch.cat(rr)
    return {"n": len(chosen), "accuracy": round(preference_accuracy(rc, rr), 4),
            "loss": round(float(bradley_terry_loss(rc, rr, p_chosen).mean()), 4),
            "calibration_error": round(float((torch.sigmoid(rc - rr) - p_chosen).abs().mean()), 4),
            "mean_reward": round(float(torch.cat([rc, rr]).mean()), 4)}


def train_member(model, chosen, rejected, p_chosen: torch.Tensor, rc: RewardConfig, pad_id: int, seed: int,
                 k: int, member: int, description: str, tc: TrainConfig) -> list[dict]:
    """Optimise one member on the shared training stack (accelerate; `train.grad_accum_steps`,
    `train.mixed_precision`); each process takes its share of every batch. Returns per-step metrics."""
    from transformers import get_linear_schedule_with_warmup

    from openrlaif.core.progress import advance, bar
    from openrlaif.models.accel import accumulate, adamw, gather_mean, make_accelerator, micro_batches, prepare, shard
    from openrlaif.models.logprobs import collate
    from openrlaif.reward.model import RewardScores

    accelerator = make_accelerator(tc)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(accelerator, params, rc.learning_rate)
    total = math.ceil(len(chosen) / rc.batch_size) * rc.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    scorer, optimizer, scheduler = prepare(accelerator, model, RewardScores(model), optimizer, scheduler)
    per_step = tc.grad_accum_steps * accelerator.num_processes

    def pair_loss(chunk: list[int]):
        mine = shard(chunk, accelerator)
        ids, attn, _ = collate([chosen[i] for i in mine] + [rejected[i] for i in mine], pad_id)
        r = scorer(ids.to(accelerator.device), attn.to(accelerator.device)).float().cpu()
        r_c, r_r = r[: len(mine)], r[len(mine) :]
        loss = bradley_terry_loss(r_c, r_r, p_chosen[mine], rc.margin, rc.center_coef).mean()
        return loss, (loss.detach(), r_c.detach(), r_r.detach())

    rng = random.Random(seed)
    metrics, step, start = [], 0, time.perf_counter()
    model.train()
    with bar(description, total, "steps") as pg:
        for epoch in range(rc.epochs):
            order = list(range(len(chosen)))
            rng.shuffle(order)
            for b in range(0, len(order), rc.batch_size):
                idx = order[b : b + rc.batch_size]
                step += 1
                if len(idx) < per_step:
                    continue  # a tail too small to share out over the processes / micro-batches
                outs = accumulate(accelerator, scorer, micro_batches(idx, tc.grad_accum_steps), pair_loss)
                grad_norm = accelerator.clip_grad_norm_(params, rc.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses, r_c, r_r = zip(*outs)
                r_c, r_r = torch.cat(r_c), torch.cat(r_r)
                loss = sum(float(x) * len(c) for x, c in zip(losses, micro_batches(idx, tc.grad_accum_steps))) / len(idx)
                metrics.append({"stage": "reward", "round": k, "member": member, "step": step, "epoch": epoch,
                                "loss": round(gather_mean(loss, accelerator), 6),
                                "accuracy": round(preference_accuracy(r_c, r_r), 4),
                                "reward_margin": round(float((r_c - r_r).mean()), 6), "grad_norm": round(float(grad_norm), 6)})
                advance(pg, 1, step / (time.perf_counter() - start), "steps")
    model.eval()
    return metrics


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Train reward.members reward models on preferences.jsonl; save them and their held-out figures."""
    from openrlaif.data.preferences import text_of, training_pairs
    from openrlaif.models.loading import load_tokenizer, resolve_model, set_threads
    from openrlaif.models.logprobs import encode_response

    rc = cfg.reward
    # 1. Preference pairs (the chosen side is the judge's pick, or a person's from the audit desk) and a
    #    seeded held-out split.
    prefs, human = training_pairs(store, k, minimum=2, cfg=cfg)
    set_threads(cfg.model.threads)
    policy_path = str(resolve_model(cfg.model.policy, "model.policy"))
    tok = load_tokenizer(policy_path)
    pad_id = tok.pad_token_id
    chosen = [encode_response(tok, p["prompt"], text_of(p["chosen"]), rc.max_length) for p in prefs]
    rejected = [encode_response(tok, p["prompt"], text_of(p["rejected"]), rc.max_length) for p in prefs]
    p_chosen = torch.tensor([float(p.get("p_chosen", 1.0)) if rc.soft_labels and p.get("p_chosen") is not None else 1.0
                             for p in prefs])
    train_idx, held_idx = split_pairs(len(prefs), rc.heldout_fraction, cfg.seed)
    # 2. Each member: its own head seed and (for an ensemble) its own bootstrap resample.
    members, summaries, start = [], [], time.perf_counter()
    out_dir = store.path("reward_model", k)
    from openrlaif.models.accel import is_main_process

    main = is_main_process()  # under a launcher, only rank 0 writes; the others save into scratch space
    with atomic_directory(out_dir) if main else _scratch() as tmp:
        for m in range(rc.members):
            rng = random.Random(f"{cfg.seed}:{k}:reward:{m}")
            idx = [rng.choice(train_idx) for _ in train_idx] if rc.members > 1 and rc.bootstrap else train_idx
            model = build_reward_model(policy_path, rc, cfg.seed + 1000 * m, pad_id, cfg.model.dtype)
            metrics = train_member(model, [chosen[i] for i in idx], [rejected[i] for i in idx], p_chosen[idx], rc,
                                   pad_id, cfg.seed + m, k, m, f"reward member {m + 1}/{rc.members}", cfg.train)
            held = evaluate(model, [chosen[i] for i in held_idx], [rejected[i] for i in held_idx], p_chosen[held_idx],
                            pad_id, rc.batch_size)
            # Against people: the held-out pairs that carry a human verdict from the audit desk.
            by_people = [i for i in held_idx if prefs[i].get("source") == "human"]
            held["human"] = evaluate(model, [chosen[i] for i in by_people], [rejected[i] for i in by_people],
                                     p_chosen[by_people], pad_id, rc.batch_size)
            name = f"member_{m}"
            model.save_pretrained(tmp / name)
            tok.save_pretrained(tmp / name)
            if main:
                store.append_metrics(metrics)
            members.append(name)
            summaries.append({"member": m, "pairs": len(idx), "final_loss": metrics[-1]["loss"], "heldout": held})
        # 3. How to combine the members, and what they scored on the held-out pairs.
        atomic_write_json(tmp / "ensemble.json", {"members": members, "aggregate": rc.aggregate,
                                                  "uwo_lambda": rc.uwo_lambda, "policy": policy_path,
                                                  "heldout_pairs": len(held_idx), "summaries": summaries})
    accs = [s["heldout"].get("accuracy") for s in summaries if s["heldout"].get("n")]
    human_accs = [s["heldout"]["human"]["accuracy"] for s in summaries if s["heldout"].get("human", {}).get("n")]
    return {"members": rc.members, "pairs": len(prefs), "human_verdicts": {v: human[v] for v in ("agree", "flip", "flag", "disputed")},
            "held_for_review": human["held_for_review"], "train_pairs": len(train_idx),
            "heldout_pairs": len(held_idx),
            "heldout_accuracy": round(sum(accs) / len(accs), 4) if accs else None,
            "heldout_human_pairs": sum(prefs[i].get("source") == "human" for i in held_idx),
            "heldout_human_accuracy": round(sum(human_accs) / len(human_accs), 4) if human_accs else None,
            "seconds": round(time.perf_counter() - start, 2)}


@contextlib.contextmanager
def _scratch():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
