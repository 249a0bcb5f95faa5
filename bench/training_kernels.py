"""Four pieces of a training stage on the embedded model, each against what it replaced.

    .venv/bin/python bench/training_kernels.py [--steps 8] [--widths 64,128,192,320]
                                               [--only head|dpo|optimizer|reference]

1. Log-probs of the targets over SmolLM2's 49k vocabulary for 256 rows: ``optimize.losses.gathered_logprobs``
   (torch's fused log-softmax + gather) against gather minus logsumexp, forward + backward and forward alone
   (medians of 15, the input's copy subtracted).
2. A LoRA DPO step (bf16 autocast, 2 forked pairs of the quick config's train prompts with random replies of each
   width) with the math attention kernel on short rows (``model.math_attention_up_to``) and with the flash kernel,
   ``--steps`` steps each in alternation after one warm-up step each; prints the medians and the forked rows'
   width. Results: docs/benchmarks.md (session 38).
3. The optimizer step over the LoRA r16 adapter of every linear layer (the bench round's 420 tensors, random
   gradients): ``models.accel.adamw`` on a CPU (torch's fused AdamW) against torch's default and ``foreach`` AdamW,
   medians of 30 steps after 3 (session 39).
4. DPO's reference pass (no gradients, adapter off, bf16 autocast) over 24 forked pairs of the quick config's train
   prompts with random 64-token replies, in batches of 2 pairs (the steps' batches, as before session 39) and of
   4, 8 (``stages.dpo.REFERENCE_PAIRS``) and 12; 3 rounds in alternation, medians, and whether the log-probs
   equal those of batches of 2 (session 39).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, reps: int = 15) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def head_kernels() -> None:
    from openrlaif.optimize.losses import gathered_logprobs

    def gather_minus_logsumexp(logits, targets):
        return torch.gather(logits, 1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 49152, generator=g) * 3
    targets = torch.randint(0, 49152, (256,), generator=g)
    copy_ms = median_ms(lambda: x0.clone())
    for name, fn in (("gather - logsumexp", gather_minus_logsumexp), ("gathered_logprobs", gathered_logprobs)):
        def both(fn=fn):
            x = x0.clone().requires_grad_(True)
            fn(x, targets).sum().backward()

        def forward(fn=fn):
            with torch.inference_mode():
                fn(x0, targets)

        print(f"256 x 49152 log-probs, {name}: forward + backward {median_ms(both) - copy_ms:.1f} ms, "
              f"forward {median_ms(forward):.1f} ms", flush=True)


def dpo_steps(steps: int, widths: list[int]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from openrlaif.config import load_config
    from openrlaif.data.prompts import run_prompts
    from openrlaif.models.loading import cast_frozen_once, encode_prompts, load_causal_lm, set_threads
    from openrlaif.models.logprobs import Encoded, SequenceLogprobs, pair_logprobs
    from openrlaif.models.policy import add_lora

    cfg = load_config(ROOT / "configs" / "quick.yaml", ["train.lora_r=16", "train.lora_alpha=32"])
    set_threads(2)
    torch.manual_seed(0)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype)  # the flash kernel unless asked per step below
    tok = loaded.tokenizer
    model = add_lora(loaded.model, cfg.train)
    cast_frozen_once(model, "bfloat16")
    model.train()
    policy = SequenceLogprobs(model)
    prompts = encode_prompts(tok, [p.messages for p in run_prompts(cfg.data, "train", 8)])
    rng = random.Random(0)
    for width in widths:
        def reply(prompt):
            return Encoded(prompt + [rng.randrange(100, 40000) for _ in range(width)], [0] * len(prompt) + [1] * width)

        chosen, rejected = [reply(p) for p in prompts], [reply(p) for p in prompts]

        def step(i: int, kernel) -> float:
            idx = [2 * i % len(prompts), (2 * i + 1) % len(prompts)]
            t0 = time.perf_counter()
            with sdpa_kernel(kernel) if kernel else contextlib.nullcontext():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    c, r = pair_logprobs(policy, [chosen[j] for j in idx], [rejected[j] for j in idx],
                                         tok.pad_token_id, True)
                (-torch.nn.functional.logsigmoid(0.1 * (c - r))).mean().backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        kernels = {"flash": None, "math": SDPBackend.MATH}
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for name, kernel in kernels.items():
            step(0, kernel)  # warm-up
        for i in range(steps):
            for name in (("flash", "math") if i % 2 else ("math", "flash")):
                times[name].append(step(i + 1, kernels[name]))
        rows = len(prompts[0]) + 2 * width
        print(f"DPO step, replies of {width} tokens (forked rows of ~{rows} tokens): flash "
              f"{statistics.median(times['flash']):.2f} s, math {statistics.median(times['math']):.2f} s", flush=True)


def optimizer_steps() -> None:
    from openrlaif.config import load_config
    from openrlaif.models.loading import load_causal_lm, set_threads
    from openrlaif.models.policy import add_lora

    set_threads(2)
    cfg = load_config(ROOT / "configs" / "quick.yaml", ["train.lora_r=16", "train.lora_alpha=32"])
    model = add_lora(load_causal_lm(cfg.model.policy, cfg.model.dtype).model, cfg.train)
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for name, options in (("default", {}), ("foreach", {"foreach": True}), ("fused (models.accel.adamw on a CPU)",
                                                                          {"fused": True})):
        params = [torch.nn.Parameter(torch.randn(*shape, generator=generator) * 0.01) for shape in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **options)
        for _ in range(3):
            optimizer.step()
        ms = median_ms(optimizer.step, 30)
        print(f"AdamW step over {len(params)} LoRA tensors ({sum(p.numel() for p in params):,} values), {name}: "
              f"{ms:.1f} ms", flush=True)


def reference_batches(rounds: int = 3) -> None:
    from openrlaif.config import load_config
    from openrlaif.data.prompts import run_prompts
    from openrlaif.models.loading import cast_frozen_once, encode_prompts, load_causal_lm, set_threads
    from openrlaif.models.logprobs import Encoded, SequenceLogprobs, pair_logprobs
    from openrlaif.models.policy import add_lora, reference_policy

    cfg = load_config(ROOT / "configs" / "quick.yaml", ["train.lora_r=16", "train.lora_alpha=32"])
    set_threads(2)
    loaded = load_causal_lm(cfg.model.policy, cfg.model.dtype, math_attention_up_to=cfg.model.math_attention_up_to)
    tok = loaded.tokenizer
    model = add_lora(loaded.model, cfg.train)
    cast_frozen_once(model, "bfloat16")
    model.eval()
    prompts = encode_prompts(tok, [p.messages for p in run_prompts(cfg.data, "train", None)])
    prompts = (prompts * 24)[:24]
    rng = random.Random(0)

    def reply(prompt):
        return Encoded(prompt + [rng.randrange(100, 40000) for _ in range(64)], [0] * len(prompt) + [1] * 64)

    chosen, rejected = [reply(p) for p in prompts], [reply(p) for p in prompts]

    def run(batch: int) -> tuple[float, list[float]]:
        t0, out = time.perf_counter(), []
        for a in range(0, len(chosen), batch):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), reference_policy(model):
                c, r = pair_logprobs(SequenceLogprobs(model), chosen[a : a + batch], rejected[a : a + batch],
                                     tok.pad_token_id, True)
            out += [x for pair in zip(c.tolist(), r.tolist()) for x in pair]
        return time.perf_counter() - t0, out

    run(2)  # warm-up
    sizes = (2, 4, 8, 12)
    times: dict[int, list[float]] = {b: [] for b in sizes}
    values: dict[int, list[float]] = {}
    for _ in range(rounds):
        for b in sizes:
            seconds, values[b] = run(b)
            times[b].append(seconds)
    for b in sizes:
        same = "the same log-probs" if values[b] == values[2] else (
            f"log-probs differ by up to {max(abs(x - y) for x, y in zip(values[b], values[2])):.2e}")
        print(f"reference pass, 24 pairs in batches of {b}: {statistics.median(times[b]):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times[b])}); {same} as in batches of 2", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--widths", default="64,128,192,320")
    ap.add_argument("--only", choices=["head", "dpo", "optimizer", "reference"], help="run one of the four parts")
    args = ap.parse_args()
    if args.only in (None, "head"):
        head_kernels()
    if args.only in (None, "dpo"):
        dpo_steps(args.steps, [int(w) for w in args.widths.split(",")])
    if args.only in (None, "optimizer"):
        optimizer_steps()
    if args.only in (None, "reference"):
        reference_batches()


if __name__ == "__main__":
    main()
