"""Nucleus (top-p) sampling over a large vocabulary, exact and cheap.

transformers' top-p warper sorts the whole vocabulary of every row at every step, then ``generate`` draws
from a softmax over all of it: at batch 64 on SmolLM2's 49k vocabulary that costs ~0.4 s a step on this
project's 2-core CPU, as much as the model's own forward pass (docs/benchmarks.md). The nucleus almost
always lies among the few dozen most likely tokens, so this module takes the top 64 logits of each row (a
partial sort), normalises them against the log-sum-exp of the full row, keeps the same tokens the warper
keeps, and draws among those. A row whose nucleus might reach past them takes the top 1024, then the full
sort, so the distribution is the warper's in every case.

``NucleusSampler`` plugs this into ``generate`` as its only logits processor with greedy decoding: the
processor draws the token and leaves it the only finite score, so greedy's argmax picks it. ``generate``
keeps its caches, padding and stopping; only the draw is ours.
"""

from __future__ import annotations

import torch

from openrlaif.optimize.losses import gathered_logprobs

CANDIDATES = (64, 1024)  # partial sorts tried in turn (per row); rows whose nucleus may extend past the last are sorted whole


def nucleus_keep(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which of a row's tokens, sorted by probability (descending), the nucleus keeps: those whose mass
    strictly before them is below ``top_p`` (the smallest set reaching top_p; the first token always).
    The same tokens as transformers' TopPLogitsWarper, which removes a token when the mass at or below it,
    summed in ascending order, is at most 1 - top_p."""
    before = sorted_probs.cumsum(-1) - sorted_probs
    return before < top_p


def candidate_widths(candidates: int | tuple[int, ...], vocab: int) -> list[int]:
    """The partial-sort widths to try, ascending, ending with the whole vocabulary."""
    wanted = (candidates,) if isinstance(candidates, int) else tuple(candidates)
    return sorted({min(int(c), vocab) for c in wanted} | {vocab})


def nucleus_groups(logits: torch.Tensor, top_p: float, candidates: int | tuple[int, ...] = CANDIDATES
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The nucleus of each row of ``logits`` (B, V), in groups of rows by the partial sort that held it:
    ``(rows, values, ids)`` with ``rows`` (R,) row indices, ``values`` (R, K) the K largest logits of those rows
    with -inf outside the nucleus, ``ids`` (R, K) their token ids. Every row first takes the narrowest width of
    ``candidates``; a row whose last candidate is kept (its nucleus may go on) takes the next width, and past
    the widest the whole vocabulary, sorted. Which group a row lands in depends on its own logits only (the
    nucleus of a 135M model at temperature 0.8 is under 64 tokens for ~93% of rows: docs/benchmarks.md)."""
    vocab = logits.shape[-1]
    lse = torch.logsumexp(logits, -1, keepdim=True)
    rows = torch.arange(logits.shape[0], device=logits.device)
    groups = []
    for width in candidate_widths(candidates, vocab):
        sub = logits if len(rows) == logits.shape[0] else logits[rows]
        if width < vocab:
            values, ids = sub.topk(width, dim=-1)
            keep = nucleus_keep((values - lse[rows]).exp(), top_p)
            more = keep[:, -1]
        else:
            values, ids = sub.sort(dim=-1, descending=True)
            keep = nucleus_keep(torch.softmax(values, -1), top_p)
            more = torch.zeros(len(rows), dtype=torch.bool, device=logits.device)
        held = ~more
        if bool(held.all()):
            groups.append((rows, values.masked_fill(~keep, float("-inf")), ids))
            break
        if bool(held.any()):
            groups.append((rows[held], values[held].masked_fill(~keep[held], float("-inf")), ids[held]))
        rows = rows[more]
    return groups


def nucleus_logits(logits: torch.Tensor, top_p: float, candidates: int | tuple[int, ...] = CANDIDATES
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, token ids) of the nucleus of each row of ``logits`` (B, V), as a (B, K) pair: the kept tokens'
    logits and -inf elsewhere, K the widest width any row needed (``nucleus_groups``; narrower rows padded
    with -inf and token 0)."""
    groups = nucleus_groups(logits, top_p, candidates)
    width = max(v.shape[-1] for _, v, _ in groups)
    values = torch.full((logits.shape[0], width), float("-inf"), dtype=logits.dtype, device=logits.device)
    ids = torch.zeros((logits.shape[0], width), dtype=torch.long, device=logits.device)
    for rows, v, i in groups:
        values[rows, : v.shape[-1]] = v
        ids[rows, : i.shape[-1]] = i
    return values, ids


def draw(probs: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """(B, 1) indices drawn from each row of ``probs`` (B, K): with torch's global generator, or row i with
    ``generators[i]`` (then a row's draws do not depend on which other rows share its batch)."""
    if generators is None:
        return torch.multinomial(probs, 1)
    return torch.stack([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])


def sample_nucleus(logits: torch.Tensor, temperature: float, top_p: float,
                   candidates: int | tuple[int, ...] = CANDIDATES,
                   generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """(B,) tokens drawn from softmax(logits / temperature) restricted to its top-p nucleus and renormalised
    (top_p = 1: the whole distribution). Uses torch's global generator (torch.manual_seed reproduces it), or one
    generator per row (``generators``)."""
    scaled = logits.float() / temperature
    if top_p >= 1.0:
        return draw(torch.softmax(scaled, -1), generators).squeeze(-1)
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    for rows, values, ids in nucleus_groups(scaled, top_p, candidates):
        # each group draws from its own width: a row's draw depends on its logits and generator alone
        gens = None if generators is None else [generators[r] for r in rows.tolist()]
        tokens[rows] = ids.gather(-1, draw(torch.softmax(values, -1), gens)).squeeze(-1)
    return tokens


class NucleusSampler:
    """A ``generate`` logits processor that samples (temperature, top-p) and leaves only the drawn token finite;
    pass it with ``do_sample=False`` (``sampling_kwargs``). With ``row_seeds`` (one per row of the batch) each
    row draws from its own generator: a row's sample is a function of its seed and its own logits, the same
    whether it is generated alone, in another batch or on another process. With ``record``, ``logprobs`` gets
    one (B,) tensor per step: the log-probability of each row's drawn token under the model's own distribution
    (the raw scores, before temperature and nucleus), which the caller would otherwise compute again in a
    forward pass over the answers (eval's KL)."""

    def __init__(self, temperature: float, top_p: float, candidates: int | tuple[int, ...] = CANDIDATES,
                 row_seeds: list[int] | None = None, record: bool = False):
        self.temperature = temperature
        self.top_p = top_p
        self.candidates = candidates
        self.generators = None if row_seeds is None else [torch.Generator().manual_seed(s) for s in row_seeds]
        self.logprobs: list[torch.Tensor] | None = [] if record else None

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        """(B,) the token drawn for each row of ``scores`` (B, V), recorded as ``__call__`` records: for a decoding
        loop that takes tokens (``models.decoding.LeanLlama``) rather than scores to take the argmax of."""
        tokens = sample_nucleus(scores, self.temperature, self.top_p, self.candidates, self.generators)
        if self.logprobs is not None:
            self.logprobs.append(gathered_logprobs(scores.float(), tokens))
        return tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = self.draw(scores)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens.unsqueeze(-1), 0.0)


def row_seed(seed: int, *where) -> int:
    """The sampling seed of one row, a function of the run's ``seed`` and where the row is (e.g. prompt index,
    sample index) alone: a row draws the same whichever batch, thread or process samples it, and two policies
    answering a prompt with the same seed draw the same random numbers (their answers differ only where the
    policies do)."""
    import hashlib

    digest = hashlib.sha256(":".join(str(x) for x in (seed, *where)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sampling_kwargs(temperature: float, top_p: float, row_seeds: list[int] | None = None, record: bool = False) -> dict:
    """``generate`` arguments that sample from the tempered top-p distribution (temperature 0: greedy); with
    ``row_seeds``, each row from its own generator, with ``record`` keeping the drawn tokens' log-probabilities
    (see ``NucleusSampler``: ``kwargs["logits_processor"][0]``; nothing is recorded when greedy)."""
    if temperature == 0:
        return {"do_sample": False}
    from transformers import LogitsProcessorList

    # greedy decoding applies none of generate's sampling warpers (temperature, top_k, top_p), whatever the
    # model's generation_config says: this processor is the whole draw
    return {"do_sample": False, "logits_processor": LogitsProcessorList([NucleusSampler(temperature, top_p, row_seeds=row_seeds,
                                                                                     record=record)])}
