"""Reward models as scorers: the ``RewardModel`` protocol and a HF sequence-classification backend.

A reward model maps (conversation, response) to a scalar; higher is better. Any HF directory saved
from ``AutoModelForSequenceClassification`` with one label (ours once `rlaif reward` trains it, or
a public one such as a Bradley-Terry RM) loads here. A plain callable ``(prompts, responses) ->
list[float]`` named by import path works too (``load_reward``).
"""

from __future__ import annotations

from typing import Protocol


class RewardModel(Protocol):
    def rewards(self, prompts: list[list[dict]], responses: list[str]) -> list[float]: ...


class HFRewardModel:
    """A one-label sequence classifier over the chat-formatted conversation + response."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model needs one output label, this one has {model.config.num_labels}")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def load(cls, path: str, **kwargs) -> "HFRewardModel":
        from transformers import AutoModelForSequenceClassification

        from openrlaif.models import load_tokenizer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.eval()
        return cls(model, load_tokenizer(path), **kwargs)

    def texts(self, prompts: list[list[dict]], responses: list[str]) -> list[str]:
        return [self.tokenizer.apply_chat_template([*conv, {"role": "assistant", "content": resp}], tokenize=False)
                for conv, resp in zip(prompts, responses)]

    def rewards(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        import torch

        texts = self.texts(prompts, responses)
        # Right padding: HF sequence classifiers read the last non-pad token of each row.
        self.tokenizer.padding_side = "right"
        out: list[float] = []
        with torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[b : b + self.batch_size], add_special_tokens=False, padding=True,
                                     truncation=True, max_length=self.max_length, return_tensors="pt")
                out += self.model(**enc).logits[:, 0].float().tolist()
        return out


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
    """A reward model from a HF directory or a 'package.module:function' import path."""
    from pathlib import Path

    from openrlaif.errors import UserError
    from openrlaif.feedback.judges import load_callable

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{field}: '{spec}' has no config.json; give a HF sequence-classification directory")
        return HFRewardModel.load(str(path))
    if ":" in spec:
        return CallableReward(load_callable(spec, field))
    raise UserError(f"{field}: '{spec}' is neither a model directory nor 'package.module:function'")
