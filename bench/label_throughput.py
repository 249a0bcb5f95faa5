"""Labeling speed: our judges vs a naive generate-then-parse loop, against the machine's prefill roofline.

    .venv/bin/python bench/label_throughput.py [--limit 48] [--model embedded] [--threads 2]

Same model, same pairs (the first N built-in calibration pairs, so agreement with the right answer is
known too), same judge prompt:
- naive: one pair, one order per call, ``generate(max_new_tokens=1)`` greedy, then parse the text for
  'A'/'B' (how TRL's removed judges worked); 'naive+prefill' does the same after our
  "The better response is Response" prefill, so the next token can be a letter;
- ours, pairwise: both orders, soft labels from the answer-letter log-probs, batched by length, last
  position projected only, the shared start of both orders' prompts run once (its key/value cache
  reused; also shown without that), fp32 and with int8 dynamic quantisation of the Linear layers;
- ours, contrastive: each response's log-likelihood under the principle's positive vs negative
  system prompt (order-free).
The roofline is the tokens/s of one large batched forward pass (batch 8, logits of the last
position only). Each row reports pairs/s, verdicts that are usable, agreement with the labels,
and the tokens the model read per second. No cache is used anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from openrlaif.data.constitution import load_constitution
from openrlaif.data.pairs import load_labelled_pairs
from openrlaif.feedback.api import parse_letter
from openrlaif.feedback.judges import JUDGE_PREFILL, LocalJudge
from openrlaif.feedback.methods import ContrastiveJudge
from openrlaif.feedback.types import Comparison
from openrlaif.models.loading import load_causal_lm, quantize_int8


def comparisons(limit: int):
    pairs = load_labelled_pairs("builtin", limit)
    principles = {p.id: p for p in load_constitution("builtin").principles}
    items, labels = [], []
    for n, pair in enumerate(pairs):
        chosen_first = n % 2 == 0  # alternate so a slot bias cannot look like agreement
        first, second = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
        items.append(Comparison(pair.prompt, first, second, principles[pair.principle], pair.messages))
        labels.append(chosen_first)
    return items, labels


def label_workload(path: str | None, prompts: int, model) -> tuple[list, list]:
    """The label stage's work: every pair of each prompt's candidates (no known answer: labels None).

    Candidates come from a run's candidates.jsonl, or are sampled here (4 per prompt, 48 tokens)."""
    import random
    from itertools import combinations

    from openrlaif.core.store import read_jsonl
    from openrlaif.data.prompts import load_prompts, select
    from openrlaif.sampling.hf import HFSampler
    from openrlaif.sampling.types import SamplingParams

    if path:
        rows = read_jsonl(path)[:prompts]
    else:
        chosen = select(load_prompts("builtin"), "train", prompts)
        cands = HFSampler(model.model, model.tokenizer).sample([p.messages for p in chosen], 4,
                                                               SamplingParams(0.8, 0.95, 48, 64, 0))
        rows = [{"prompt_id": p.id, "prompt": p.text, "messages": p.messages, "candidates": c} for p, c in zip(chosen, cands)]
    constitution = load_constitution("builtin")
    items = []
    for row in rows:
        principle = constitution.sample(random.Random(row["prompt_id"]))  # one per prompt, as the label stage
        for i, j in combinations(range(len(row["candidates"])), 2):
            items.append(Comparison(row["prompt"], row["candidates"][i], row["candidates"][j], principle, row["messages"]))
    return items, [None] * len(items)


def naive_loop(judge: LocalJudge, items, labels, prefill: bool) -> dict:
    """One order per call, generate one token, parse the text."""
    tok = judge.tokenizer
    valid = agree = tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for it, chosen_first in zip(items, labels):
            text = judge.render(it.prompt, it.first, it.second, it.principle.text)
            if not prefill:
                text = text[: -len(JUDGE_PREFILL)]
            enc = tok(text, add_special_tokens=False, return_tensors="pt")
            tokens += enc.input_ids.shape[1]
            out = judge.model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
            answer = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
            letter = parse_letter(answer)
            if letter is not None:
                valid += 1
                agree += chosen_first is not None and (letter == "A") == chosen_first
    seconds = time.perf_counter() - start
    return {"pairs_per_s": len(items) / seconds, "valid": valid,
            "agreement_of_all": agree / len(items) if labels[0] is not None else None, "orders": 1, "tokens_per_s": tokens / seconds, "seconds": seconds}


def ours(judge, items, labels) -> dict:
    start = time.perf_counter()
    verdicts = judge.compare(items)
    seconds = time.perf_counter() - start
    valid = sum(v.p_first is not None for v in verdicts)
    agree = sum(((v.p_first > 0.5) == y) + 0.5 * (v.p_first == 0.5) for v, y in zip(verdicts, labels)
                if v.p_first is not None and y is not None)
    return {"pairs_per_s": len(items) / seconds, "valid": valid,
            "agreement_of_all": agree / len(items) if labels[0] is not None else None, "orders": 2, "seconds": seconds}


