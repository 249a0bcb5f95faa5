"""`rlaif export RUN_DIR --round k`: a round's policy and preference data in the formats others load.

Writes into ``OUT`` (default ``RUN_DIR/export/round_K``)::

    model/      the starting model with the round's LoRA adapter merged in (a plain HF model directory), or
                with --adapter the peft adapter alone; README.md is its model card
    dataset/    the preference pairs as a `datasets` directory (load_from_disk), README.md = dataset card
    preferences.parquet   the same pairs as one Parquet file (TRL-style prompt/chosen/rejected columns)

Everything is written to temporary directories and renamed into place. ``--push REPO`` uploads the model
and the dataset to the Hugging Face Hub (``REPO`` and ``REPO-preferences``) when there is a network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, atomic_directory, atomic_write_bytes, read_jsonl


def export_round(run_dir: str | Path, k: int, out: str | Path | None = None, adapter_only: bool = False,
                 all_rounds: bool = False) -> dict:
    """Export round ``k`` of a run; returns what was written."""
    from openrlaif.config import load_run_config
    from openrlaif.rounds import round_config

    store = RunStore(run_dir)
    if not store.exists():
        raise UserError(f"{run_dir} is not a run directory (no manifest.json)")
    run_cfg = load_run_config(run_dir)
    if k > run_cfg.pipeline.rounds:
        raise UserError(f"--round {k}: {run_dir} has pipeline.rounds={run_cfg.pipeline.rounds}")
    cfg = round_config(run_cfg, k)
    adapter = store.path("policy", k)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} holds no trained policy; finish round {k} first (`rlaif run -o {run_dir}`)")
    out = Path(out) if out is not None else store.root / "export" / f"round_{k}"
    out.mkdir(parents=True, exist_ok=True)
    # 1. The policy: merged into the starting model, or the adapter alone.
    with atomic_directory(out / "model") as tmp:
        if adapter_only:
            for f in adapter.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        else:
            _merged(cfg, adapter, tmp)
        (tmp / "README.md").write_text(model_card(store, cfg, k, adapter_only), encoding="utf-8")
    # 2. The preference pairs: a datasets directory, Parquet, and a card.
    rounds = range(1, k + 1) if all_rounds else [k]
    rows = []
    for j in rounds:
        path = store.path("preferences.jsonl", j)
        if path.is_file():
            rows += read_jsonl(path)
    n_pairs = 0
    if rows:
        n_pairs = _write_dataset(rows, out, dataset_card(store, cfg, k, rows, list(rounds)))
    return {"out": str(out), "model": str(out / "model"), "merged": not adapter_only, "pairs": n_pairs,
            "dataset": str(out / "dataset") if rows else None,
            "parquet": str(out / "preferences.parquet") if rows else None}


def _merged(cfg, adapter: Path, tmp: Path) -> None:
    from openrlaif.models.policy import load_merged

    loaded = load_merged(cfg, adapter)
    loaded.model.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)


COLUMNS = ("prompt", "chosen", "rejected", "p_chosen", "principle", "judge", "scores_ab", "scores_ba", "rationale",
           "source", "round", "prompt_id")


def _write_dataset(rows: list[dict], out: Path, card: str) -> int:
    """Rows as a datasets directory + Parquet, with the conversational sides kept as chat lists."""
    import io

    from datasets import Dataset

    table = {c: [r.get(c) for r in rows] for c in COLUMNS}
    table["rationale"] = [r if r is None else str(r) for r in table["rationale"]]
    table["prompt_id"] = [None if v is None else str(v) for v in table["prompt_id"]]
    ds = Dataset.from_dict(table)
    with atomic_directory(out / "dataset") as tmp:
        ds.save_to_disk(str(tmp))
        (tmp / "README.md").write_text(card, encoding="utf-8")
    buf = io.BytesIO()
    ds.to_parquet(buf)
    atomic_write_bytes(out / "preferences.parquet", buf.getvalue())
    return len(ds)


def _eval_line(store: RunStore, k: int) -> str:
    ev = store.stage_status("eval", k).get("summary", {})
    if not ev:
        return "Not evaluated."
    lo, hi = ev["ci95"]
    line = (f"Win rate against the starting model {ev['win_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={ev['n']}) as "
            "graded by the run's own AI judge")
    if ev.get("kl_to_start") is not None:
        line += f"; KL to the starting model {ev['kl_to_start']:.2f} nats per answer"
    return line + "."


def model_card(store: RunStore, cfg, k: int, adapter_only: bool) -> str:
    m = store.read_manifest()
    tr = store.stage_status("train", k).get("summary", {})
    algo = tr.get("algo", cfg.train.algo)
    what = "a LoRA adapter (peft) for" if adapter_only else "the merged weights of"
    base = m.get("inputs", {}).get("policy", cfg.model.policy)
    return f"""---
