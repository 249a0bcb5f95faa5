"""`rlaif export RUN_DIR --round k`: a round's policy and preference data in the formats others load.

Writes into ``OUT`` (default ``RUN_DIR/export/round_K``)::

    model/      the starting model with the round's LoRA adapter merged in (a plain HF model directory), or
                with --adapter the peft adapter alone; README.md is its model card
    dataset/    the preference pairs as a `datasets` directory (load_from_disk), README.md = dataset card, and
                data/train-00000-of-00001.parquet, the file the card's `configs` names: the card and that file
                are what `--push` uploads, a Hub dataset repo that `datasets.load_dataset(REPO)` reads
    preferences.parquet   the same pairs as one Parquet file (TRL-style prompt/chosen/rejected columns)

Both cards open with YAML front matter the Hugging Face Hub reads (base model, license, library, tags, size,
data files), written with ``yaml.safe_dump``. Everything is written to temporary directories and renamed into
place. ``--push REPO`` uploads the model and the dataset to the Hugging Face Hub (``REPO`` and
``REPO-preferences``) when there is a network.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import yaml

from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, atomic_directory, atomic_write_bytes, atomic_write_text
from openrlaif.data.pairs import read_preference_file

# The model the embedded GGUF quantises (models/loading.py; the GGUF's general.organization is HuggingFaceTB).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The Parquet file inside dataset/ that the dataset card's `configs` points at (the Hub's naming convention).
DATA_FILE = "data/train-00000-of-00001.parquet"
# What `save_to_disk` writes: kept locally for load_from_disk, not uploaded (the Hub reads DATA_FILE).
DISK_ONLY = ["data-*.arrow", "state.json", "dataset_info.json"]
LICENSE_KEYS = ("license", "license_name", "license_link")
# The Hub's dataset size buckets: (upper bound, exclusive), name.
SIZE_BUCKETS = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))


def export_round(run_dir: str | Path, k: int, out: str | Path | None = None, adapter_only: bool = False,
                 all_rounds: bool = False, repo: str | None = None) -> dict:
    """Export round ``k`` of a run; returns what was written. ``repo``: the Hub name the export will be pushed
    to, so that the model card names its dataset (``REPO-preferences``); `push` adds it otherwise."""
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
    rounds = range(1, k + 1) if all_rounds else [k]
    rows = []  # the exported rounds' preference pairs
    for j in rounds:
        path = store.path("preferences.jsonl", j)
        if path.is_file():
            rows += read_preference_file(path)
    # 1. The policy: merged into the model its adapter was trained on (load_run_config names the SFT model
    #    when an sft stage ran before round 1), or the adapter alone.
    with atomic_directory(out / "model") as tmp:
        if adapter_only:
            for f in adapter.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        else:
            _merged(cfg, adapter, tmp)
        dataset_repo = f"{repo}-preferences" if repo and rows else None
        (tmp / "README.md").write_text(model_card(store, cfg, k, adapter_only, dataset_repo), encoding="utf-8")
    # 2. The preference pairs: a datasets directory, Parquet, and a card.
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
    """Rows as a datasets directory (with the Hub's Parquet file inside) + Parquet beside it, with the
    conversational sides kept as chat lists."""
    import io

    from datasets import Dataset

    table = {c: [r.get(c) for r in rows] for c in COLUMNS}
    table["rationale"] = [r if r is None else str(r) for r in table["rationale"]]
    table["prompt_id"] = [None if v is None else str(v) for v in table["prompt_id"]]
    ds = Dataset.from_dict(table)
    buf = io.BytesIO()
    ds.to_parquet(buf)
    with atomic_directory(out / "dataset") as tmp:
        ds.save_to_disk(str(tmp))
        (tmp / DATA_FILE).parent.mkdir(parents=True)
        (tmp / DATA_FILE).write_bytes(buf.getvalue())
        (tmp / "README.md").write_text(card, encoding="utf-8")
    atomic_write_bytes(out / "preferences.parquet", buf.getvalue())
    return len(ds)


# ---------------------------------------------------------------------------------------------
# Card front matter and what the Hub wants in it


def card_text(meta: dict, body: str) -> str:
    """A card: ``meta`` as YAML front matter (yaml.safe_dump, keys in the given order) between '---' lines,
    then ``body``."""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n" + body


def front_matter(text: str) -> tuple[dict, str]:
    """A card's YAML front matter as a dict, and the body after it; ({}, text) when the card has none or it
    is not a YAML mapping."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, text
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            try:
                meta = yaml.safe_load("".join(lines[1:i]))
            except yaml.YAMLError:
                return {}, text
            return (meta, "".join(lines[i + 1:])) if isinstance(meta, dict) else ({}, text)
    return {}, text


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for ``n`` rows (n<1K, 1K<n<10K, ..., n>1T; 1000 is 1K<n<10K)."""
    for bound, name in SIZE_BUCKETS:
        if n < bound:
            return name
    return "n>1T"


def hub_model_id(spec: str) -> str | None:
    """The starting model as the Hub names it: the embedded model's id, a Hub id as the config gives it, or
    the id of a directory in the Hugging Face cache (``models--ORG--NAME/snapshots/...``); None for any other
    local directory (the Hub's model tree links ids, not paths)."""
    from openrlaif.models.loading import EMBEDDED

    if spec == EMBEDDED:
        return EMBEDDED_HUB_ID
    path = Path(spec).expanduser()
    for part in path.parts:
        if part.startswith("models--") and "--" in part[len("models--"):]:
            return part[len("models--"):].replace("--", "/", 1)
    if path.exists() or spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        return None
    return spec


def card_license(model_dir: Path) -> dict:
    """The license fields (license, and license_name / license_link with `license: other`) that a model
    directory's own card (README.md front matter) declares; {} when it declares none."""
    readme = Path(model_dir) / "README.md"
    if not readme.is_file():
        return {}
    meta, _ = front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    if not isinstance(meta.get("license"), str) or not meta["license"].strip():
        return {}
    return {key: meta[key].strip() for key in LICENSE_KEYS if isinstance(meta.get(key), str) and meta[key].strip()}


@functools.lru_cache(maxsize=8)
def gguf_license(path: Path) -> dict:
    """``general.license`` from a GGUF file's metadata as {"license": ...}; {} when absent or unreadable.
    Reading the header takes seconds for a large vocabulary, so a file is read once per process (copy the
    result before changing it)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.license")
        value = bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None
    except Exception:  # an old or damaged file: the license is then unknown, never guessed
        return {}
    return {"license": value.strip()} if value and value.strip() else {}


def base_model_license(spec: str) -> dict:
    """The license the starting model declares: for the embedded model its GGUF's ``general.license``; for a
    directory or a cached Hub id its card's front matter; {} when unknown (nothing is downloaded)."""
    from openrlaif.models.loading import EMBEDDED, embedded_gguf_path, resolve_model

    try:
        if spec == EMBEDDED:
            return dict(gguf_license(embedded_gguf_path()))
        path = Path(spec).expanduser()
        return card_license(path if path.is_dir() else Path(resolve_model(spec)))
    except UserError:  # not installed, not cached: unknown
        return {}


def method_tags(cfg, sft_first: bool = False) -> list[str]:
    """Tags for how a policy was made: rlaif, openrlaif, the trainer as TRL tags it (dpo, ppo, rloo, grpo,
    online-dpo, sft), sft when an SFT stage ran first, lora, and the feedback method's own (constitutional-ai
    for revision, rlcd)."""
    tags = ["rlaif", "openrlaif", cfg.train.algo.replace("_", "-")]
    if sft_first and "sft" not in tags:
        tags.append("sft")
    tags.append("lora")
    tags += {"revision": ["constitutional-ai"], "rlcd": ["rlcd"]}.get(cfg.feedback.method, [])
    return tags


def _named(spec: str) -> str:
    """A model as a card names it: `spec`, with its Hub id when that differs."""
    hub = hub_model_id(spec)
    return f"`{spec}`" + (f" ({hub})" if hub and hub != spec else "")


def _principle_lines(cfg, counts: dict[str, int] | None = None) -> list[str]:
    """The constitution's principles as Markdown list items (with how many pairs each judged, when given),
    then the principles of ``counts`` it does not hold (all of them when the file cannot be read any more)."""
    from openrlaif.data.constitution import load_constitution

    try:
        principles = [(p.id, p.text) for p in load_constitution(cfg.data.constitution).principles]
    except UserError:
        principles = []
    known = {pid for pid, _ in principles}
    principles += [(pid, "") for pid in sorted(str(p) for p in counts or {} if p is not None) if pid not in known]
    return [f"  - `{pid}`" + (f": {text}" if text else "")
            + (f" ({_pairs(counts.get(pid, 0))})" if counts is not None else "") for pid, text in principles]


def _pairs(n: int) -> str:
    return f"{n} pair" + ("" if n == 1 else "s")


def _eval_line(store: RunStore, k: int) -> str:
    """The round's win rate (and KL) as one sentence, from the manifest or eval.json."""
    ev = store.stage_status("eval", k).get("summary", {})
    if not ev and store.path("eval.json", k).is_file():
        ev = json.loads(store.path("eval.json", k).read_text(encoding="utf-8"))
    if not ev or ev.get("win_rate") is None:
        return "Not evaluated."
    lo, hi = ev["ci95"]
    line = (f"Win rate against the starting model {ev['win_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={ev['n']}) as "
            "graded by the run's own AI judge")
    if ev.get("kl_to_start") is not None:
        line += f"; KL to the starting model {ev['kl_to_start']:.2f} nats per answer"
    return line + "."


# ---------------------------------------------------------------------------------------------
# The cards


def model_card_meta(base: str, cfg, adapter_only: bool, sft_first: bool = False,
                    dataset_repo: str | None = None) -> dict:
    """The model card's front matter: base_model (when the Hub can name it), the base model's license (when
    it declares one), datasets (when the pairs' repo is known), pipeline_tag, library_name, tags."""
    meta: dict = {}
    hub = hub_model_id(base)
    if hub:
        meta["base_model"] = hub
    meta.update(base_model_license(base))
    if dataset_repo:
        meta["datasets"] = [dataset_repo]
    meta.update({"pipeline_tag": "text-generation", "library_name": "peft" if adapter_only else "transformers",
                 "tags": method_tags(cfg, sft_first)})
    return meta


def model_card(store: RunStore, cfg, k: int, adapter_only: bool, dataset_repo: str | None = None) -> str:
    """The exported policy's card: front matter (`model_card_meta`), how it was trained, its evaluation."""
    from openrlaif.config import FEEDBACK_METHODS

    m = store.read_manifest()
    tr = store.stage_status("train", k).get("summary", {})
    name = tr.get("algo", cfg.train.algo).upper().replace("_", " ")  # DPO, ONLINE DPO, ...
    base = m.get("inputs", {}).get("policy", cfg.model.policy)  # the config's model, before any SFT stage
    sft_first = (store.path("sft", 1) / "model" / "config.json").is_file()
    what = "a LoRA adapter (peft) for" if adapter_only else "the merged weights of"
    judge = cfg.model.judge or base
    sft_line = (f"- An SFT stage fine-tuned {_named(base)} first (`round_1/sft/model` of the run); the rounds "
                f"trained on that model{', and this adapter applies to it' if adapter_only else ''}.\n"
                if sft_first else "")
    principles = "\n".join(_principle_lines(cfg))
    body = f"""# {m.get('name', 'rlaif')}: round {k} policy

This is {what} {_named(base)} after {k} round(s) of RLAIF with OpenRLAIF (training: {name} with LoRA;
feedback: `{cfg.feedback.method}` judge `{judge}` under the constitution
`{cfg.data.constitution}`).

## Training
{sft_line}- Trainer: {name} with a LoRA adapter, {k} round(s); each round's policy samples the next round's
  data (reference policy from round 2: `{cfg.pipeline.reference}`).
- Feedback: `{cfg.feedback.method}` ({FEEDBACK_METHODS[cfg.feedback.method].summary}), judge {_named(judge)}.
- Constitution `{cfg.data.constitution}`:
{principles or '  - (the file is not readable any more)'}

## Evaluation
{_eval_line(store, k)}

The judge that labelled the training data also grades this comparison: the number measures how well the
policy learned the judge's preferences, not human preference. See the run's report and its human-audit
figures before trusting it.

## Provenance
Run config sha256 `{m.get('config_sha256', '')}`; openrlaif {m.get('versions', {}).get('openrlaif')};
lineage of every artifact: `rlaif show RUN_DIR`.
"""
    return card_text(model_card_meta(base, cfg, adapter_only, sft_first, dataset_repo), body)


def dataset_card_meta(name: str, n_rows: int, base: str, cfg) -> dict:
    """The dataset card's front matter: pretty_name, license (the base model's: it wrote the responses;
    omitted when unknown), task_categories, size_categories from the row count, tags, and the `default`
    config pointing at DATA_FILE."""
    meta: dict = {"pretty_name": f"{name}: AI preference pairs"}
    meta.update(base_model_license(base))
    tags = ["rlaif", "preference", "dpo", "synthetic", "openrlaif"]
    tags += {"revision": ["constitutional-ai"], "rlcd": ["rlcd"]}.get(cfg.feedback.method, [])
    meta.update({"task_categories": ["text-generation"], "size_categories": [size_category(n_rows)], "tags": tags,
                 "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}]})
    return meta


def label_figures(rows: list[dict]) -> dict:
    """Figures of the labels: pairs by source, soft labels (0 < p_chosen < 1) and their share, mean p_chosen."""
    probs = [r["p_chosen"] for r in rows if isinstance(r.get("p_chosen"), (int, float))]
    soft = sum(0 < p < 1 for p in probs)
    sources = [str(r.get("source")) for r in rows]
    return {"n": len(rows), "sources": {s: sources.count(s) for s in sorted(set(sources))},
            "soft": soft, "soft_share": soft / len(probs) if probs else None,
            "mean_p_chosen": sum(probs) / len(probs) if probs else None}


def judge_quality_lines(js: dict) -> list[str]:
    """What a round's judge_stats.json says about the judge: position consistency, the gate's agreement with
    labelled calibration pairs (with ECE, Brier, threshold and outcome)."""
    lines = []
    if js.get("position_consistency") is not None:
        lines.append(f"position consistency {js['position_consistency']:.3f} (share of comparisons whose two "
                     "presentation orders pick the same response)")
    gate = js.get("gate") or {}
    if gate.get("agreement") is not None:
        lines.append(f"judge gate: agreement with labelled calibration pairs `{gate.get('pairs')}` "
                     f"{gate['agreement']:.1%} (n={gate['n']}), ECE {gate.get('ece')}, Brier {gate.get('brier')}; "
                     f"threshold {gate.get('min_agreement')}: {'passed' if gate.get('passed') else 'not passed'}"
                     + ("" if gate.get("passed") else f" (gate_action={gate.get('action')})"))
    return lines


def labels_section(cfg, rows: list[dict], stats: dict[int, dict], judge: str, method: str) -> str:
    """"How the labels were made": the judge and its method, the principles with their pair counts, and each
    round's measured judge quality (``stats``: round -> judge_stats.json)."""
    from openrlaif.config import FEEDBACK_METHODS

    counts: dict = {}
    for r in rows:
        counts[r.get("principle")] = counts.get(r.get("principle"), 0) + 1
    summary = f" ({FEEDBACK_METHODS[method].summary})" if method in FEEDBACK_METHODS else ""
    quality = [f"  - round {j}: " + ("; ".join(judge_quality_lines(js)) or "not measured")
               for j, js in sorted(stats.items())]
    return "\n".join([f"- Judge {_named(judge)}, feedback method `{method}`{summary}.",
                      "- Principles (drawn by weight):", *_principle_lines(cfg, counts),
                      "- Judge quality measured in this run:", *(quality or ["  - not measured"])])


def dataset_card(store: RunStore, cfg, k: int, rows: list[dict], rounds: list[int]) -> str:
    """The preference pairs' card: front matter (`dataset_card_meta`), what the pairs are, how the labels were
    made (`labels_section`), the columns."""
    m = store.read_manifest()
    base = m.get("inputs", {}).get("policy", cfg.model.policy)
    stats = {j: json.loads(store.path("judge_stats.json", j).read_text(encoding="utf-8"))
             for j in rounds if store.path("judge_stats.json", j).is_file()}
    js = stats.get(k, {})
    judge, method = js.get("judge", cfg.model.judge or base), js.get("method", cfg.feedback.method)
    fig = label_figures(rows)
    sources = ", ".join(f"{n} {s}" for s, n in fig["sources"].items())
    soft = (f"{fig['soft']} of {fig['n']} ({fig['soft_share']:.1%}) are soft (0 < p_chosen < 1)"
            if fig["soft_share"] is not None else "no p_chosen recorded")
    mean = f"{fig['mean_p_chosen']:.3f}" if fig["mean_p_chosen"] is not None else "n/a"
    plural = "s" if len(rounds) > 1 else ""
    lic = base_model_license(base).get("license")
    license_line = (f"\nThe license is the starting model's (`{lic}`), whose fine-tuned policies wrote the responses; "
                    "the judge's terms may add to it." if lic else "")
    body = f"""# {m.get('name', 'rlaif')}: AI preference pairs (round{plural} {', '.join(map(str, rounds))})

{fig['n']} pairs (by source: {sources}; `ai` = labelled by the AI judge, `human` = by people at the audit desk),
sampled from the policy {_named(base)} and labelled by {_named(judge)}
(method `{method}`) under the constitution `{cfg.data.constitution}`.
Mean judge probability of the chosen response: {mean}; {soft}.{license_line}

## How the labels were made
{labels_section(cfg, rows, stats, judge, method)}

## Columns
TRL-style `prompt`, `chosen`, `rejected` (chat lists), plus `p_chosen` (the judge's probability that
`chosen` is better), `principle` (the constitution principle judged), `judge`, `scores_ab`/`scores_ba` (the
two presentation orders), `rationale`, `source` (ai | human), `round`, `prompt_id`.

Load with `datasets.load_dataset(REPO)` from the Hub (the `default` config reads `{DATA_FILE}`),
`datasets.load_from_disk(...)` on the exported folder, or `datasets.load_dataset("parquet", data_files=...)`.
AI labels are noisy: weigh them by `p_chosen`, and read the run's human-audit agreement before use.
"""
    return card_text(dataset_card_meta(m.get("name", "rlaif"), len(rows), base, cfg), body)


def name_dataset(model_dir: Path, dataset_repo: str) -> None:
    """Make ``dataset_repo`` the `datasets` of the model card in ``model_dir`` (when it has a card): the pairs
    this export uploads are the policy's training data."""
    readme = Path(model_dir) / "README.md"
    if not readme.is_file():
        return
    meta, body = front_matter(readme.read_text(encoding="utf-8"))
    keys = list(meta)
    meta["datasets"] = [dataset_repo]
    if "datasets" not in keys:  # after base_model/license, where the Hub's own cards put it
        order = [key for key in keys if key in ("base_model", *LICENSE_KEYS)] + ["datasets"]
        meta = {key: meta[key] for key in order + [key for key in keys if key not in order]}
    atomic_write_text(readme, card_text(meta, body))


def push(out: Path, repo: str, private: bool = True) -> list[str]:
    """Upload the exported model to ``repo`` and the dataset to ``repo-preferences`` (needs a network and a
    token: HF_TOKEN or `huggingface-cli login`). The model card is first given the dataset's name; the
    dataset goes up as its card and Parquet file (the `save_to_disk` files stay local)."""
    import os

    from huggingface_hub import HfApi, constants

    if os.environ.get("OPENRLAIF_SET_HF_OFFLINE") == "1":  # the CLI's offline default, not the user's wish
        constants.HF_HUB_OFFLINE = False
    if (out / "dataset").is_dir():
        name_dataset(out / "model", f"{repo}-preferences")
    api = HfApi()
    urls = []
    try:
        for folder, name, kind in ((out / "model", repo, "model"), (out / "dataset", f"{repo}-preferences", "dataset")):
            if not folder.is_dir():
                continue
            api.create_repo(name, repo_type=kind, private=private, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=name, repo_type=kind,
                              ignore_patterns=DISK_ONLY if kind == "dataset" else None)
            urls.append(f"{kind}: {name}")
    except Exception as err:  # any failure (network, auth, offline mode) is one line for a person
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"--push {repo}: the Hub upload failed ({first}); check the network and your token "
                        "(HF_TOKEN); the export itself is complete in " + str(out)) from None
    return urls
