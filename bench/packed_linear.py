"""Linear layers on oneDNN-packed bf16 weights (``models.loading.pack_frozen``) against plain ``F.linear``.

    .venv/bin/python bench/packed_linear.py [--repeats 8] [--rows 48 16] [--steps 48]

1. Products alone: 30 distinct weights of each of SmolLM2-135M's shapes (so they do not stay in cache), bf16, at
   1 to 1,224 rows; the outputs compared bit for bit.
2. Decoding steps of the embedded model: a plain bf16 copy and a packed one (both loaded fresh), the built-in
   train prompts' prefill, then ``--steps`` greedy steps on a KV cache, the two copies alternated ``--repeats``
   times; medians and the paired ratios (this machine's speed drifts within a minute).
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def products(repeats: int) -> None:
    from openrlaif.models.loading import packed_linear, packed_weight

    for out_f, in_f, n in [(1536, 576, 30), (576, 1536, 30), (576, 576, 30), (49152, 576, 1)]:
        weights = [(torch.randn(out_f, in_f) * 0.02).bfloat16() for _ in range(n)]
        packed = [packed_weight(w) for w in weights]
        for rows in (1, 16, 48, 64, 1224):
            x = torch.randn(rows, in_f).bfloat16()
            assert torch.equal(packed_linear(x, packed[0], None), torch.nn.functional.linear(x, weights[0]))
            times = {"plain": [], "packed": []}
            for _ in range(repeats):
                for name, call in (("plain", lambda: [torch.nn.functional.linear(x, w) for w in weights]),
                                   ("packed", lambda: [packed_linear(x, p, None) for p in packed])):
                    t0 = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t0)
            a, b = min(times["plain"]), min(times["packed"])
            print(f"products {out_f}x{in_f} x{n}, {rows} rows: plain {a * 1e3:.2f} ms, packed {b * 1e3:.2f} ms "
                  f"({a / b:.2f}x), bit-identical", flush=True)


def decoding(rows: int, steps: int, repeats: int) -> None:
    from transformers import DynamicCache

    from openrlaif.data.prompts import load_prompts, select
    from openrlaif.models.loading import encode_prompts, load_causal_lm, pack_frozen

    plain = load_causal_lm("embedded", "bfloat16")
    packed = load_causal_lm("embedded", "bfloat16").model
    pack_frozen(packed)
    tok = plain.tokenizer
    tok.padding_side = "left"
    prompts = select(load_prompts("builtin"), "train", None)
    enc = tok.pad({"input_ids": encode_prompts(tok, [p.messages for p in prompts[:rows]])}, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    rows = ids.shape[0]

    def per_step(model) -> float:
        cache, positions = DynamicCache(config=model.config), (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        seen, pos, nxt = mask, positions[:, -1:], out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            seen, pos = torch.cat([seen, torch.ones(rows, 1, dtype=seen.dtype)], 1), pos + 1
            nxt = model(input_ids=nxt, attention_mask=seen, position_ids=pos, past_key_values=cache,
                        use_cache=True).logits[:, -1:].argmax(-1)
        return (time.perf_counter() - t0) / steps * 1e3

    with torch.inference_mode():
        per_step(plain.model), per_step(packed)
        a, b = [], []
        for _ in range(repeats):
            a.append(per_step(plain.model))
            b.append(per_step(packed))
    print(f"decoding, {rows} rows: plain median {statistics.median(a):.1f} ms/step, packed "
          f"{statistics.median(b):.1f} ms/step; paired ratios {[round(x / y, 2) for x, y in zip(a, b)]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rows", type=int, nargs="*", default=[48, 16])
    ap.add_argument("--steps", type=int, default=48)
    args = ap.parse_args()
    from openrlaif.models.loading import packing_available, set_threads

    if not packing_available():
        raise SystemExit("this machine cannot pack bf16 weights for oneDNN (no native bf16): nothing to measure")
    set_threads(2)
    import platform
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    products(args.repeats)
    for rows in args.rows:
        decoding(rows, args.steps, args.repeats)


if __name__ == "__main__":
    main()
