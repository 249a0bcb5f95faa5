"""YAML files read strictly, with errors a person can act on: a key given twice in one mapping is an error naming
the key and both lines (PyYAML would keep the last value silently), and a syntax error names the line where the
offending construct started (an unclosed quote: the line of the quote, not the end of the file where the parser
gave up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from openrlaif.core.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader reports it below
            continue
        if first is not None:
            raise UserError(f"{loader.name}:{line}: key '{key}' is given twice (lines {first} and {line}); keep one")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """The document in ``path``, or a one-line UserError naming path:line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        context, problem = getattr(err, "context_mark", None), getattr(err, "problem_mark", None)
        start = context or problem
        where = f"{path}:{start.line + 1}" if start is not None else str(path)
        what = "; ".join(x for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) or str(err)
        gave_up = (f", the parser gave up at line {problem.line + 1}" if context is not None and problem is not None
                   and problem.line != context.line else "")
        raise UserError(f"{where}: not valid YAML ({what}{gave_up}); fix the syntax") from None
    finally:
        loader.dispose()