def pairwise_tokens(judge: LocalJudge, items) -> int:
    return sum(len(judge.tokenizer(t, add_special_tokens=False).input_ids)
               for it in items for t in (judge.render(it.prompt, it.first, it.second, it.principle.text),
                                         judge.render(it.prompt, it.second, it.first, it.principle.text)))


def roofline(model, tokenizer, seq_len: int = 320, batch: int = 8, repeats: int = 3) -> float:
    ids = torch.randint(200, min(len(tokenizer), 20000), (batch, seq_len))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids[:2, :32], attention_mask=mask[:2, :32], logits_to_keep=1)
        start = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return batch * seq_len * repeats / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=48, help="calibration pairs (the first N of 72)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workload", choices=["calibration", "label"], default="calibration",
                    help="'calibration': the first --limit built-in labelled pairs (one pair per prompt); "
                    "'label': all 6 pairs of 4 candidates for each of --prompts train prompts (the label stage)")
    ap.add_argument("--prompts", type=int, default=12, help="label workload: prompts")
    ap.add_argument("--candidates", help="label workload: a run's candidates.jsonl instead of sampling")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 rows")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_causal_lm(args.model)
    if args.workload == "label":
        items, labels = label_workload(args.candidates, args.prompts, lm)
    else:
        items, labels = comparisons(args.limit)
    pair = LocalJudge(lm.model, lm.tokenizer, batch_size=args.batch_size, max_response_chars=600)
    both_orders_tokens = pairwise_tokens(pair, items)
    rows = {}
    rows["roofline (fp32, batch 8 x 320, last-position logits)"] = {"tokens_per_s": roofline(lm.model, lm.tokenizer)}
    rows["naive: 1 order, generate 1 token, parse"] = naive_loop(pair, items, labels, prefill=False)
    rows["naive+prefill: 1 order, generate 1 token, parse"] = naive_loop(pair, items, labels, prefill=True)
    plain = LocalJudge(lm.model, lm.tokenizer, batch_size=args.batch_size, max_response_chars=600, reuse_prefix=False)
    r = ours(plain, items, labels)
    r["tokens_per_s"] = both_orders_tokens / r["seconds"]
    rows["ours pairwise fp32, no prefix reuse: 2 orders, soft labels"] = r
    r = ours(pair, items, labels)
    r["tokens_per_s"] = both_orders_tokens / r["seconds"]
    rows["ours pairwise fp32: 2 orders, soft labels"] = r
    rows["ours contrastive fp32, no prefix reuse"] = ours(
        ContrastiveJudge(lm.model, lm.tokenizer, batch_size=args.batch_size, temperature=0.1, reuse_prefix=False),
        items, labels)
    contrastive = ContrastiveJudge(lm.model, lm.tokenizer, batch_size=args.batch_size, temperature=0.1)
    rows["ours contrastive fp32: order-free, soft labels"] = ours(contrastive, items, labels)
    if args.no_int8:
        return report(rows, items, both_orders_tokens, args)
    q = quantize_int8(lm.model)
    rows["roofline (int8 dynamic)"] = {"tokens_per_s": roofline(q, lm.tokenizer)}
    pair8 = LocalJudge(q, lm.tokenizer, batch_size=args.batch_size, max_response_chars=600)
    r = ours(pair8, items, labels)
    r["tokens_per_s"] = both_orders_tokens / r["seconds"]
    rows["ours pairwise int8: 2 orders, soft labels"] = r
    rows["ours contrastive int8: order-free, soft labels"] = ours(
        ContrastiveJudge(q, lm.tokenizer, batch_size=args.batch_size, temperature=0.1), items, labels)
    report(rows, items, both_orders_tokens, args)


def report(rows: dict, items, both_orders_tokens: int, args) -> None:
    naive = rows["naive: 1 order, generate 1 token, parse"]["pairs_per_s"]
    workload = (f"--workload label --prompts {args.prompts}{' --candidates ' + args.candidates if args.candidates else ''}"
                if args.workload == "label" else f"--limit {args.limit}")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d')}; "
          f"command: python bench/label_throughput.py {workload}; {len(items)} pairs, "
          f"{both_orders_tokens / (2 * len(items)):.0f} tokens per pairwise judge prompt\n")
    print("| labeler | orders per pair | pairs/s | vs naive | usable verdicts | agreement (of all pairs) | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "pairs_per_s" not in r:
            print(f"| {name} | | | | | | {r['tokens_per_s']:.0f} |")
            continue
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        print(f"| {name} | {r['orders']} | {r['pairs_per_s']:.2f} | {r['pairs_per_s'] / naive:.2f}x | "
              f"{r['valid']}/{len(items)} | {'-' if r['agreement_of_all'] is None else format(r['agreement_of_all'], '.3f')} | {tps} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
