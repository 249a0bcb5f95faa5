"""Sampling throughput on the embedded model: transformers' own top-p sampling vs ``sampling.nucleus``.

    .venv/bin/python bench/sampling.py [--batch 64] [--n 4] [--new-tokens 64] [--repeats 1]

Both paths run ``generate`` on the same left-padded batch of built-in train prompts (with the demo's
data.instruction), every row forced to ``--new-tokens`` (min_new_tokens) so both do the same work; the
prefill is timed apart (one forward over the prompts). Also prints the time of one step's draw, on the model's
own logits of every step of one call (staged partial sorts vs one partial sort of 1024, row seeds as eval draws)
and on random logits of the vocabulary's width. With ``--n`` > 1 the batch is batch/n prompts x n
samples (a round's generate stage), and a third path computes each prompt's prefill once and shares its KV
cache among its n samples (``sampling.hf.generate_n``). A last path decodes the same rows in the lean loop of
``models.decoding`` (one prefill per prompt, no stop token, so every row runs to ``--new-tokens``; only where
``lean_decoder`` takes the model). ``--dtype bfloat16`` runs a bf16 copy (what
``model.sample_dtype: auto`` writes with). ``--compile`` adds the nucleus path on a static KV cache with the model's
forward under ``torch.compile`` (inductor): the first call, compilation included, and the best later call.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n", type=int, default=1, help="samples per prompt (the batch holds batch/n prompts)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compile", action="store_true", help="also: static KV cache + torch.compile")
    args = ap.parse_args()

    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from openrlaif.data.prompts import load_prompts, select
    from openrlaif.models.loading import encode_prompts, load_causal_lm, set_threads
    from openrlaif.sampling.nucleus import sample_nucleus, sampling_kwargs

    set_threads(2)
    lm = load_causal_lm("embedded", args.dtype)
    tok = lm.tokenizer
    tok.padding_side = "left"
    from openrlaif.sampling.hf import generate_n

    prompts = select(load_prompts("builtin", instruction="Answer in one sentence."), "train", None)[: args.batch // args.n]
    unique = tok.pad({"input_ids": encode_prompts(tok, [p.messages for p in prompts])}, return_tensors="pt")
    enc = {key: value.repeat_interleave(args.n, 0) for key, value in unique.items()}
    paths = {
        "transformers top-p (do_sample, top_k=0)": dict(do_sample=True, temperature=args.temperature,
                                                         top_p=args.top_p, top_k=0),
        "sampling.nucleus": sampling_kwargs(args.temperature, args.top_p),
    }
    if args.n > 1:
        paths["sampling.nucleus, one prefill per prompt (generate_n)"] = "shared"
    from openrlaif.models.decoding import lean_decoder
    from openrlaif.models.loading import pack_frozen

    if args.dtype == "bfloat16":
        pack_frozen(lm.model)  # as a sampler's bf16 copy runs (models.policy.load_merged(frozen=True))
    lean = lean_decoder(lm.model)
    if lean is not None:
        paths["sampling.nucleus, lean decoding loop (models.decoding)"] = "lean"
    results = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        lm.model(**enc)
        results["prefill_s"] = round(time.perf_counter() - t0, 2)
        for name, kwargs in paths.items():
            best = float("inf")
            for r in range(args.repeats):
                torch.manual_seed(r)
                t0 = time.perf_counter()
                if kwargs == "lean":
                    from openrlaif.sampling.hf import prefill

                    cache = prefill(lm.model, unique["input_ids"], unique["attention_mask"], args.n)
                    processor = sampling_kwargs(args.temperature, args.top_p)["logits_processor"]
                    lean.generate(enc["input_ids"], enc["attention_mask"], [cache], args.new_tokens, [],
                                  tok.pad_token_id, processor)
                elif kwargs == "shared":
                    generate_n(lm.model, unique["input_ids"], unique["attention_mask"], args.n,
                               **sampling_kwargs(args.temperature, args.top_p), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
                else:
                    lm.model.generate(**enc, **kwargs, max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
                best = min(best, time.perf_counter() - t0)
            tokens = args.batch * args.new_tokens
            results[name] = {"seconds": round(best, 2), "tok_per_s": round(tokens / best, 1)}
            print(f"{name}: {best:.1f} s, {tokens / best:.1f} tok/s", flush=True)
        if args.compile:
            plain = lm.model.forward
            lm.model.forward = torch.compile(plain)
            name, times = "sampling.nucleus, static KV cache + torch.compile", []
            for r in range(1 + max(args.repeats, 1)):
                torch.manual_seed(r)
                t0 = time.perf_counter()
                lm.model.generate(**enc, **sampling_kwargs(args.temperature, args.top_p), max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id,
                                  cache_implementation="static")
                times.append(time.perf_counter() - t0)
                print(f"{name}, call {r + 1}: {times[-1]:.1f} s", flush=True)
            tokens = args.batch * args.new_tokens
            results[name] = {"first_call_s": round(times[0], 1), "seconds": round(min(times[1:]), 2),
                             "tok_per_s": round(tokens / min(times[1:]), 1)}
            lm.model.forward = plain
        # the draw on this model's own logits at every step of one call: the staged partial sorts (top 64, then
        # 1024 for the rows that need it, then the whole row) against one partial sort of 1024
        from transformers import LogitsProcessorList

        from openrlaif.sampling.nucleus import NucleusSampler

        steps, sampler = [], NucleusSampler(args.temperature, args.top_p)

        def record(ids, scores):
            steps.append(scores.clone())
            return sampler(ids, scores)

        lm.model.generate(**enc, do_sample=False, logits_processor=LogitsProcessorList([record]),
                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
        for name, candidates in {"draw on the model's logits: sampling.nucleus (top 64, then 1024, then all)": (64, 1024),
                                 "draw on the model's logits: one partial sort of 1024, then all": (1024,)}.items():
            best = float("inf")
            for _ in range(3):
                gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]  # row seeds, as eval draws
                t0 = time.perf_counter()
                for x in steps:
                    sample_nucleus(x, args.temperature, args.top_p, candidates, gens)
                best = min(best, (time.perf_counter() - t0) / len(steps))
            results[name + " (s/step)"] = round(best, 4)
            print(f"{name}: {best * 1e3:.1f} ms/step", flush=True)
        logits = torch.randn(args.batch, lm.model.config.vocab_size) * 4
        for name, draw in {
            "draw: transformers warpers + softmax + multinomial": lambda x: torch.multinomial(torch.softmax(
                TopPLogitsWarper(args.top_p)(None, TemperatureLogitsWarper(args.temperature)(None, x.clone())), -1), 1),
            "draw: sampling.nucleus": lambda x: sample_nucleus(x, args.temperature, args.top_p),
        }.items():
            t0 = time.perf_counter()
            for _ in range(10):
                draw(logits)
            results[name + " (s/step)"] = round((time.perf_counter() - t0) / 10, 4)
    results.update(batch=args.batch, n=args.n, new_tokens=args.new_tokens, prompt_width=int(enc["input_ids"].shape[1]),
                   threads=torch.get_num_threads(), torch=torch.__version__, dtype=args.dtype)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
