"""OpenRLAIF: Reinforcement Learning from AI Feedback.

Python API (the CLI is a thin layer over it)::

    import openrlaif
    result = openrlaif.run("configs/quick.yaml", out="runs/demo", overrides=["generate.n=2"])
"""

from openrlaif.core.version import __version__

__all__ = ["__version__", "run"]


def run(config=None, out="runs/rlaif", overrides=None, force=False, rounds=None):
    """Run RLAIF rounds (generate -> label -> (reward) -> train -> eval; ``rounds`` or pipeline.rounds, default 1) into the
    run directory ``out``; a second call on the same directory resumes it."""
    from openrlaif.pipeline import run as _run

    return _run(config, out, overrides=overrides, force=force, rounds=rounds)
