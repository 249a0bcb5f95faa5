"""Graceful preemption: SIGTERM (a cluster's preemption notice) or SIGINT (Ctrl-C) while a trainer runs asks it to
stop after its current optimizer step; the trainer then writes a checkpoint and raises ``Preempted``, the stage is
marked interrupted, and `rlaif` exits with ``EXIT_CODE``. Running the same command again resumes from that
checkpoint, so no completed step is lost. A second signal stops at once (KeyboardInterrupt).

``stop_on_signals`` is installed around the sft, generate, label and train stages. Training stops after its
current optimizer step (``Checkpointer.stop_if_preempted``); sampling (generate) after its current chunk, which is
already appended to ``candidates.jsonl.partial``; labelling after its current judge batch, which is already in the
judge cache (``stop_between_batches`` marks where a batch boundary may stop: not inside a training step, where
online DPO's judge runs). Each resumes with the same command and redoes nothing finished. The eval stage keeps the
default behaviour (it has no partial results to keep).
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

EXIT_CODE = 75  # EX_TEMPFAIL: not a failure; the same command resumes
_state: dict = {"signal": None, "active": False, "batches": False}


class Preempted(Exception):
    """Work stopped at a signal's request after ``step`` (an optimizer step, a sampled chunk, a judge batch), with
    what was finished kept (``kept`` says where)."""

    def __init__(self, step: int, signame: str, kept: str | None = None, after: str | None = None):
        super().__init__(f"stopped by {signame} after {after or f'step {step}'}; "
                         + (kept or "a checkpoint was written there"))
        self.step = step
        self.signame = signame


def stop_here(step: int, unit: str, kept: str) -> None:
    """At a boundary where stopping loses nothing (a chunk appended, a batch cached): raise ``Preempted`` when a
    signal asked to stop."""
    if _state["signal"] is not None:
        raise Preempted(step, _state["signal"], kept, f"{unit} {step}")


@contextmanager
def stop_between_batches():
    """While inside, ``batch_done`` may stop the work (the label stage's judging); elsewhere it never does."""
    previous = _state["batches"]
    _state["batches"] = True
    try:
        yield
    finally:
        _state["batches"] = previous


def batch_done(n: int, kept: str) -> None:
    """A batch of work is stored (``kept`` says where): stop here if a signal asked to and batches may stop."""
    if _state["batches"]:
        stop_here(n, "batch", kept)


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
        pending = _state["signal"]  # the work ended before reaching a place where it could stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _state.update(signal=None, active=False)
    if pending is not None:  # the stage finished and its outputs are kept: stop before the next one starts
        raise Preempted(0, pending, "its outputs are kept; the same command goes on with the next stage",
                        "the stage finished")
