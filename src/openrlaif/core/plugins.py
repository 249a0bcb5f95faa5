"""User-supplied Python callables named as ``module:function`` or ``path/to/file.py:function`` in a config."""

from __future__ import annotations


def load_callable(path: str, field: str = "feedback.rule"):
    """'package.module:function' -> the function (errors name the config field)."""
    import importlib

    from openrlaif.core.errors import UserError

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"{field}: '{path}' must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{field}: cannot import module '{module_name}' ({err}); is it on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{field}: '{module_name}' has no function '{attr}'")
    return fn
