"""One RLAIF round by a peer built by hand from transformers + TRL + PEFT, and the same round by `rlaif run`,
one after the other on this machine, each in its own process: wall time per stage, whole-process wall time and
CPU-seconds (user + system: less sensitive to the machine's drift), peak RSS, and the ratio per stage.

    .venv/bin/python bench/round_vs_peer.py                        # peer, ours (gate measured), ours (gate cached)
    .venv/bin/python bench/round_vs_peer.py --skip peer            # ours only
    .venv/bin/python bench/round_vs_peer.py --only peer            # one side (used internally)
    .venv/bin/python bench/round_vs_peer.py --repeat 3             # interleaved, medians and per-repetition ratios
    .venv/bin/python bench/round_vs_peer.py --peer-both-orders     # and a peer whose judge reads both orders
    .venv/bin/python bench/round_vs_peer.py --pool A.log B.log     # one table from earlier invocations' printed rows

The work is the same on both sides: ``--prompts`` train prompts x ``--n`` candidates of ``--new-tokens`` tokens
(the prompts and sampling settings of configs/quick.yaml with the overrides below), one DPO epoch over one pair
per prompt (batch 2, LoRA r16 alpha 32 on every linear layer, max length 384), and ``--eval-prompts`` held-out
prompts answered by the start and the trained policy and compared by the judge.

The peer is what a user would write with the libraries' defaults: ``model.generate`` with
``num_return_sequences``; a one-token pairwise judge (the policy's own model asked "A or B", one order, the
larger of the two letters' logits wins: its labels carry position bias, ours are order-free soft labels);
TRL's ``DPOTrainer`` (reference log-probs per step, its default); eval by the same one-token judge.
``--peer-both-orders`` adds a second peer whose judge also reads every pair with the responses swapped and
averages P(first) over the two orders (free of position bias, twice the judge's work): nearer in kind to ours.
Ours is `rlaif run -c configs/quick.yaml` with ``--prompts 24 --n 2 ...`` turned into overrides, monitor,
red team, anchors and benchmarks off (the peer has none); once with the judge gate measured (an empty gate
cache) and once with the gate read from the cache the first run filled. Needs the `test` extra (trl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STAGES = ("generate", "label", "train", "eval")
ROOT = Path(__file__).resolve().parents[1]


def our_overrides(args) -> list[str]:
    return [f"data.max_train_prompts={args.prompts}", f"generate.n={args.n}", f"generate.max_new_tokens={args.new_tokens}",
            f"data.max_eval_prompts={args.eval_prompts}", f"eval.max_new_tokens={args.new_tokens}", "train.epochs=1",
            "train.batch_size=2", "train.max_length=384", "train.lora_r=16", "train.lora_alpha=32", "monitor.every=0",
            "eval.red_team=null", "eval.anchors=null", "eval.benchmarks=[]", f"model.threads={args.threads}",
            *args.overrides]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def children_cpu_s() -> float:
    """User + system CPU-seconds of the finished child processes so far: a process's difference of two readings is
    the work it did, which drifts less with the machine's speed than its wall time (both sides use both cores)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the peer ------------------------------------------------------------------------------------------------

JUDGE = ("Which response answers the request better?\n\nRequest:\n{prompt}\n\nResponse A:\n{a}\n\n"
         "Response B:\n{b}\n\nAnswer with one letter, A or B.")


