"""OpenRLAIF: Reinforcement Learning from AI Feedback.

Python API (the CLI is a thin layer over it)::

    import openrlaif
    result = openrlaif.run("configs/quick.yaml", out="runs/demo", overrides=["generate.n=2"])
"""

__version__ = "0.1.0"


def run(config=None, out="runs/rlaif", overrides=None, force=False):
    """Run one RLAIF round (generate -> label -> train -> eval) into the run directory ``out``."""
    from openrlaif.pipeline import run as _run

    return _run(config, out, overrides=overrides, force=force)
