"""Lower precision on the embedded model: how far bf16 and int8 move the policy's distribution from float32, how
much faster they are, and what frozen bf16 weights cost while sampling.

    .venv/bin/python bench/precision.py [--threads 2] [--only judge]

Distribution: next-token log-probs at every position of 8 built-in prompts, each followed by the same short
reply (72 positions with the chat template), float32 against each variant: mean and max KL(fp32 || variant) in
nats per token, and the share of positions whose most likely token is the same. Speed: one forward of those
8 x 72 tokens, and one decoding-like step of 48 rows x 1 token (no cache). int8 = torch.ao dynamic quantisation,
per-channel weights, the LM head left in float32. Sampling: 64 built-in prompts, batch 64, 16 new tokens, a
bf16 model whose weights require grad (as loaded) and the same frozen (as peft's merge leaves them): wall time
and peak RSS of each, each in its own process. Judge: the contrastive judge's scores of the 48 replies of the
first 24 built-in calibration pairs (a principle drawn per reply), float32 against bf16 autocast on the float32
weights (``model.judge_mixed_precision``) and against bf16 weights: seconds, the mean and largest score change,
and on how many pairs the preferred reply stays the same. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import threading
import time
import warnings


def distribution(threads: int) -> dict:
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from openrlaif.data.prompts import load_prompts
    from openrlaif.models.loading import load_causal_lm, set_threads

    warnings.filterwarnings("ignore")
    set_threads(threads)
    lm = load_causal_lm("embedded")
    tok, ref_model = lm.tokenizer, lm.model
    texts = [tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
             + "Sure. Here is a careful answer to your question, with the main points first and then details."
             for p in load_prompts("builtin")[:8]]
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool()
    step = torch.randint(100, 40000, (48, 1))

    def timed(model) -> tuple[torch.Tensor, float, float]:
        with torch.inference_mode():
            model(input_ids=enc["input_ids"][:1, :8])
            t0 = time.perf_counter()
            logits = model(**enc).logits.float()
            forward = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(10):
                model(input_ids=step)
            return logits, forward, (time.perf_counter() - t0) / 10

    ref, fwd, dec = timed(ref_model)
    lp_ref = torch.log_softmax(ref[mask], -1)
    out = {"positions": int(mask.sum()), "float32": {"forward_8x72_s": round(fwd, 3), "step_48x1_s": round(dec, 4)}}
    int8 = quantize_dynamic(copy.deepcopy(ref_model), {n: per_channel_dynamic_qconfig for n, m in ref_model.named_modules()
                                                       if isinstance(m, torch.nn.Linear) and "lm_head" not in n},
                            dtype=torch.qint8)
    for name, model in [("bfloat16", copy.deepcopy(ref_model).to(torch.bfloat16)), ("int8", int8)]:
        logits, fwd, dec = timed(model)
        lp = torch.log_softmax(logits[mask], -1)
        kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1)
        out[name] = {"forward_8x72_s": round(fwd, 3), "step_48x1_s": round(dec, 4),
                     "mean_kl_nats": round(float(kl.mean()), 5), "max_kl_nats": round(float(kl.max()), 4),
                     "same_top_token": round(float((lp.argmax(-1) == lp_ref.argmax(-1)).float().mean()), 4)}
    return out


def sampling(threads: int, frozen: bool) -> dict:
    import psutil

    from openrlaif.data.prompts import load_prompts
    from openrlaif.models.loading import load_causal_lm, set_threads
    from openrlaif.sampling.hf import HFSampler
    from openrlaif.sampling.types import SamplingParams

    set_threads(threads)
    proc, peak = psutil.Process(os.getpid()), [0]

    def watch():
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    lm = load_causal_lm("embedded", "bfloat16")
    for param in lm.model.parameters():
        param.requires_grad_(not frozen)
    convs = [p.messages for p in load_prompts("builtin")[:64]]
    time.sleep(0.3)
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    HFSampler(lm.model, lm.tokenizer).sample(convs, 1, SamplingParams(0.7, 0.95, 16, 64, 0))
    return {"what": f"bf16 sampling, weights {'frozen' if frozen else 'requiring grad'}",
            "seconds": round(time.perf_counter() - t0, 1), "rss_before_gb": round(before / 2**30, 2),
            "peak_rss_gb": round(peak[0] / 2**30, 2)}


def judge(threads: int) -> dict:
    import random

    import torch

    from openrlaif.data.constitution import load_constitution
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.feedback.methods import ContrastiveJudge
    from openrlaif.models.loading import autocast_matmuls, load_causal_lm, set_threads

    warnings.filterwarnings("ignore")
    set_threads(threads)
    lm = load_causal_lm("embedded")
    pairs = load_labelled_pairs("builtin")[:24]
    constitution, rng = load_constitution("builtin"), random.Random(0)
    units = [(p.messages, reply, constitution.sample(rng)) for p in pairs for reply in (p.chosen, p.rejected)]

    def scores(model) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        out = ContrastiveJudge(model, lm.tokenizer, batch_size=8, normalize="mean").scores(units)
        return torch.tensor(out), round(time.perf_counter() - t0, 2)

    reference, seconds = scores(lm.model)
    row = {"what": "judge", "replies": len(units), "float32_s": seconds, "score_sd": round(float(reference.std()), 4)}
    half = copy.deepcopy(lm.model).to(torch.bfloat16)
    autocast_matmuls(lm.model)
    for name, model in (("autocast", lm.model), ("bf16_weights", half)):
        got, seconds = scores(model)
        change = (got - reference).abs()
        same = sum(bool((got[2 * i] > got[2 * i + 1]) == (reference[2 * i] > reference[2 * i + 1])) for i in range(len(pairs)))
        row[name] = {"seconds": seconds, "mean_change": round(float(change.mean()), 4),
                     "max_change": round(float(change.max()), 4), "same_preference": f"{same}/{len(pairs)}"}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", choices=["distribution", "sampling-frozen", "sampling-grad", "judge"])
    args = ap.parse_args()
    if args.only:
        if args.only == "judge":
            row = judge(args.threads)
        else:
            row = distribution(args.threads) if args.only == "distribution" else sampling(args.threads,
                                                                                           args.only == "sampling-frozen")
        print("RESULT " + json.dumps(row), flush=True)
        return
    for only in ("distribution", "sampling-grad", "sampling-frozen", "judge"):
        proc = subprocess.run([sys.executable, __file__, "--only", only, "--threads", str(args.threads)],
                              capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        print(lines[-1][len("RESULT "):] if lines else json.dumps({"what": only, "error": proc.stderr[-600:]}),
              flush=True)


if __name__ == "__main__":
    main()
