"""Stage `sft`: supervised fine-tuning on chat rows, the loss on the assistant's own tokens only.

One loop, two places in a run:

- **before round 1** (the ``sft`` section with another train.algo; `rlaif sft`): LoRA (or every weight) on
  ``sft.data``; the result is merged and saved as a full model in ``round_1/sft/model``, which every later
  stage loads as the run's starting policy: it samples round 1, it is DPO's reference and RL's KL anchor,
  and eval compares the trained policy with it.
- **as a round's trainer** (``train.algo: sft``, e.g. on ``sft.data: revisions``, Constitutional AI's
  supervised phase): the round's LoRA adapter (continuing round k-1's) is saved to ``round_K/policy`` like
  DPO's, so the next round samples from it.

Held-out rows (``sft.eval_fraction``) give the eval loss before and after training. With ``sft.packing`` the
training rows are packed into sequences of up to ``sft.max_length`` tokens whose rows do not attend to each
other (``models.logprobs.collate_packed``): the same per-token loss over less padding.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time

import torch

from openrlaif.config import RunConfig
from openrlaif.core.errors import UserError
from openrlaif.core.faults import kill_point
from openrlaif.core.store import RunStore, atomic_directory, atomic_write_json
from openrlaif.data.chat import ChatRow, load_chat_rows
from openrlaif.models.chat import TemplateError, encode_chat, trainable_tokens
from openrlaif.models.logprobs import Encoded
from openrlaif.optimize.losses import sft_loss


def rows_path(cfg: RunConfig, store: RunStore | None, k: int):
    """The file sft.data names ('revisions': round k's revisions.jsonl, so it needs the run's ``store``)."""
    if cfg.sft.data == "revisions":
        path = store.path("revisions.jsonl", k)
        if not path.is_file():
            raise UserError(f"sft.data=revisions: {path} not found; run the label stage with feedback.method=revision "
                            f"first (`rlaif label -o {store.root} -k {k}`)")
        return path
    return cfg.sft.data


def held_out(row: ChatRow, fraction: float) -> bool:
    """Stable split: a row is held out by a hash of its conversation, wherever it sits in the file."""
    digest = hashlib.sha256(json.dumps(row.messages, sort_keys=True).encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF < fraction


def split_rows(rows: list[ChatRow], fraction: float) -> tuple[list[ChatRow], list[ChatRow]]:
    """(train, held-out); with a fraction above 0 and 2+ rows, at least one of each."""
    flags = [fraction > 0 and held_out(r, fraction) for r in rows]
    if len(rows) >= 2 and fraction > 0 and not any(flags):
        flags[-1] = True
    if all(flags):  # never hold out everything
        flags[0] = False
    return [r for r, f in zip(rows, flags) if not f], [r for r, f in zip(rows, flags) if f]


def encode_rows(tokenizer, rows: list[ChatRow], max_length: int) -> list[Encoded]:
    """Every row as tokens + assistant mask; a row with nothing left to learn after truncation is an error."""
    out = []
    for row in rows:
        try:
            enc = encode_chat(tokenizer, row.messages, max_length)
        except TemplateError as err:
            raise UserError(f"{row.where}: {err}") from None
        if trainable_tokens(enc) == 0:
            raise UserError(f"{row.where}: no assistant token is left within sft.max_length={max_length} (the prompt "
                            "fills it); raise sft.max_length or shorten that row")
        out.append(enc)
    return out


def check(cfg: RunConfig, store: RunStore | None = None, k: int = 1) -> tuple[list[Encoded], list[Encoded]]:
    """Rows read, split and encoded with the policy's tokenizer only: every input checked before a model loads
    (a chat file needs no run directory; sft.data=revisions reads round k's of ``store``)."""
    from openrlaif.models.loading import load_tokenizer, resolve_model

    sc = cfg.sft
    rows = load_chat_rows(rows_path(cfg, store, k))[: sc.max_rows]
    train, held = split_rows(rows, sc.eval_fraction)
    tok = load_tokenizer(resolve_model(cfg.model.policy, "model.policy"))
    return encode_rows(tok, train, sc.max_length), encode_rows(tok, held, sc.max_length)


def mean_loss(model, seqs: list[Encoded], pad_id: int, batch_size: int) -> float | None:
    """Per-token NLL of the assistant tokens of ``seqs`` (no gradients); None without rows."""
    from openrlaif.models.logprobs import batched_response_logprobs

    if not seqs:
        return None
    was_training = model.training
    model.eval()
    logps, _ = batched_response_logprobs(model, seqs, pad_id, batch_size, "sft: eval loss")
    model.train(was_training)
    # response_logprobs scores positions 1.. (the first token has no prediction): count the same tokens
    counts = torch.tensor([sum(s.response_mask[1:]) for s in seqs])
    return round(sft_loss(torch.tensor(logps), counts).item(), 6)


def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Fine-tune on sft.data; as the round's trainer (train.algo=sft) save round_K/policy, else (before round 1)
    save the merged model to round_1/sft/model."""
    from transformers import get_linear_schedule_with_warmup

    from openrlaif.core.progress import advance, bar
    from openrlaif.models.accel import (Checkpointer, accumulate, adamw, config_fingerprint, epoch_steps, gather_mean,
                                        items_per_step, make_accelerator, micro_batches, prepare, shard)
    from openrlaif.models.loading import load_causal_lm, set_threads
    from openrlaif.data.chat import pack_groups
    from openrlaif.models.logprobs import SequenceLogprobs, collate, collate_packed, pack_encoded
    from openrlaif.models.policy import add_lora, round_adapters, save_adapter

    sc, tc = cfg.sft, cfg.train
    as_trainer = cfg.train.algo == "sft"  # (full fine-tuning as a round's trainer is refused by the config)
    # 1. Rows: read, split, encoded; every one checked before the model loads.
    train_seqs, held_seqs = check(cfg, store, k)
    rows_trained = len(train_seqs)
    if sc.packing:  # packs of rows that do not see each other (sft.batch_size counts packs)
        train_seqs = pack_encoded(train_seqs, pack_groups([len(s.input_ids) for s in train_seqs], sc.max_length))
    accelerator = make_accelerator(tc)
    per_step = items_per_step(accelerator, tc, sc.batch_size, "sft.batch_size", "rows")
    # 2. The policy: LoRA (fresh, or round k-1's adapter to continue when this is a round's trainer) or every weight.
    set_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype, math_attention_up_to=cfg.model.math_attention_up_to)
    tok = loaded.tokenizer
    if sc.full_finetune:
        model = loaded.model
        model.requires_grad_(True)
    else:
        model = add_lora(loaded.model, tc, round_adapters(cfg, store, k)[0] if as_trainer else None)
    pad_id = tok.pad_token_id
    # 3. The held-out loss before training.
    eval_before = mean_loss(model, held_seqs, pad_id, sc.batch_size)
    # 4. Optimise: the summed log-probs go through accelerate's wrapper; the loss is per trained token of the step.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(accelerator, params, sc.learning_rate)
    steps_per_epoch = math.ceil(len(train_seqs) / sc.batch_size)
    total = steps_per_epoch * sc.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(sc.warmup_ratio * total), total)
    policy, optimizer, scheduler = prepare(accelerator, model, SequenceLogprobs(model), optimizer, scheduler)
    where = store.path("sft_checkpoint" if not as_trainer else "checkpoint", k)
    checkpoint = Checkpointer(where, tc.checkpoint_every, accelerator, config_fingerprint(cfg))
    progress = checkpoint.resume() or {"step": 0, "tokens_done": 0, "metrics": [], "seconds": 0.0}
    rng = random.Random(cfg.seed)
    metrics, step, tokens_done = progress["metrics"], progress["step"], progress["tokens_done"]
    counts = [sum(s.response_mask[1:]) for s in train_seqs]  # the tokens each row's loss is over

    def chunk_loss(chunk: list[int], step_tokens: int, step_items: int):
        mine = shard(chunk, accelerator)
        batch = [train_seqs[i] for i in mine]
        tensors = collate_packed(batch, pad_id) if sc.packing else collate(batch, pad_id)
        logps = policy(*(t.to(accelerator.device) for t in tensors)).float().cpu()
        nll = -logps.sum()
        # accumulate() weights a chunk by its share of the step's rows and DDP averages over processes: undo both,
        # so the step's gradient is that of (sum of NLL over every trained token of the step) / (their count)
        loss = nll / step_tokens * accelerator.num_processes * (step_items / len(chunk))
        return loss, (nll.detach(), sum(counts[i] for i in mine))

    t_start = time.perf_counter() - progress["seconds"]
    with bar("sft", total, "steps") as pg:
        advance(pg, progress["step"], 0.0, "steps")
        for epoch, step, idx in epoch_steps(len(train_seqs), sc.batch_size, sc.epochs, rng, progress["step"], per_step):
            model.train()
            lr = scheduler.get_last_lr()[0]
            step_tokens = max(1, sum(counts[i] for i in idx))
            outs = accumulate(accelerator, policy, micro_batches(idx, tc.grad_accum_steps),
                              lambda chunk: chunk_loss(chunk, step_tokens, len(idx)))
            grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            nll = sum(float(o[0]) for o in outs)
            tokens_done += step_tokens
            elapsed = time.perf_counter() - t_start
            metrics.append({"stage": "sft" if not as_trainer else "train", "round": k, "step": step,
                            "epoch": epoch,  # this process's share of the NLL, summed over processes
                            "loss": round(gather_mean(nll / step_tokens, accelerator) * accelerator.num_processes, 6),
                            "grad_norm": round(float(grad_norm), 6), "lr": lr,
                            "tokens_per_s": round(tokens_done / elapsed, 2)})
            saved = checkpoint.maybe_save(step, tokens_done=tokens_done, metrics=metrics, seconds=elapsed)
            kill_point("train.step")
            checkpoint.stop_if_preempted(step, saved, tokens_done=tokens_done, metrics=metrics, seconds=elapsed)
            advance(pg, 1, (step - progress["step"]) / max(elapsed - progress["seconds"], 1e-9), "steps")
    seconds = time.perf_counter() - t_start
    # 5. The held-out loss after; save the adapter (a round's policy) or the merged model (the run's start).
    eval_after = mean_loss(model, held_seqs, pad_id, sc.batch_size)
    if accelerator.is_main_process:
        if as_trainer:
            save_adapter(model, tok, store.path("policy", k))
        else:
            merged = model if sc.full_finetune else model.merge_and_unload()
            with atomic_directory(store.path("sft", k) / "model") as tmp:
                merged.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            atomic_write_json(store.path("sft", k) / "summary.json", {"eval_loss_before": eval_before,
                                                                      "eval_loss_after": eval_after})
        store.append_metrics(metrics)
    accelerator.wait_for_everyone()
    checkpoint.clear()
    last = metrics[-max(1, steps_per_epoch):]
    return {
        "algo": "sft", "rows": rows_trained, "packs": len(train_seqs) if sc.packing else None,
        "heldout_rows": len(held_seqs), "steps": step,
        "trained_tokens": sum(counts) * sc.epochs, "seconds_training": round(seconds, 2),
        "tokens_per_s": round(tokens_done / seconds, 2) if seconds else None,
        "first_loss": metrics[0]["loss"] if metrics else None,
        "final_loss": round(sum(m["loss"] for m in last) / len(last), 4) if metrics else None,
        "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "full_finetune": sc.full_finetune, "output": str(store.path("policy" if as_trainer else "sft", k)),
        "processes": accelerator.num_processes, "resumed_from_step": progress["step"],
    }