def peer(args) -> dict:
    t_process = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from openrlaif.config import load_config
    from openrlaif.data.prompts import run_prompts
    from openrlaif.models.loading import resolve_model

    cfg = load_config(ROOT / "configs" / "quick.yaml", our_overrides(args))  # the same prompts and settings
    train_prompts = [p.messages for p in run_prompts(cfg.data, "train", cfg.data.max_train_prompts)]
    heldout = [p.messages for p in run_prompts(cfg.data, "heldout", cfg.data.max_eval_prompts)]
    path = resolve_model(cfg.model.policy)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    times = {}

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()

    def sample(m, convs, n, batch, max_new_tokens):
        out = []
        for i in range(0, len(convs), max(1, batch // n)):
            chunk = convs[i : i + max(1, batch // n)]
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = m.generate(**enc, do_sample=True, temperature=cfg.generate.temperature, top_p=cfg.generate.top_p,
                                 max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [texts[j : j + n] for j in range(0, len(texts), n)]
        return out

    def letter_probs(m, convs, firsts, seconds, batch=8):
        """P(letter A) for each pair shown as A = first, B = second: one forward per pair."""
        ids = [tok(" A", add_special_tokens=False).input_ids[-1], tok(" B", add_special_tokens=False).input_ids[-1]]
        out = []
        for i in range(0, len(convs), batch):
            texts = [tok.apply_chat_template([{"role": "user", "content": JUDGE.format(prompt=c[-1]["content"], a=a, b=b)}],
                                             tokenize=False, add_generation_prompt=True) + "The better response is"
                     for c, a, b in zip(convs[i : i + batch], firsts[i : i + batch], seconds[i : i + batch])]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                logits = m(**enc).logits[:, -1, ids]
            out += torch.softmax(logits.float(), -1)[:, 0].tolist()
        return out

    def judge(m, convs, firsts, seconds):
        """Whether the first response wins: one order (the larger letter logit), or with --both-orders the mean of
        P(first) over both orders (the pair also read with the responses swapped: no position bias, twice the work)."""
        p = letter_probs(m, convs, firsts, seconds)
        if args.both_orders:
            p = [(x + 1 - y) / 2 for x, y in zip(p, letter_probs(m, convs, seconds, firsts))]
        return [x > 0.5 for x in p]

    # 1. generate: n candidates per train prompt.
    t0 = time.perf_counter()
    candidates = sample(model, train_prompts, args.n, cfg.generate.batch_size, args.new_tokens)
    times["generate"] = time.perf_counter() - t0
    # 2. label: the first two candidates of each prompt, judged once.
    t0 = time.perf_counter()
    first_wins = judge(model, train_prompts, [c[0] for c in candidates], [c[1] for c in candidates])
    rows = [{"prompt": conv, "chosen": [{"role": "assistant", "content": c[0] if w else c[1]}],
             "rejected": [{"role": "assistant", "content": c[1] if w else c[0]}]}
            for conv, c, w in zip(train_prompts, candidates, first_wins) if c[0].strip() != c[1].strip()]
    times["label"] = time.perf_counter() - t0
    # 3. train: TRL's DPOTrainer with a LoRA adapter, its defaults otherwise.
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=2, learning_rate=cfg.train.learning_rate,
                           num_train_epochs=1, max_length=384, beta=cfg.train.beta, use_cpu=True, report_to=[],
                           save_strategy="no", logging_steps=1, disable_tqdm=True)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=lora)
        trainer.train()
        trained = trainer.model
    trained.eval()
    times["train"] = time.perf_counter() - t0
    # 4. eval: the start and the trained policy answer the held-out prompts; the judge compares them.
    t0 = time.perf_counter()
    torch.manual_seed(1)
    new = [a[0] for a in sample(trained, heldout, 1, cfg.eval.batch_size, args.new_tokens)]
    with trained.disable_adapter():
        old = [a[0] for a in sample(trained, heldout, 1, cfg.eval.batch_size, args.new_tokens)]
        wins = judge(trained, heldout, new, old)
    times["eval"] = time.perf_counter() - t0
    return {"what": "peer, both orders" if args.both_orders else "peer",
            "stages": {k: round(v, 1) for k, v in times.items()}, "pairs": len(rows),
            "win_rate": round(sum(wins) / len(wins), 3), "wall_s": round(time.perf_counter() - t_process, 1)}


# --- ours ----------------------------------------------------------------------------------------------------


def ours(args, cache: str, label: str) -> dict:
    """`rlaif run` in a subprocess (the whole-process wall time), stage times from its manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [str(Path(sys.executable).with_name("rlaif")), "run", "-c", str(ROOT / "configs" / "quick.yaml"), "-o",
               str(out), *our_overrides(args)]
        env = {**os.environ, "OPENRLAIF_CACHE": cache}
        t0, cpu0 = time.perf_counter(), children_cpu_s()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
        if proc.returncode != 0:
            raise SystemExit(f"rlaif run failed:\n{proc.stderr[-3000:]}")
        manifest = json.loads((out / "manifest.json").read_text())
        st = {s: manifest["stages"][f"round_1/{s}"] for s in STAGES}
        judge_stats = json.loads((out / "round_1" / "judge_stats.json").read_text())
        ev = json.loads((out / "round_1" / "eval.json").read_text())
        return {"what": label, "stages": {s: st[s]["wall_s"] for s in STAGES}, "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "peak_rss_mb": max(st[s].get("peak_rss_mb") or 0 for s in STAGES),
                "pairs": st["train"]["summary"]["pairs"], "win_rate": round(ev["win_rate"], 3),
                "gate_s": (judge_stats.get("gate") or {}).get("wall_s"),
                "gate_cached": bool((judge_stats.get("gate") or {}).get("cached")),
                "generate_tok_s": st["generate"]["summary"]["tokens_per_s"],
                "eval_tok_s": ev.get("generation_tokens_per_s")}


def isolated_cache() -> str:
    """A user cache with the converted models of the real one and no gate figures: the first run measures."""
    from openrlaif.models.loading import cache_dir

    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-cache-"))
    real = cache_dir()
    for name in ("models",):
        if (real / name).exists():
            (tmp / name).symlink_to(real / name)
    return str(tmp)


def one_invocation(args, ours_first: bool = False) -> list[dict]:
    """The peer (and the both-orders peer), then ours with the gate measured (an empty gate cache) and cached, each
    in its own process; ``ours_first`` runs ours before the peers. The rows come back peers first either way."""

    def peer_run(both: bool) -> list[dict]:
        cmd = [sys.executable, __file__, "--only", "peer", "--prompts", str(args.prompts), "--n", str(args.n),
               "--new-tokens", str(args.new_tokens), "--eval-prompts", str(args.eval_prompts), "--threads",
               str(args.threads), *(["--both-orders"] if both else []), *args.overrides]
        t0, cpu0 = time.perf_counter(), children_cpu_s()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        cpu = children_cpu_s() - cpu0
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"the peer failed:\n{proc.stderr[-3000:]}")
        row = json.loads(lines[-1][len("RESULT "):])
        row["wall_s"] = round(time.perf_counter() - t0, 1)  # the whole process, imports included
        row["cpu_s"] = round(cpu, 1)
        return [row]

    def ours_runs() -> list[dict]:
        cache = isolated_cache()
        return [ours(args, cache, label) for label in ("ours, gate measured", "ours, gate cached")]

    peers = [lambda both=both: peer_run(both) for both in ((False, True) if args.peer_both_orders else (False,))
             if "peer" not in args.skip]
    mine = [ours_runs] if "ours" not in args.skip else []
    done = {}
    for job in (mine + peers) if ours_first else (peers + mine):
        done[job] = job()
        for row in done[job]:
            print(json.dumps(row), flush=True)
    return [row for job in peers + mine for row in done[job]]


def median_row(rows: list[dict]) -> dict:
    """One column of the table from several repetitions: the median of each stage and of the wall time, the
    largest peak RSS."""
    import statistics

    out = dict(rows[0])
    out["what"] = f"{rows[0]['what']} (median of {len(rows)})"
    out["stages"] = {s: statistics.median(r["stages"][s] for r in rows) for s in STAGES}
    out["wall_s"] = round(statistics.median(r["wall_s"] for r in rows), 1)
    out["cpu_s"] = round(statistics.median(r["cpu_s"] for r in rows), 1)
    out["peak_rss_mb"] = max(r.get("peak_rss_mb") or 0 for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", choices=["peer"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["peer", "ours"])
    ap.add_argument("--repeat", type=int, default=1, help="invocations one after the other (peer, ours measured, "
                    "ours cached each time; every second one runs ours first, so a machine that drifts slower or "
                    "faster favours neither side): the table shows medians, and the ratio of every repetition is "
                    "printed (the machine's speed drifts ~15%% between invocations)")
    ap.add_argument("--both-orders", action="store_true", help=argparse.SUPPRESS)  # the peer process's judge
    ap.add_argument("--peer-both-orders", action="store_true",
                    help="also run the peer with its judge reading every pair in both orders (the mean of P(first); "
                         "a position-debiased peer, nearer our order-free labels), as a second peer column")
    ap.add_argument("--pool", nargs="+", metavar="LOG", help="run nothing: pool the rows printed by earlier "
                    "invocations (their logs) into one table of medians and per-repetition ratios")
    ap.add_argument("overrides", nargs="*", help="more overrides for our side (key=value)")
    args = ap.parse_args()
    if args.pool:
        report(pooled_repetitions(args.pool))
        return
    if args.only == "peer":
        row = peer(args)
        row["peak_rss_mb"] = peak_rss_mb()
        print("RESULT " + json.dumps(row), flush=True)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; {time.strftime('%Y-%m-%d')}; "
          f"{args.prompts} prompts x {args.n}, {args.new_tokens} new tokens, {args.eval_prompts} held-out prompts",
          flush=True)
    reps = []
    for rep in range(args.repeat):
        if args.repeat > 1:
            print(f"repetition {rep + 1} of {args.repeat}", flush=True)
        reps.append(one_invocation(args, ours_first=rep % 2 == 1))
    report(reps)


def report(reps: list[list[dict]]) -> None:
    """The per-repetition ratios (with more than one repetition) and the table of medians. ``reps``: one list of
    rows per repetition, every one in the same order of columns (peers first)."""
    results = reps[0] if len(reps) == 1 else [median_row([r[j] for r in reps]) for j in range(len(reps[0]))]
    peers = [j for j, row in enumerate(reps[0]) if row["what"].startswith("peer")]
    if len(reps) > 1:
        for p in peers:
            for j in range(len(peers), len(reps[0])):
                ratios = [r[p]["wall_s"] / r[j]["wall_s"] for r in reps]
                cpu = [r[p]["cpu_s"] / r[j]["cpu_s"] for r in reps]
                print(f"{reps[0][j]['what']} against {reps[0][p]['what']}: whole-process ratio per repetition "
                      + ", ".join(f"{x:.2f}x" for x in ratios) + "; CPU-seconds ratio "
                      + ", ".join(f"{x:.2f}x" for x in cpu), flush=True)
    print("\n| stage | " + " | ".join(r["what"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    base = results[0] if results[0]["what"].startswith("peer") else None
    for s in STAGES:
        cells = []
        for r in results:
            ratio = f" ({base['stages'][s] / r['stages'][s]:.2f}x)" if base and r is not base and r["stages"][s] else ""
            cells.append(f"{r['stages'][s]:.1f} s{ratio}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    cells = []
    for r in results:
        ratio = f" ({base['wall_s'] / r['wall_s']:.2f}x)" if base and r is not base else ""
        cells.append(f"**{r['wall_s']:.1f} s**{ratio}, {r.get('peak_rss_mb', '?')} MB")
    print("| **wall, whole process** | " + " | ".join(cells) + " |")
    cells = []
    for r in results:
        ratio = f" ({base['cpu_s'] / r['cpu_s']:.2f}x)" if base and r is not base else ""
        cells.append(f"{r['cpu_s']:.1f} s{ratio}")
    print("| CPU-seconds, whole process (user + system) | " + " | ".join(cells) + " |")
    print("| pairs trained / win rate (its own judge) | "
          + " | ".join(f"{r['pairs']} / {r['win_rate']}" for r in results) + " |")


def pooled_repetitions(paths: list[str]) -> list[list[dict]]:
    """The repetitions printed by earlier invocations (their JSON rows, one per process, in the logs at ``paths``),
    pooled: the rows grouped by column and dealt out in order, so the k-th repetition holds each column's k-th row.
    Only the columns every log has are pooled (a log with the both-orders peer pools with one without it on the
    others); the columns must then have as many rows each (the same number of repetitions per log)."""
    columns: dict[str, list[dict]] = {}
    common: set[str] | None = None
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SystemExit(f"--pool: cannot read {path} ({exc.strerror}); give the logs of earlier invocations")
        rows = [json.loads(line) for line in lines if line.startswith('{"what"')]
        if not rows:
            raise SystemExit(f"--pool: {path} holds no rows (the JSON lines this script prints, one per process)")
        for row in rows:
            columns.setdefault(row["what"], []).append(row)
        common = {row["what"] for row in rows} if common is None else common & {row["what"] for row in rows}
    dropped = sorted(set(columns) - common)
    if dropped:
        print(f"pooled without {', '.join(dropped)} (not in every log)", flush=True)
    # the kept columns, peers first as printed (a stable sort keeps each group's order of first appearance)
    order = sorted((name for name in columns if name in common), key=lambda name: not name.startswith("peer"))
    counts = {name: len(columns[name]) for name in order}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"--pool: the columns have different numbers of rows ({counts}); pool logs of whole "
                         "invocations")
    return [[columns[name][k] for name in order] for k in range(counts[order[0]])]


if __name__ == "__main__":
    main()
