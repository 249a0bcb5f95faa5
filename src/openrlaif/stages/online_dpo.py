"""Stage `train` (algo online_dpo): DPO on pairs the current policy samples and the judge labels at every step.

Offline DPO (algo dpo) trains on the pairs the label stage judged once, sampled from the round's starting
policy. Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback") samples
``rl.k`` answers per prompt from the policy *as it is now* at every update, asks the run's judge (both orders,
under a principle drawn per comparison, through the judge cache) which is better, and takes one DPO (or IPO)
step on the best-vs-worst pair of each prompt (``label.pairs``, ``label.min_margin``) with the judge's
probability as cDPO's soft label. The reference is the starting policy (the LoRA adapter off). Every answer's
KL to the reference is logged, and the over-optimisation monitor reads DPO's implicit reward as for offline
DPO. The judged pairs are kept in ``round_K/online_pairs.jsonl`` (the columns of preferences.jsonl, plus the
update that made them). Rollout rows are drawn from per-row seeds and comparisons are cached, so a killed run that resumes from
its checkpoint samples the same answers and re-judges nothing.
"""

from __future__ import annotations

import random
import time
from itertools import combinations

import torch

from openrlaif.config import RunConfig
from openrlaif.core.store import RunStore, atomic_write_jsonl
from openrlaif.feedback.scoring import select_pairs
from openrlaif.feedback.types import Comparison
from openrlaif.models.logprobs import collate, collate_forks, forked_response_logprobs, pair_logprobs, response_logprobs
from openrlaif.models.policy import reference_policy
from openrlaif.optimize.losses import dpo_loss, ipo_loss
from openrlaif.optimize.loop import after_update, finish, quarter_means
from openrlaif.optimize.monitor import OveroptimizationMonitor
from openrlaif.optimize.rollout import rl_parts, sample_step


