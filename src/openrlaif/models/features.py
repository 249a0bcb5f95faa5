"""A judge model's hidden states as features of a reply: one forward pass over conversation + reply.

For each requested layer (0 = the embeddings, L = the last block's output) two poolings are offered:
``mean`` over every token of the templated conversation and reply, and ``last``, the final token (the
reply's end of turn). Replies to one conversation run in one row, the conversation once (``collate_forks``;
``bench/reply_features.py``: the 72 calibration pairs' 144 replies at layer 15 of the embedded judge, 5.28 ->
4.07 s here); lone replies are batched by length. Nothing is projected onto the vocabulary, and the forward
stops at the deepest requested layer. A frozen model remembers the features of the sequences it read last.

Shapes: the result maps 'layer{i}:{pooling}' to a float32 tensor (n_replies, hidden_size).
"""

from __future__ import annotations

import time

import torch

from openrlaif.core.cache import cache_key
from openrlaif.core.progress import advance, bar
from openrlaif.models.logprobs import (
    collate,
    collate_forks,
    encode_response,
    fork_batches,
    forks_supported,
)

POOLINGS = ("mean", "last")


def feature_name(layer: int, pooling: str) -> str:
    return f"layer{layer}:{pooling}"


def parse_feature_name(name: str) -> tuple[int, str]:
    """'layer18:mean' -> (18, 'mean')."""
    layer, _, pooling = name.partition(":")
    if not layer.startswith("layer") or pooling not in POOLINGS:
        raise ValueError(f"feature name {name!r} is not 'layerN:mean' or 'layerN:last'")
    return int(layer[len("layer"):]), pooling


class _StopForward(Exception):
    """Raised by a hook once the deepest requested layer's input is captured: the layers above it never run."""


