"""OpenRLAIF: Reinforcement Learning from AI Feedback.

Python API (the CLI is a thin layer over it)::

    import openrlaif
    result = openrlaif.run("configs/quick.yaml", out="runs/demo", overrides=["generate.n=2"])
"""

__version__ = "0.1.0"


def run(config=None, out="runs/rlaif", overrides=None, force=False, rounds=None):
    """Run RLAIF rounds (generate -> label -> train -> eval; ``rounds`` or pipeline.rounds, default 1) into the
    run directory ``out``; a second call on the same directory resumes it."""
    from openrlaif.pipeline import run as _run

    return _run(config, out, overrides=overrides, force=force, rounds=rounds)