def label_smoothing(p_chosen: torch.Tensor, soft_labels: bool, fixed: float) -> torch.Tensor:
    """cDPO smoothing per pair: 1 - p_chosen (at most 0.5) with soft labels, else the fixed value."""
    if soft_labels:
        return (1.0 - p_chosen).clamp(0.0, 0.5)
    return torch.full_like(p_chosen, fixed)


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Online DPO updates of a LoRA policy judged by the run's judge; the adapter goes to round_K/policy."""
    from openrlaif.core.progress import advance, bar
    from openrlaif.data.constitution import load_constitution
    from openrlaif.feedback.factory import build_judge, defend
    from openrlaif.models.accel import Checkpointer, adamw, config_fingerprint, gather_mean, prepare
    from openrlaif.models.logprobs import SequenceLogprobs, forks_supported

    rl, tc = cfg.rl, cfg.train
    # 1. Train prompts, the policy (adapter off = the reference), the judge (defended: a reply that addresses
    #    the judge loses every comparison) and the constitution its principles come from.
    parts = rl_parts(cfg, store, k)
    accelerator, tok, model, prompts = parts.accelerator, parts.tokenizer, parts.model, parts.prompts
    constitution = load_constitution(cfg.data.constitution)
    raw_judge, judge_name = build_judge(cfg, "online_dpo", store.root)
    judge = defend(cfg, raw_judge)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(accelerator, params, tc.learning_rate)
    policy, optimizer = prepare(accelerator, model, SequenceLogprobs(model), optimizer)
    fork = tc.fork_pairs and forks_supported(model)  # a prompt's answers share one copy of it
    checkpoint = Checkpointer(store.path("checkpoint", k), tc.checkpoint_every, accelerator, config_fingerprint(cfg))
    progress = checkpoint.resume() or {"step": 0, "episodes": 0, "pairs": 0, "comparisons": 0, "metrics": [],
                                       "rows": [], "seconds": 0.0}
    monitor = OveroptimizationMonitor(cfg, store, k, tok, None, progress.get("monitor"), last_step=rl.steps,
                                      implicit_beta=tc.beta)
    metrics, rows, episodes, n_pairs, n_comparisons = (progress[key] for key in ("metrics", "rows", "episodes",
                                                                                 "pairs", "comparisons"))
    cache = getattr(raw_judge, "cache", None)
    hits0, misses0 = (cache.hits, cache.misses) if cache is not None else (0, 0)
    start = time.perf_counter() - progress["seconds"]
    with bar("online dpo", rl.steps, "steps") as pg:
        advance(pg, progress["step"], 0.0, "steps")
        for step in range(progress["step"], rl.steps):
            # 2. rl.k answers for each of this process's prompts from the current policy (per-row seeds).
            seqs, finished, chosen_prompts = sample_step(model, tok, parts.encoded_prompts, step, cfg, accelerator)
            texts = [tok.decode([t for t, m in zip(s.input_ids, s.response_mask) if m], skip_special_tokens=True)
                     .strip() for s in seqs]
            # 3. The judge compares every two distinct non-empty answers of a prompt (a principle per comparison).
            items, keys = [], []
            for g, i_prompt in enumerate(chosen_prompts):
                prompt = prompts[i_prompt]
                group = texts[g * rl.k:(g + 1) * rl.k]
                for i, j in combinations(range(rl.k), 2):
                    if not group[i] or not group[j] or group[i] == group[j]:
                        continue
                    rng = random.Random(f"{cfg.seed}:online:{k}:{step}:{i_prompt}:{i}:{j}")
                    items.append(Comparison(prompt.text, group[i], group[j], constitution.sample(rng),
                                            prompt.messages))
                    keys.append((g, i, j))
            verdicts = judge.compare(items) if items else []
            n_comparisons += len(items)
            # 4. Pairs: each prompt's best vs worst answer by mean win probability, oriented by the judge.
            probs: dict[int, dict[tuple[int, int], float]] = {}
            judged = {}
            for (g, i, j), v in zip(keys, verdicts):
                if v.p_first is not None:
                    probs.setdefault(g, {})[(i, j)] = v.p_first
                    judged[(g, min(i, j), max(i, j))] = v
            pairs = [(g * rl.k + c, g * rl.k + r, p) for g, pg_ in sorted(probs.items())
                     for c, r, p in select_pairs(rl.k, pg_, cfg.label.pairs, cfg.label.min_margin)]
            for c, r, p in pairs:  # the pairs as TRL-style preference rows (round_K/online_pairs.jsonl)
                g, prompt = c // rl.k, prompts[chosen_prompts[c // rl.k]]
                v = judged[(g, min(c, r) % rl.k, max(c, r) % rl.k)]
                rows.append({"prompt": prompt.messages, "chosen": [{"role": "assistant", "content": texts[c]}],
                             "rejected": [{"role": "assistant", "content": texts[r]}], "p_chosen": round(p, 6),
                             "principle": v.principle, "judge": f"{judge_name}:{raw_judge.method}",
                             "rationale": v.rationale, "source": "ai", "round": k, "step": step + 1})
            # 5. Reference and current log-probs of every answer (the KL to the reference is logged for all).
            #    With train.fork_pairs a prompt's k answers run in one row after one copy of the prompt.
            resp = collate(seqs, tok.pad_token_id)[2]
            if fork:
                forks = collate_forks([seqs[g * rl.k:(g + 1) * rl.k] for g in range(len(seqs) // rl.k)],
                                      tok.pad_token_id).to(accelerator.device)

                def logps_of_all():
                    return forked_response_logprobs(model, forks).float().cpu()
            else:
                ids, attn, resp_d = (t.to(accelerator.device) for t in collate(seqs, tok.pad_token_id))

                def logps_of_all():
                    return response_logprobs(model, ids, attn, resp_d).float().cpu()
            with torch.inference_mode(), accelerator.autocast():  # the policy forward's precision
                with reference_policy(model):
                    ref = logps_of_all()
                now = logps_of_all()
            kl = now - ref  # k1 estimate of KL(policy || reference) per answer: log-ratio of a sample
            # 6. One DPO/IPO step on this process's pairs (a process without a pair still joins the gradient sync).
            model.train()
            c_idx = [c for c, _, _ in pairs] or [0]
            r_idx = [r for _, r, _ in pairs] or [0]
            pc, pr = pair_logprobs(policy, [seqs[c] for c in c_idx], [seqs[r] for r in r_idx], tok.pad_token_id, fork,
                                   accelerator.device)
            p_chosen = torch.tensor([p for _, _, p in pairs] or [0.5])
            if tc.loss == "ipo":
                loss_vec, r_c, r_r = ipo_loss(pc, pr, ref[c_idx], ref[r_idx], tc.beta)
            else:
                loss_vec, r_c, r_r = dpo_loss(pc, pr, ref[c_idx], ref[r_idx], tc.beta,
                                              label_smoothing(p_chosen, tc.soft_labels, tc.label_smoothing))
            loss = loss_vec.mean() if pairs else 0.0 * (pc.sum() + pr.sum())
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # 7. Log the update, checkpoint.
            episodes += len(seqs) * accelerator.num_processes
            n_pairs += len(pairs)
            elapsed = time.perf_counter() - start
            metrics.append({
                "stage": "train", "algo": "online_dpo", "round": k, "step": step + 1,
                "loss": round(gather_mean(loss.detach(), accelerator), 6),
                "pairs": len(pairs), "comparisons": len(items),
                "p_chosen_mean": round(float(p_chosen.mean()), 4) if pairs else None,
                "reward_accuracy": round(float((r_c > r_r).float().mean()), 4) if pairs else None,
                "reward_margin": round(float((r_c - r_r).mean()), 6) if pairs else None,
                "kl": round(gather_mean(kl.mean(), accelerator), 6),
                "response_length": round(float(resp.sum(1).float().mean()), 2),
                "finished_rate": round(sum(finished) / len(finished), 4),
                "grad_norm": round(float(grad_norm), 6), "lr": tc.learning_rate,
                "episodes_per_s": round(episodes / elapsed, 4)})
            if after_update(step + 1, model, monitor, checkpoint, accelerator, pg, progress, elapsed,
                            episodes=episodes, pairs=n_pairs, comparisons=n_comparisons, metrics=metrics, rows=rows):
                break
    # 8. Save the adapter like offline DPO does, and every process's judged pairs.
    from accelerate.utils import gather_object

    rows = gather_object(rows) if accelerator.num_processes > 1 else rows
    if accelerator.is_main_process:
        atomic_write_jsonl(store.path("online_pairs.jsonl", k), sorted(rows, key=lambda row: row["step"]))
    finish(model, tok, store, k, monitor, checkpoint, accelerator, metrics)
    (loss_first, loss_last), (_, kl_last) = quarter_means(metrics, "loss"), quarter_means(metrics, "kl")
    judged = [m for m in metrics if m["pairs"]]
    return {"algo": "online_dpo", "loss": tc.loss, "steps": len(metrics), "episodes": episodes, "pairs": n_pairs,
            "judge": f"{judge_name}:{raw_judge.method}", "comparisons": n_comparisons,
            "judge_cache": {"hits": cache.hits - hits0, "misses": cache.misses - misses0} if cache is not None else None,
            "processes": accelerator.num_processes, "resumed_from_step": progress["step"],
            "episodes_per_s": round(episodes / (time.perf_counter() - start), 4),
            "loss_first": loss_first, "loss_last": loss_last,
            "p_chosen_mean": round(sum(m["p_chosen_mean"] for m in judged) / len(judged), 4) if judged else None,
            "kl_last": kl_last, "monitor": monitor.state.summary()}