def decoder_layers(model):
    """The model's list of decoder blocks (the ModuleList as long as config.num_hidden_layers), or None."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    return None


def layer_states(model, ids: torch.Tensor, attn: torch.Tensor, layers: list[int],
                 position_ids: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Hidden states (batch, time, hidden) at each of ``layers`` (0 = the embeddings, i = the input of block i, i.e.
    the output of block i-1; L = the final, normed output). Below the last layer the forward stops at the deepest
    requested one (``layers`` up to 15 of 30 cost half a forward), every layer up to it is returned, and nothing
    is projected onto the vocabulary. ``attn`` may be a 4-D mask with its ``position_ids`` (``collate_forks``)."""
    n = model.config.num_hidden_layers
    blocks = decoder_layers(model)
    deepest = max(layers)
    if deepest >= n or blocks is None:
        hidden = model(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                       output_hidden_states=True).hidden_states
        return {i: hidden[i] for i in range(len(hidden)) if i <= deepest}
    captured: dict[int, torch.Tensor] = {}

    def hook(index):
        def capture(module, args, kwargs):
            captured[index] = args[0] if args else kwargs["hidden_states"]
            if index == deepest:
                raise _StopForward

        return capture

    handles = [blocks[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in range(deepest + 1)]
    try:
        model(input_ids=ids, attention_mask=attn, position_ids=position_ids)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


MEMO_SIZE = 1024  # sequences whose features a model keeps in memory (about 75 KB each at 15 layers)


def mark_frozen(model) -> None:
    """Declare that ``model``'s weights never change from here on (a judge), whatever their requires_grad says:
    its reply features may then be remembered."""
    model._openrlaif_frozen = True


def _memo(model) -> dict | None:
    """A frozen judge's features of the sequences it read lately (on the model object), so that two readers of
    the same replies (the injection probe and the fitted heads, in label and eval) run the model once. None for
    a model that may change (an adapter, trainable weights not declared frozen with ``mark_frozen``)."""
    frozen = getattr(model, "_openrlaif_frozen", False) or not any(p.requires_grad for p in model.parameters())
    if hasattr(model, "peft_config") or not frozen:
        return None
    memo = getattr(model, "_openrlaif_features", None)
    if memo is None:
        memo = {}
        try:
            model._openrlaif_features = memo
        except AttributeError:
            return None
    return memo


def reply_features(model, tokenizer, conversations: list[list[dict]], replies: list[str], *, layers: list[int],
                   poolings: tuple[str, ...] = POOLINGS, batch_size: int = 8, max_length: int = 384,
                   description: str = "features", encoded: list | None = None) -> dict[str, torch.Tensor]:
    """Pooled hidden states of each (conversation, reply) at ``layers``; see the module docstring.
    ``encoded``: the ``encode_response`` sequences of these pairs when the caller already has them. The forward
    stops at the deepest requested layer; a frozen model remembers both poolings of every layer it ran for its
    last ``MEMO_SIZE`` sequences, and rows found there are not run again."""
    n_layers = model.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 0..{n_layers} for this model")
    seqs = encoded if encoded is not None else [encode_response(tokenizer, conv, reply, max_length)
                                                for conv, reply in zip(conversations, replies)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    names = [feature_name(i, p) for i in layers for p in poolings]
    out = {name: torch.zeros(len(seqs), model.config.hidden_size) for name in names}
    memo = _memo(model)
    keys = [tuple(s.input_ids) for s in seqs]
    todo = []
    for i, key in enumerate(keys):
        known = memo.get(key) if memo is not None else None
        if known is not None and all(name in known for name in names):
            for name in names:
                out[name][i] = known[name]
        else:
            todo.append(i)
    start, tokens = time.perf_counter(), 0
    with bar(description, len(todo), "tok") as progress, torch.inference_mode():
        for rows, forked in fork_batches(seqs, todo, batch_size, forks_supported(model)):
            idx = [i for row in rows for i in row]
            if forked:  # replies to one conversation in one row, the conversation once (collate_forks)
                batch = collate_forks([[seqs[i] for i in row] for row in rows], pad)
                hidden = layer_states(model, batch.input_ids, batch.mask, layers, batch.position_ids)
                lengths = torch.bincount(batch.token_owner, minlength=len(idx))
            else:
                ids, attn, _ = collate([seqs[i] for i in idx], pad)
                hidden = layer_states(model, ids, attn, layers)
                lengths = attn.sum(1)
            pooled = {}
            for layer, h in hidden.items():
                if memo is None and layer not in layers:  # every layer is pooled only to be remembered
                    continue
                h = h.float()
                if forked:
                    flat = h.reshape(-1, h.shape[-1])
                    sums = torch.zeros(len(idx), h.shape[-1]).index_add(0, batch.token_owner, flat[batch.tokens])
                    pooled[feature_name(layer, "mean")] = sums / lengths.unsqueeze(-1)
                    pooled[feature_name(layer, "last")] = flat[batch.last]
                else:
                    mask = attn.unsqueeze(-1).float()
                    pooled[feature_name(layer, "mean")] = (h * mask).sum(1) / lengths.unsqueeze(-1)
                    pooled[feature_name(layer, "last")] = h[torch.arange(len(idx)), lengths - 1]
            for name in names:
                out[name][idx] = pooled[name]
            if memo is not None:
                for row, i in enumerate(idx):
                    memo[keys[i]] = {name: v[row].clone() for name, v in pooled.items()}
                while len(memo) > MEMO_SIZE:
                    memo.pop(next(iter(memo)))
            tokens += int(lengths.sum())
            advance(progress, len(idx), tokens / max(time.perf_counter() - start, 1e-9), "tok")
    return out


def cached_reply_features(model, tokenizer, conversations: list[list[dict]], replies: list[str], *, layers: list[int],
                          cache=None, fingerprint: str = "", batch_size: int = 8, max_length: int = 384,
                          description: str = "features") -> dict[str, torch.Tensor]:
    """``reply_features`` through a ``core.cache.FeatureCache``: a reply whose features at these layers were
    computed before (same model fingerprint, same token ids) is read back, only the rest run the model."""
    names = [feature_name(i, p) for i in layers for p in POOLINGS]
    if cache is None:
        return reply_features(model, tokenizer, conversations, replies, layers=layers, batch_size=batch_size,
                              max_length=max_length, description=description)
    seqs = [encode_response(tokenizer, conv, reply, max_length) for conv, reply in zip(conversations, replies)]
    base = [cache_key(fingerprint, "reply-features", max_length, s.input_ids) for s in seqs]
    found = cache.get_many([f"{b}|{n}" for b in base for n in names])
    missing = [i for i, b in enumerate(base) if any(f"{b}|{n}" not in found for n in names)]
    out = {n: torch.zeros(len(replies), model.config.hidden_size) for n in names}
    if missing:
        fresh = reply_features(model, tokenizer, [conversations[i] for i in missing], [replies[i] for i in missing],
                               layers=layers, batch_size=batch_size, max_length=max_length, description=description,
                               encoded=[seqs[i] for i in missing])
        cache.put_many({f"{base[i]}|{n}": fresh[n][row] for row, i in enumerate(missing) for n in names})
        for n in names:
            out[n][missing] = fresh[n]
    computed = set(missing)
    done = [i for i in range(len(replies)) if i not in computed]
    for n in names:
        for i in done:
            out[n][i] = torch.from_numpy(found[f"{base[i]}|{n}"].copy())
    return out
