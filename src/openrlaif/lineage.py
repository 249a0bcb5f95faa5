"""Lineage: where every artifact of a run came from.

When a stage finishes, its manifest entry gets an ``artifacts`` record: each output (file or directory)
with its sha256, each input artifact with the hash it had when the stage read it, the code version, the
model and judge identities, and the config sections that made it (and their hash). `rlaif show RUN_DIR`
prints the tree and marks an input whose producer's output has changed since.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from openrlaif.config import RunConfig
from openrlaif.core.store import RunStore, sha256_file

# What each stage writes (relative to round_K/) and which config sections decide it.
OUTPUTS = {
    "sft": ("sft",),
    "generate": ("candidates.jsonl",),
    "label": ("preferences.jsonl", "judge_stats.json", "revisions.jsonl"),
    "reward": ("reward_model",),
    "train": ("policy", "best_policy", "critic", "ref_logps.json"),
    "eval": ("eval.json", "samples.jsonl", "redteam.jsonl"),
}
SECTIONS = {
    "sft": ("model", "sft", "train"),
    "generate": ("model", "data", "generate"),
    "label": ("model", "data", "label", "feedback"),
    "reward": ("model", "reward", "pipeline"),
    "train": ("model", "data", "train", "rl", "ppo", "grpo", "monitor", "pipeline"),
    "eval": ("model", "data", "eval", "feedback"),
}


def sha256_path(path: Path) -> str:
    """A file's sha256, or for a directory the sha256 of its files' relative names and hashes."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def model_identity(spec: str) -> dict:
    """A model's name and a fingerprint of what was loaded: config.json and the weight files' names and sizes
    (fast, no multi-GB hashing); for 'embedded' also the GGUF file it was converted from."""
    from openrlaif.models.loading import EMBEDDED, embedded_gguf_path, resolve_model

    path = Path(resolve_model(spec))
    h = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
    out = {"spec": spec, "path": str(path), "fingerprint": h.hexdigest()[:16]}
    if spec == EMBEDDED:
        gguf = embedded_gguf_path()
        out["gguf"] = {"file": gguf.name, "size": gguf.stat().st_size}
    return out


def code_version() -> dict:
    """The package version, and the git commit when running from a checkout (dirty if it has local edits)."""
    from openrlaif.core.version import __version__

    out = {"openrlaif": __version__}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            if commit:
                out["git_commit"] = commit + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def stage_inputs(name: str, cfg: RunConfig, store: RunStore, k: int) -> dict[str, str]:
    """The run-directory artifacts ``name`` reads in round ``k``, as {relative path: producing stage key}."""
    inputs: dict[str, str] = {}

    def add(rel: str, stage: str, j: int) -> None:
        if (store.root / rel).exists():
            inputs[rel] = store.stage_key(stage, j)

    if name != "sft":
        add("round_1/sft", "sft", 1)  # the run's starting policy, when an sft stage made it
    if name == "train" and cfg.train.algo == "sft" and cfg.sft.data == "revisions":
        add(f"round_{k}/revisions.jsonl", "label", k)
    if k > 1 and name in ("generate", "train", "eval"):
        add(f"round_{k - 1}/policy", "train", k - 1)  # the policy this round starts from / compares with
    if name == "label":
        add(f"round_{k}/candidates.jsonl", "generate", k)
    if name == "reward" or (name == "train" and cfg.train.algo == "dpo"):
        rounds = range(1, k + 1) if cfg.pipeline.train_data != "newest" else [k]
        for j in rounds:
            add(f"round_{j}/preferences.jsonl", "label", j)
    if name == "train" and cfg.trains_on_reward_model:
        add(f"round_{k}/reward_model", "reward", k)
    if name == "eval":
        add(f"round_{k}/policy", "train", k)
    if name in ("reward", "train") and (store.root / "audit.sqlite").is_file():
        inputs["audit.sqlite"] = "audit desk"
    return inputs


def record(name: str, cfg: RunConfig, store: RunStore, k: int, inputs_before: dict[str, str]) -> dict:
    """The lineage record of a finished stage: outputs and inputs with hashes, code, models, config."""
    outputs = {}
    for rel in OUTPUTS.get(name, ()):
        path = store.path(rel, k)
        if path.exists():
            outputs[f"round_{k}/{rel}"] = sha256_path(path)
    names = SECTIONS.get(name, ()) + (("feedback",) if name == "train" and cfg.train.algo == "online_dpo" else ())
    sections = {s: getattr(cfg, s).model_dump(mode="json") for s in names}  # online DPO's judge labels its pairs
    models = {"policy": model_identity(cfg.model.policy)}
    if name in ("label", "eval", "train") and cfg.model.judge:
        models["judge"] = model_identity(cfg.model.judge)
    if cfg.feedback.api is not None and name in ("label", "eval", "train"):
        models["judge_api"] = {"base_url": cfg.feedback.api.base_url, "model": cfg.feedback.api.model}
    return {
        "outputs": outputs,
        "inputs": inputs_before,
        "code": code_version(),
        "models": models,
        "config_sections": sections,
        "config_sha256": hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest(),
    }


