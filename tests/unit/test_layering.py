"""The package has one direction of dependencies, and this test is where it is written down.

Every module of ``src/openrlaif`` belongs to exactly one layer; a module may import its own layer and the
layers below it, never one above. Imports inside functions count (they are parsed, not executed). Within a
layer the import graph must still be acyclic, stages never import each other, and no module imports a
``_private`` name of another. The same analysis prints the module graph:

    python tests/unit/test_layering.py          # counts of modules, imports, cycles, upward edges
"""

from __future__ import annotations

import ast
import sys
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "openrlaif"

# Bottom to top. Patterns are module names relative to the package ("" is the package itself).
LAYERS: list[tuple[str, list[str]]] = [
    ("core: errors, store, progress, text, http, cache, plugins", ["core", "core.*"]),
    ("config: typed, validated configs", ["config"]),
    ("maths: pure functions", ["optimize.losses", "optimize.advantages", "reward.loss", "evaluate.winrate", "evaluate.refusal",
                               "evaluate.overopt", "audit.queue", "feedback.fitting"]),
    ("data: prompts, constitutions, preference pairs, people's verdicts", ["data", "data.*", "audit.db"]),
    ("models: loading, log-probs, policy adapters, accelerate", ["models", "models.*"]),
    ("sampling: samplers", ["sampling", "sampling.types", "sampling.nucleus", "sampling.hf", "sampling.remote"]),
    ("feedback: judges, scorers, reward models", ["feedback", "feedback.types", "feedback.scoring", "feedback.judges",
                                                  "feedback.methods", "feedback.api", "feedback.revision", "feedback.fitted", "feedback.injection", "feedback.defended", "feedback.gate_cache",
                                                  "reward", "reward.model", "evaluate", "evaluate.judge_eval", "evaluate.ifeval"]),
    ("wiring: factories, rollouts, the monitor", ["feedback.factory", "feedback.fit_heads", "sampling.factory", "optimize",
                                                  "optimize.rollout", "optimize.monitor", "optimize.loop", "evaluate.redteam", "evaluate.benchmarks",
                                                  "audit", "audit.prepare"]),
    ("stages: leaves", ["stages.*"]),
    ("rounds, report, lineage, tracking, export", ["rounds", "report", "report_html", "lineage", "tracking", "export",
                                                   "stages"]),
    ("pipeline", ["pipeline"]),
    ("front ends: CLI, server, audit app, Python API", ["cli", "serve", "audit.app", ""]),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(name: str) -> int | None:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch(name, p) if "*" in p else name == p for p in patterns):
            return i
    return None


def relative(dotted: str) -> str | None:
    """'openrlaif.a.b' -> 'a.b', 'openrlaif' -> '', anything outside the package -> None."""
    if dotted == "openrlaif":
        return ""
    return dotted[len("openrlaif."):] if dotted.startswith("openrlaif.") else None


