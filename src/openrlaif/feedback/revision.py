"""Feedback by construction: Constitutional-AI critique -> revision, and RLCD contrastive pairs.

Critique -> revision (Bai et al. 2022): the judge model reads the conversation and a candidate reply,
critiques the reply against a principle, then rewrites it. Each usable revision gives a preference
pair (revision preferred to the original) and one row of revision SFT data.

RLCD (Yang et al. 2023): candidates were sampled under a principle's positive and negative system
prompts (``generate.mode=rlcd``); each positive candidate is preferred to a negative one.

Both label pairs by how they were made, not by a verdict: ``p_chosen`` is ``feedback.construction_confidence``
and the pair's ``source`` says which construction made it.
"""

from __future__ import annotations

from dataclasses import dataclass

from openrlaif.data.constitution import Principle

REVISION_TEMPLATE_VERSION = "cai-revision-v1"


@dataclass
class Revision:
    original: str
    critique: str
    revised: str
    principle: str

    @property
    def usable(self) -> bool:
        """A revision teaches something only when it is non-empty and differs from the original."""
        return bool(self.revised.strip()) and self.revised.strip() != self.original.strip()


def critique_messages(conversation: list[dict], reply: str, principle: Principle) -> list[dict]:
    return [*conversation, {"role": "assistant", "content": reply},
            {"role": "user", "content": principle.critique_request}]


def revision_messages(conversation: list[dict], reply: str, critique: str, principle: Principle) -> list[dict]:
    return [*critique_messages(conversation, reply, principle), {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision_request}]


def critique_and_revise(model, tokenizer, units: list[tuple[list[dict], str, Principle]], *, max_new_tokens: int,
                        batch_size: int = 8, cache=None, name: str = "local", description: str = "revise") -> list[Revision]:
    """Critique each (conversation, reply, principle), then revise the reply in the light of the critique."""
    from openrlaif.core.cache import model_fingerprint
    from openrlaif.models.loading import chat_prompt
    from openrlaif.sampling.hf import continue_texts

    key = (model_fingerprint(model, name) if cache is not None else "", "revision", REVISION_TEMPLATE_VERSION)
    critiques = [c.strip() for c in continue_texts(
        model, tokenizer, [chat_prompt(tokenizer, critique_messages(conv, reply, pr)) for conv, reply, pr in units],
        max_new_tokens, batch_size=batch_size, description=f"{description} (critiques)", cache=cache, key_parts=key)]
    revised = [r.strip() for r in continue_texts(
        model, tokenizer, [chat_prompt(tokenizer, revision_messages(conv, reply, crit, pr))
                           for (conv, reply, pr), crit in zip(units, critiques)],
        max_new_tokens, batch_size=batch_size, description=f"{description} (revisions)", cache=cache, key_parts=key)]
    return [Revision(reply, crit, rev, pr.id) for (_, reply, pr), crit, rev in zip(units, critiques, revised)]


def rlcd_pairs(conditions: list[str]) -> list[tuple[int, int]]:
    """(positive index, negative index) pairs of one prompt's RLCD candidates, matched in order:
    the i-th positive candidate against the i-th negative one."""
    positives = [i for i, c in enumerate(conditions) if c == "positive"]
    negatives = [i for i, c in enumerate(conditions) if c == "negative"]
    return list(zip(positives, negatives))