def input_hashes(name: str, cfg: RunConfig, store: RunStore, k: int) -> dict[str, dict]:
    """Hash the inputs before the stage runs (what it actually read): {path: {sha256, from}}."""
    out = {}
    for rel, producer in stage_inputs(name, cfg, store, k).items():
        path = store.root / rel
        out[rel] = {"sha256": sha256_path(path) if path.is_file() or path.is_dir() else None, "from": producer}
    return out


def verify(store: RunStore) -> list[str]:
    """Problems in a run's lineage: an input whose producing stage's recorded output hash differs from the
    hash the consumer read, or an output whose file changed since it was recorded."""
    stages = store.read_manifest().get("stages", {})
    problems = []
    for key, entry in stages.items():
        art = entry.get("artifacts")
        if not art or entry.get("status") != "done":
            continue
        for rel, digest in art["outputs"].items():
            path = store.root / rel
            if not path.exists():
                problems.append(f"{key}: output {rel} is missing")
            elif sha256_path(path) != digest:
                problems.append(f"{key}: output {rel} changed after the stage wrote it")
        for rel, info in art["inputs"].items():
            producer = stages.get(info["from"], {}).get("artifacts", {})
            made = producer.get("outputs", {}).get(rel)
            if made is not None and made != info["sha256"]:
                problems.append(f"{key}: read {rel} {info['sha256'][:12]}, but {info['from']} now records {made[:12]}"
                                " (rerun this stage)")
    return problems


def show_tree(store: RunStore):
    """A rich Tree of the run: rounds, stages, outputs and inputs with short hashes."""
    from rich.tree import Tree

    m = store.read_manifest()
    stages = m.get("stages", {})
    versions = m.get("versions", {})
    root = Tree(f"[bold]{m.get('name', '')}[/bold]  {store.root}  config {m.get('config_sha256', '')[:12]}  "
                f"openrlaif {versions.get('openrlaif')} torch {versions.get('torch')} "
                f"transformers {versions.get('transformers')}")
    inputs = m.get("inputs", {})
    root.add(f"inputs: prompts {str(inputs.get('prompts', ''))[:12]}  constitution "
             f"{str(inputs.get('constitution', ''))[:12]}  policy {inputs.get('policy')}  judge {inputs.get('judge')}")
    rounds = sorted({key.split("/")[0] for key in stages}, key=lambda r: int(r.split("_")[1]))
    records = {r.get("round"): r for r in m.get("rounds", [])}
    for rnd in rounds:
        k = int(rnd.split("_")[1])
        rec = records.get(k, {})
        label = f"[bold]{rnd}[/bold]"
        if rec.get("win_rate") is not None:
            label += f"  win rate {rec['win_rate']:.3f}"
        if rec.get("stop"):
            label += f"  [yellow]stopped: {rec['stop']}[/yellow]"
        branch = root.add(label)
        for key, entry in stages.items():
            if not key.startswith(rnd + "/"):
                continue
            status = entry.get("status", "?")
            colour = {"done": "green", "failed": "red", "running": "yellow"}.get(status, "white")
            node = branch.add(f"{key.split('/')[1]}  [{colour}]{status}[/{colour}]"
                              + (f"  {entry['wall_s']}s" if "wall_s" in entry else ""))
            art = entry.get("artifacts")
            if not art:
                continue
            for rel, digest in art["outputs"].items():
                node.add(f"-> {rel}  {digest[:12]}")
            for rel, info in art["inputs"].items():
                node.add(f"<- {rel}  {(info['sha256'] or '')[:12]}  from {info['from']}")
            code = art["code"]
            node.add(f"code {code.get('git_commit', code.get('openrlaif'))[:19]}  config {art['config_sha256'][:12]} "
                     f"({', '.join(art['config_sections'])})  models "
                     + ", ".join(f"{role} {mid.get('spec', mid.get('model'))}#{mid.get('fingerprint', '')}"
                                 for role, mid in art["models"].items()))
    return root
