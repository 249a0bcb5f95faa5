"""Graceful preemption: SIGTERM (a cluster's preemption notice) or SIGINT (Ctrl-C) while a trainer runs asks it to
stop after its current optimizer step; the trainer then writes a checkpoint and raises ``Preempted``, the stage is
marked interrupted, and `rlaif` exits with ``EXIT_CODE``. Running the same command again resumes from that
checkpoint, so no completed step is lost. A second signal stops at once (KeyboardInterrupt).

Only training loops check for it (``stop_on_signals`` is installed around the train and sft stages); sampling and
labelling keep the default signal behaviour and resume from their chunks and the judge cache.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

EXIT_CODE = 75  # EX_TEMPFAIL: not a failure; the same command resumes
_state: dict = {"signal": None, "active": False}


class Preempted(Exception):
    """Training stopped at a signal's request after ``step``, with a checkpoint written there."""

    def __init__(self, step: int, signame: str):
        super().__init__(f"stopped by {signame} after step {step}; a checkpoint was written there")
        self.step = step
        self.signame = signame


def requested() -> str | None:
    """The name of the signal that asked training to stop, or None."""
    return _state["signal"]


@contextmanager
def stop_on_signals():
    """While inside, SIGTERM/SIGINT set the stop request instead of killing the process (a second one raises
    KeyboardInterrupt). Outside the main thread, or nested, it does nothing."""
    import threading

    if _state["active"] or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _state["signal"] is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        _state["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    _state.update(signal=None, active=True)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _state.update(signal=None, active=False)
