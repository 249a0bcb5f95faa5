"""Reward models as scorers: the ``RewardModel`` protocol, a HF one-label backbone, ensembles.

A reward model maps (conversation, response) to a scalar; higher is better. The reward is the score
head applied to the final hidden state of the last real token (the end-of-turn after the response),
found from the attention mask, so it does not depend on padding or on the pad token's id. Directories
load from: a full HF sequence-classification model (one label), a peft adapter over one (what `rlaif
reward` saves), or an ensemble directory with ``ensemble.json``. A plain callable ``(conversations,
responses) -> list[float]`` named by import path works too (``load_reward``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch


class RewardModel(Protocol):
    def rewards(self, prompts: list[list[dict]], responses: list[str]) -> list[float]: ...


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) rewards: the score head on the hidden state of each row's last real token (right padding)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model")
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(1) - 1
    pooled = hidden[torch.arange(hidden.shape[0]), last]
    return base.score(pooled).squeeze(-1).float()


class RewardScores(torch.nn.Module):
    """A reward model whose forward returns (B,) rewards: the module accelerate's wrappers (DDP, FSDP,
    DeepSpeed) wrap, so the training forward goes through them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return reward_scores(self.model, input_ids, attention_mask)


def load_sequence_classifier(path: str | Path, dtype: str = "float32"):
    """A one-label sequence classifier from ``path``: full weights, or a peft adapter (merged)."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=getattr(torch, dtype))
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=getattr(torch, dtype))
    model.eval()
    return model


class HFRewardModel:
    """A one-label sequence classifier over the chat-formatted conversation + response."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model needs one output label, this one has {model.config.num_labels}")

    @classmethod
    def load(cls, path: str, **kwargs) -> HFRewardModel:
        from openrlaif.models.loading import load_tokenizer

        return cls(load_sequence_classifier(path), load_tokenizer(path), **kwargs)

    def rewards(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        from openrlaif.models.logprobs import collate, encode_response

        seqs = [encode_response(self.tokenizer, conv, resp, self.max_length) for conv, resp in zip(prompts, responses)]
        out: list[float] = []
        with torch.inference_mode():
            for b in range(0, len(seqs), self.batch_size):
                ids, attn, _ = collate(seqs[b : b + self.batch_size], self.tokenizer.pad_token_id)
                out += reward_scores(self.model, ids, attn).tolist()
        return out


class RewardEnsemble:
    """K reward models; ``rewards`` aggregates them (mean / min / mean - lambda * std), ``member_rewards``
    gives the (K, B) matrix whose spread is the ensemble's uncertainty."""

    def __init__(self, members: list, aggregate: str = "mean", lam: float = 1.0):
        if not members:
            raise ValueError("an ensemble needs members")
        self.members = members
        self.aggregate = aggregate
        self.lam = lam

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> RewardEnsemble:
        meta = json.loads((Path(path) / "ensemble.json").read_text())
        members = [HFRewardModel.load(str(Path(path) / m), **kwargs) for m in meta["members"]]
        return cls(members, meta.get("aggregate", "mean"), meta.get("uwo_lambda", 1.0))

    def member_rewards(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        return torch.tensor([m.rewards(prompts, responses) for m in self.members])

    def rewards(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        from openrlaif.reward.loss import aggregate_ensemble

        return aggregate_ensemble(self.member_rewards(prompts, responses), self.aggregate, self.lam).tolist()


class CallableReward:
    """A function ``(prompts, responses) -> list[float]`` as a RewardModel."""

    def __init__(self, fn):
        self.fn = fn

    def rewards(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        values = list(self.fn(prompts, responses))
        if len(values) != len(responses):
            raise ValueError(f"the reward function returned {len(values)} values for {len(responses)} responses")
        return [float(v) for v in values]


def load_reward(spec: str, field: str = "feedback.reward_model") -> RewardModel:
    """A reward model from a directory (ensemble, adapter or full model) or 'package.module:function'."""
    from openrlaif.core.errors import UserError
    from openrlaif.core.plugins import load_callable

    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "ensemble.json").is_file():
            return RewardEnsemble.load(path)
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise UserError(f"{field}: '{spec}' has no config.json; give a HF sequence-classification directory "
                            "or a reward_model directory written by `rlaif reward`")
        return HFRewardModel.load(str(path))
    if ":" in spec:
        return CallableReward(load_callable(spec, field))
    raise UserError(f"{field}: '{spec}' is neither a model directory nor 'package.module:function'")
