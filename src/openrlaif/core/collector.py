"""Python's cyclic garbage collector, for the CLI's process.

A full collection walks every container object the interpreter tracks. Once torch, transformers and peft are
imported that is ~380,000 objects (modules, functions, classes) that live until the process exits, and a full
collection over them took ~0.2 s here, single-threaded and holding the GIL (a decoding lane in another thread
waits for it). The bench round (bench/round_vs_peer.py's `rlaif run`) made 13 of them, 1.97 s in all, 0.76 s of
that while importing, where they found almost nothing to free (docs/benchmarks.md, session 38).

``freeze_between_stages`` (the ``rlaif`` command, at start) asks for this policy; then

- ``deferred()`` (around ``pipeline.validate_inputs``, which imports the libraries) keeps automatic collection
  off while the imports run, and
- ``settle()`` (after those checks, and after each stage's own collection in ``pipeline.release_memory``) moves
  every object that survived a collection into the collector's permanent generation (``gc.freeze``), so later
  collections walk only what is new.

Frozen objects are still freed by reference counting as usual; only a reference cycle among objects that were
alive at a stage's end would outlive its last use, and those are long-lived anyway (imported modules, caches,
the run's config and store). Library users' processes keep the interpreter's defaults; set
``OPENRLAIF_GC=default`` to keep them in the ``rlaif`` command too.
"""

from __future__ import annotations

import contextlib
import gc
import os

_state = {"on": False}  # whether freeze_between_stages took in this process


def freeze_between_stages(environ=os.environ) -> bool:
    """Turn the policy on for this process (see the module docstring); False with ``OPENRLAIF_GC=default``."""
    _state["on"] = environ.get("OPENRLAIF_GC", "").lower() != "default"
    return _state["on"]


def active() -> bool:
    return _state["on"]


@contextlib.contextmanager
def deferred():
    """With the policy on: no automatic collection inside the block, then one collection and ``settle``."""
    if not _state["on"] or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()
        settle()


def settle() -> bool:
    """With the policy on: the objects alive now join the permanent generation (call it right after a collection,
    so that nothing already unreachable is kept). Returns whether it froze anything."""
    if not _state["on"]:
        return False
    gc.freeze()
    return True
