"""One decoder forward of the embedded model under bf16 autocast, with its linear layers' float32 weights cast at
every call (torch's autocast for weights that take no gradient) and cast once (``models.loading.cast_frozen_once``).

    .venv/bin/python bench/cast_once.py [--repeats 5]

Shapes: a judge batch (8 x 110 tokens), an eval batch (16 x 64) and a forked DPO pair (2 x 170), each timed
``--repeats`` times, the two ways interleaved; prints the medians and checks that the outputs are bit-identical.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from openrlaif.models.loading import cast_frozen_once, load_causal_lm, set_threads

    set_threads(2)
    plain = load_causal_lm("embedded", "float32").model.eval()
    once = copy.deepcopy(plain)
    cast_frozen_once(once)
    torch.manual_seed(0)
    for shape in ((8, 110), (16, 64), (2, 170)):
        ids = torch.randint(100, 10000, shape)
        times: dict[str, list[float]] = {"cast every call": [], "cast once": []}
        outs = {}
        for _ in range(args.repeats):
            for name, model in (("cast every call", plain), ("cast once", once)):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    t0 = time.perf_counter()
                    outs[name] = model.model(input_ids=ids).last_hidden_state
                    times[name].append(time.perf_counter() - t0)
        same = torch.equal(outs["cast every call"], outs["cast once"])
        print(f"{shape[0]} x {shape[1]} tokens: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.0f} ms"
                                                             for k, v in times.items()) + f"; identical: {same}")


if __name__ == "__main__":
    main()
