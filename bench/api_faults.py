"""The HTTP judge against a loopback `rlaif serve` app that fails 30% of requests on purpose.

    .venv/bin/python bench/api_faults.py [--pairs 40] [--rate 0.3] [--seed 7] [--model DIR]

Without --model a tiny random Llama is built in a temp directory (as the tests do), so this needs no
download. Prints, as JSON: pairs labelled / unscored / wrong (a labelled pair whose probability differs
from a fault-free run by more than 1e-6), the faults injected by kind, and the judge's usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from openrlaif.data.constitution import load_constitution
from openrlaif.feedback.api import OpenAICompatibleJudge
from openrlaif.feedback.types import Comparison
from openrlaif.models.loading import load_causal_lm
from openrlaif.serve import FaultPlan, ServerThread, create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--rate", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", help="a local HF model directory (default: a tiny random Llama)")
    args = ap.parse_args()
    model_dir = args.model
    if model_dir is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import build_tiny_model

        model_dir = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    lm = load_causal_lm(model_dir)
    principles = load_constitution("builtin").principles
    items = [Comparison(f"Question number {i}: how do plants grow?", f"They use sunlight {i}.",
                        f"Water and soil, {i * 7} times.", principles[i % len(principles)]) for i in range(args.pairs)]
    vocab = len(lm.tokenizer)
    with ServerThread(create_app(lm.model, lm.tokenizer, "m")) as url:
        reference = OpenAICompatibleJudge(url, "m", prefill=True, top_logprobs=vocab).compare(items)
    faults = FaultPlan(rate=args.rate, hang_s=1.5, seed=args.seed)
    with ServerThread(create_app(lm.model, lm.tokenizer, "m", faults=faults)) as url:
        judge = OpenAICompatibleJudge(url, "m", prefill=True, top_logprobs=vocab, concurrency=4, timeout_s=1.0,
                                      max_retries=8, backoff_base_s=0.01, backoff_cap_s=0.1)
        verdicts = judge.compare(items)
    wrong = sum(v.p_first is not None and abs(v.p_first - r.p_first) > 1e-6 for r, v in zip(reference, verdicts))
    print(json.dumps({"pairs": len(items), "labelled": sum(v.p_first is not None for v in verdicts),
                      "unscored": sum(v.p_first is None for v in verdicts), "wrong": wrong,
                      "injected": faults.injected, "usage": judge.usage.as_dict()}))


if __name__ == "__main__":
    main()