def imports(mods: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, imported name or None, line) for every import of our package."""
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(["openrlaif", *filter(None, base), *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # `from pkg import submodule` imports a module; anything else imports a name of `module`
                targets = [(f"{module}.{a.name}", None) if relative(f"{module}.{a.name}") in mods else (module, a.name)
                           for a in node.names]
            else:
                continue
            for target, imported in targets:
                rel = relative(target)
                if rel is None:
                    continue
                while rel and rel not in mods:  # `import openrlaif.x.y` where y is not a module
                    rel = rel.rpartition(".")[0]
                if rel != name:
                    out.append((name, rel, imported, node.lineno))
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def analysis() -> dict:
    mods = modules()
    found = imports(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _, _ in found:
        edges[a].add(b)
    upward = [(a, b, line) for a, b, _, line in found
              if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a)]
    private = [(a, b, n, line) for a, b, n, line in found if n and n.startswith("_") and not n.startswith("__")]
    stage_to_stage = [(a, b, line) for a, b, _, line in found
                      if a.startswith("stages.") and b.startswith("stages")]
    return {"modules": mods, "imports": found, "edges": edges, "cycles": cycles(edges), "upward": upward,
            "private": private, "stage_to_stage": stage_to_stage,
            "unplaced": sorted(m for m in mods if layer_of(m) is None)}


def test_every_module_has_a_layer():
    unplaced = analysis()["unplaced"]
    assert not unplaced, f"place these modules in a layer of LAYERS (tests/unit/test_layering.py): {unplaced}"


def test_no_import_points_up_a_layer():
    upward = analysis()["upward"]
    lines = [f"{a} (layer '{LAYERS[layer_of(a)][0]}') line {n} imports {b} (layer '{LAYERS[layer_of(b)][0]}')"
             for a, b, n in upward]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(lines)


def test_no_import_cycles_among_modules():
    assert analysis()["cycles"] == []


def test_stages_are_leaves():
    assert analysis()["stage_to_stage"] == []


def test_no_module_imports_another_modules_private_names():
    assert analysis()["private"] == []


def test_the_analysis_sees_lazy_imports_and_would_catch_an_upward_one(tmp_path, monkeypatch):
    """The checker itself: an import inside a function, pointing up, is found (a test that cannot fail is none)."""
    pkg = tmp_path / "openrlaif"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "pipeline.py").write_text("X = 1\n")
    (pkg / "core" / "store.py").write_text("def f():\n    from openrlaif.pipeline import X\n    from openrlaif.pipeline import _Y\n    return X\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    found = analysis()
    assert [(a, b) for a, b, _ in found["upward"]] == [("core.store", "pipeline"), ("core.store", "pipeline")]
    assert [(a, n) for a, _, n, _ in found["private"]] == [("core.store", "_Y")]


def test_trainer_registry_matches_the_config():
    """train.algo's allowed values are exactly the registered trainers (a new one is registered once)."""
    from typing import get_args

    from openrlaif.config import TrainConfig
    from openrlaif.stages import RL_TRAINERS, TRAINERS

    assert set(get_args(TrainConfig.model_fields["algo"].annotation)) == set(TRAINERS)
    assert set(RL_TRAINERS) <= set(TRAINERS)
    for module in TRAINERS.values():
        assert (PACKAGE / "stages" / f"{module}.py").is_file()


def main() -> None:
    a = analysis()
    n_lazy = 0
    for path in a["modules"].values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n_lazy += sum(isinstance(x, ast.ImportFrom) and (x.module or "").startswith("openrlaif")
                              for x in ast.walk(fn))
    print(f"modules: {len(a['modules'])}")
    print(f"internal import statements (names): {len(a['imports'])}; module edges: "
          f"{sum(len(v) for v in a['edges'].values())}; import statements inside functions: {n_lazy}")
    print(f"cycles: {len(a['cycles'])} {a['cycles']}")
    print(f"edges pointing up a layer: {len(a['upward'])}")
    print(f"private cross-module imports: {len(a['private'])}")
    print(f"stage -> stage imports: {len(a['stage_to_stage'])}")
    for i, (title, _) in enumerate(LAYERS):
        print(f"  {i:2d} {title}: {', '.join(m or '(package)' for m in a['modules'] if layer_of(m) == i)}")



def test_feedback_methods_are_declared_once_and_each_has_a_builder():
    """config.FEEDBACK_METHODS declares the methods; each judging one has exactly one builder."""
    from typing import get_args

    from openrlaif.config import FEEDBACK_METHODS, FeedbackConfig
    from openrlaif.feedback.factory import API_METHODS, JUDGE_BUILDERS

    judging = {m for m, info in FEEDBACK_METHODS.items() if not info.by_construction and m != "ensemble"}
    assert set(JUDGE_BUILDERS) == judging
    assert set(get_args(FeedbackConfig.model_fields["method"].annotation)) == set(FEEDBACK_METHODS)
    assert not any(FEEDBACK_METHODS[m].local_only for m in API_METHODS)
    description = FeedbackConfig.model_fields["method"].description
    assert all(f"'{m}'" in description for m in FEEDBACK_METHODS)


if __name__ == "__main__":
    main()
