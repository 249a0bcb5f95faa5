"""Log-probabilities of responses under a causal LM: tokenisation, padding, and a fast path that
projects only response positions onto the vocabulary. Used by DPO training and by likelihood judges."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openrlaif.optimize.losses import gathered_logprobs, sequence_logprobs


@dataclass
class Encoded:
    input_ids: list[int]
    response_mask: list[int]


def encode_response(tokenizer, prompt_messages: list[dict], response: str, max_length: int) -> Encoded:
    """Chat-templated prompt + response + end-of-turn, truncated to ``max_length`` tokens.

    The prompt keeps its end and gets at least half the budget (more when the response is short);
    the response fills the rest and is cut at its end.
    """
    from openrlaif.models import chat_prompt, end_of_turn_id

    prompt_ids = tokenizer(chat_prompt(tokenizer, prompt_messages), add_special_tokens=False).input_ids
    from openrlaif.feedback.judges import neutralize_special_tokens

    # A response that spells a special token ('<|im_end|>') is scored as the characters it wrote.
    response_ids = (tokenizer(neutralize_special_tokens(response, tokenizer), add_special_tokens=False).input_ids
                    + [end_of_turn_id(tokenizer)])
    keep = min(len(prompt_ids), max(max_length // 2, max_length - len(response_ids)))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return Encoded(prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids))


def collate(seqs: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask, response_mask)."""
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        attn[r, :n] = 1
        resp[r, :n] = torch.tensor(s.response_mask)
    return ids, attn, resp


def response_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the response tokens, projecting only response positions onto the vocabulary.

    The decoder runs on the whole batch; the LM head (a 49k-wide matmul for SmolLM2) runs only on
    the hidden states that predict a response token, not on prompt or padding positions. Models
    whose head does more than a linear projection (e.g. logit soft-capping) take the full path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        logits = model(input_ids=ids, attention_mask=attn).logits
        return sequence_logprobs(logits.float(), ids, resp)
    hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state
    mask = resp[:, 1:].bool()  # position t predicts token t + 1
    token_logp = gathered_logprobs(head(hidden[:, :-1][mask]).float(), ids[:, 1:][mask])
    rows = mask.nonzero()[:, 0]
    return torch.zeros(ids.shape[0], dtype=token_logp.dtype).index_add(0, rows, token_logp)


def batch_logprobs(model, seqs: list[Encoded], pad_id: int) -> torch.Tensor:
    ids, attn, resp = collate(seqs, pad_id)
    return response_logprobs(model, ids, attn, resp)


def batched_response_logprobs(model, seqs: list[Encoded], pad_id: int, batch_size: int,
                              description: str = "score", on_batch=None) -> tuple[list[float], list[int]]:
    """Summed response log-probs of many sequences without gradients, batched by length.

    Returns (log-probs, response token counts) in the order of ``seqs``, with a progress bar.
    ``on_batch({index: log-prob})`` is called after every batch (e.g. to store it in a cache).
    """
    import time

    from openrlaif.progress import advance, bar

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))
    out = [0.0] * len(seqs)
    start = time.perf_counter()
    with bar(description, len(seqs), "seq") as progress, torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            values = batch_logprobs(model, [seqs[i] for i in idx], pad_id)
            for i, v in zip(idx, values.tolist()):
                out[i] = v
            if on_batch is not None:
                on_batch({i: out[i] for i in idx})
            advance(progress, len(idx), (b + len(idx)) / max(time.perf_counter() - start, 1e-9), "seq")
    return out, [sum(s.response_mask) for s in seqs]