library_name: {"peft" if adapter_only else "transformers"}
tags: [rlaif, openrlaif, {algo}]
---
# {m.get('name', 'rlaif')}: round {k} policy

This is {what} `{base}` after {k} round(s) of RLAIF with OpenRLAIF (training: {algo.upper()} with LoRA;
feedback: `{cfg.feedback.method}` judge `{cfg.model.judge or cfg.model.policy}` under the constitution
`{cfg.data.constitution}`).

## Evaluation
{_eval_line(store, k)}

The judge that labelled the training data also grades this comparison: the number measures how well the
policy learned the judge's preferences, not human preference. See the run's report and its human-audit
figures before trusting it.

## Provenance
Run config sha256 `{m.get('config_sha256', '')}`; openrlaif {m.get('versions', {}).get('openrlaif')};
lineage of every artifact: `rlaif show RUN_DIR`.
"""


def dataset_card(store: RunStore, cfg, k: int, rows: list[dict], rounds: list[int]) -> str:
    m = store.read_manifest()
    js = json.loads(store.path("judge_stats.json", k).read_text()) if store.path("judge_stats.json", k).is_file() else {}
    sources = {s: sum(r.get("source") == s for r in rows) for s in ("ai", "human")}
    probs = [r["p_chosen"] for r in rows if isinstance(r.get("p_chosen"), (int, float))]
    gate = js.get("gate") or {}
    quality = []
    if js.get("position_consistency") is not None:
        quality.append(f"position consistency {js['position_consistency']:.3f}")
    if gate.get("agreement") is not None:
        quality.append(f"agreement with labelled calibration pairs {gate['agreement']:.1%} (n={gate['n']})")
    return f"""---
tags: [rlaif, preference, dpo, openrlaif]
task_categories: [text-generation]
size_categories: [n<1K]
---
# {m.get('name', 'rlaif')}: AI preference pairs (round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))})

{len(rows)} pairs ({sources['ai']} labelled by the AI judge, {sources['human']} by people at the audit desk),
sampled from the policy and labelled by `{js.get('judge', cfg.model.judge or cfg.model.policy)}`
(method `{js.get('method', cfg.feedback.method)}`) under the constitution `{cfg.data.constitution}`.
Mean judge probability of the chosen response: {sum(probs) / len(probs) if probs else float('nan'):.3f}.
Judge quality measured in this run: {'; '.join(quality) or 'not measured'}.

## Columns
TRL-style `prompt`, `chosen`, `rejected` (chat lists), plus `p_chosen` (the judge's probability that
`chosen` is better), `principle` (the constitution principle judged), `judge`, `scores_ab`/`scores_ba` (the
two presentation orders), `rationale`, `source` (ai | human), `round`, `prompt_id`.

Load with `datasets.load_from_disk(...)` or `datasets.load_dataset("parquet", data_files=...)`.
AI labels are noisy: weigh them by `p_chosen`, and read the run's human-audit agreement before use.
"""


def push(out: Path, repo: str, private: bool = True) -> list[str]:
    """Upload the exported model to ``repo`` and the dataset to ``repo-preferences`` (needs a network and a
    token: HF_TOKEN or `huggingface-cli login`)."""
    import os

    from huggingface_hub import HfApi, constants

    if os.environ.get("OPENRLAIF_SET_HF_OFFLINE") == "1":  # the CLI's offline default, not the user's wish
        constants.HF_HUB_OFFLINE = False
    api = HfApi()
    urls = []
    try:
        for folder, name, kind in ((out / "model", repo, "model"), (out / "dataset", f"{repo}-preferences", "dataset")):
            if not folder.is_dir():
                continue
            api.create_repo(name, repo_type=kind, private=private, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=name, repo_type=kind)
            urls.append(f"{kind}: {name}")
    except Exception as err:  # any failure (network, auth, offline mode) is one line for a person
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"--push {repo}: the Hub upload failed ({first}); check the network and your token "
                        "(HF_TOKEN); the export itself is complete in " + str(out)) from None
    return urls
