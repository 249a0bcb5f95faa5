"""Reply features (the fitted heads' and the injection probe's input): replies to one conversation in one row.

    .venv/bin/python bench/reply_features.py [--repeats 5] [--layer 15] [--replies 2]

The built-in calibration pairs give real conversations with ``--replies`` replies each (a pair's chosen and
rejected, then the same replies once more with a few words added, as a round's candidates to one prompt). Each
repetition reads them all on the embedded judge as the label stage does (float32 weights, bf16 autocast where
the processor has it natively), at ``--layer``, once with every reply in its own padded row and once with
``models.features``' forks (a conversation's replies in one row, the conversation once), interleaved; the memo
of a frozen model is emptied before each read. Prints the median seconds of each and the largest difference
between their features. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layer", type=int, default=15, help="the shipped injection probe reads layer 15")
    ap.add_argument("--replies", type=int, default=2, choices=[2, 4], help="replies per conversation")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward (the judge's label.batch_size)")
    args = ap.parse_args()

    import openrlaif.models.features as features
    from openrlaif.core.text import normalize_candidate
    from openrlaif.models.loading import autocast_matmuls, load_causal_lm, native_bf16, set_threads

    set_threads(2)
    lm = load_causal_lm("embedded", "float32")
    model = lm.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if native_bf16():
        autocast_matmuls(model)
    rows = [json.loads(line) for line in
            resources.files("openrlaif.data").joinpath("calibration_pairs.jsonl").read_text().splitlines() if line]
    convs, replies = [], []
    for row in rows:
        texts = [row["chosen"], row["rejected"]]
        if args.replies == 4:
            texts += [t + " I hope this helps." for t in texts]
        for text in texts:
            convs.append([{"role": "user", "content": row["prompt"]}])
            replies.append(normalize_candidate(text))
    print(f"{len(replies)} replies to {len(rows)} conversations, layer {args.layer}, "
          f"{'bf16 autocast' if native_bf16() else 'float32'}, torch {torch.__version__}")
    forks = features.forks_supported
    times: dict[str, list[float]] = {"each reply in its own row": [], "a conversation's replies in one row": []}
    out = {}
    for _ in range(args.repeats):
        for name, fork in zip(times, (False, True)):
            features.forks_supported = forks if fork else (lambda m: False)
            model._openrlaif_features = {}
            t0 = time.perf_counter()
            out[name] = features.reply_features(model, lm.tokenizer, convs, replies, layers=[args.layer],
                                                batch_size=args.batch_size, description=name)
            times[name].append(time.perf_counter() - t0)
    features.forks_supported = forks
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    a, b = out.values()
    # bf16 rounds differently in other batch shapes; float32 agrees to ~1e-5 (tests/integration/test_features.py)
    for k in a:
        rel = ((a[k] - b[k]).norm(dim=1) / a[k].norm(dim=1)).max().item()
        print(f"{k}: largest relative difference of a reply's feature vector {rel:.2e}")


if __name__ == "__main__":
    main()
