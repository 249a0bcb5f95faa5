"""Crash testing: ``OPENRLAIF_KILL_AT=point@n`` makes the process kill itself with SIGKILL (as ``kill -9``
would) the n-th time it passes the named point (n defaults to 1); ``point@n:TERM`` (or ``:INT``) sends that signal
instead, as a scheduler's preemption would. Unset, a point costs one dict lookup.

Points: ``generate.chunk`` (a chunk of candidates appended), ``judge.batch`` (a batch of verdicts committed to
the judge cache), ``train.step`` (an optimizer step of DPO, PPO or RLOO, after its checkpoint if one is due),
``eval.sampled`` (the eval answers sampled, before judging), ``stage.done`` (a stage marked done).
The kill-and-resume tests use them to stop real runs at known places; nothing else sets the variable.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "OPENRLAIF_KILL_AT"
_passed: Counter = Counter()


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, rest = spec.partition("@")
    if point != name:
        return
    nth, _, signame = rest.partition(":")
    _passed[name] += 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{signame}") if signame else signal.SIGKILL)
