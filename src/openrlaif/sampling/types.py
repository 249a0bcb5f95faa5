"""Sampling: the ``Sampler`` protocol and the types every backend shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Conversation = list[dict[str, str]]


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 32
    seed: int = 0


@dataclass
class SampleStats:
    sequences: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    finished: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class Sampler(Protocol):
    """Anything that turns conversations into n sampled assistant replies each."""

    def sample(self, prompts: list[Conversation], n: int, params: SamplingParams) -> list[list[str]]: ...
