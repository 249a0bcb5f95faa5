"""The stages of a round, one leaf module each: ``run(cfg, store, k) -> summary`` reads top to bottom with
numbered steps and talks to the other stages only through files in the run directory.

A stage never imports another stage (``tests/unit/test_layering.py`` says so); what two stages share lives
below them (``sampling``, ``feedback``, ``optimize``, ``models``, ``data``). This registry is the only list:
adding a trainer is its module plus one line in ``TRAINERS`` (and its name in ``TrainConfig.algo``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# stage name (as in the run directory's manifest) -> module under openrlaif.stages
STAGE_MODULES = {"sft": "sft", "generate": "generate", "label": "label", "reward": "reward", "eval": "evaluate"}
# train.algo -> module under openrlaif.stages; each is the `train` stage for that algorithm
TRAINERS = {"dpo": "dpo", "ppo": "ppo", "rloo": "rloo", "grpo": "grpo", "online_dpo": "online_dpo", "sft": "sft"}
# trainers that sample their own rollouts and score them (a reward source, or online DPO's judge): no
# candidates or preference pairs needed
RL_TRAINERS = ("ppo", "rloo", "grpo", "online_dpo")


def stage_run(name: str, algo: str = "dpo") -> Callable:
    """The ``run`` function of stage ``name`` (for ``train``: the trainer ``algo`` names), imported on demand
    so that `rlaif --help` or a label-only call does not load every trainer."""
    if name == "train":
        module = TRAINERS[algo]
    elif name in STAGE_MODULES:
        module = STAGE_MODULES[name]
    else:
        raise ValueError(f"unknown stage {name!r}")
    return importlib.import_module(f"{__name__}.{module}").run
