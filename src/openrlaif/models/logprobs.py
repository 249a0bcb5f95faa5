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
    # packed rows (SFT's sft.packing): which row each token belongs to (0, 1, ...); None = one row
    segment_ids: list[int] | None = None


def prompt_then_response(prompt_ids: list[int], response_ids: list[int]) -> Encoded:
    """A prompt's tokens followed by a response's, the response marked as what is scored."""
    return Encoded(prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids))


def pack_encoded(seqs: list[Encoded], groups: list[list[int]]) -> list[Encoded]:
    """Each group of ``seqs`` (indices, e.g. from ``data.chat.pack_groups``) concatenated into one sequence that
    remembers its rows' boundaries; ``collate_packed`` keeps the rows from attending to each other."""
    packed = []
    for group in groups:
        ids, resp, seg = [], [], []
        for n, i in enumerate(group):
            ids += seqs[i].input_ids
            resp += seqs[i].response_mask
            seg += [n] * len(seqs[i].input_ids)
        packed.append(Encoded(ids, resp, seg))
    return packed


def collate_packed(seqs: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded packed sequences -> (input_ids, 4-D attention mask, response_mask, position_ids).

    The mask (B, 1, T, T) is causal within each packed row and False across rows and on padding; positions
    restart at 0 for every row, so each row is computed exactly as if it were alone (the rows' log-probs
    equal the unpacked ones: ``tests/integration/test_sft.py``)."""
    ids, attn, resp = collate(seqs, pad_id)
    width = ids.shape[1]
    seg = torch.full((len(seqs), width), -1, dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        segment = torch.tensor(s.segment_ids if s.segment_ids is not None else [0] * len(s.input_ids))
        seg[r, : len(segment)] = segment
        starts = torch.cat([torch.ones(1, dtype=torch.bool), segment[1:] != segment[:-1]])
        first = torch.cummax(torch.where(starts, torch.arange(len(segment)), 0), 0).values
        pos[r, : len(segment)] = torch.arange(len(segment)) - first
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    return ids, (causal & same)[:, None], resp, pos


@dataclass
class ForkBatch:
    """Groups of sequences that begin with the same tokens, one row per group: the shared tokens once, then each
    sequence's own rest (its branch) after them (``collate_forks``). ``mask`` (B, 1, T, T) lets a branch token see
    the shared tokens and its own branch's earlier tokens, never another branch; ``position_ids`` restart every
    branch where the shared part ends, so each sequence is computed as if alone. The response log-probs are read
    at ``source`` (flat row * T + position of the hidden state that predicts the token) for ``target`` tokens and
    summed per sequence (``owner``: its index in the order the groups' sequences were given). Every token of
    every sequence, shared ones included, is at ``tokens`` (flat, in the sequence's order) for ``token_owner``,
    and its last token at ``last``: what pooling a sequence's hidden states needs (``models.features``)."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    owner: torch.Tensor
    sequences: int
    tokens: torch.Tensor
    token_owner: torch.Tensor
    last: torch.Tensor

    def to(self, device) -> "ForkBatch":
        return ForkBatch(*(t.to(device) for t in (self.input_ids, self.mask, self.position_ids, self.source,
                                                  self.target, self.owner)), self.sequences,
                         *(t.to(device) for t in (self.tokens, self.token_owner, self.last)))


def shared_length(seqs: list[Encoded]) -> int:
    """How many leading tokens every sequence of ``seqs`` has in common, leaving each at least one of its own."""
    n = min(len(s.input_ids) for s in seqs) - 1
    first = seqs[0].input_ids
    for s in seqs[1:]:
        k = 0
        while k < n and s.input_ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def collate_forks(groups: list[list[Encoded]], pad_id: int) -> ForkBatch:
    """One row per group of sequences (a DPO pair's chosen and rejected: the same prompt): their common leading
    tokens once, then every sequence's rest, right-padded to the longest row (see ``ForkBatch``). A pair of
    ~42 prompt + ~64 reply tokens runs 170 tokens instead of 212."""
    rows, source, target, owner, tokens, token_owner, last = [], [], [], [], [], [], []
    seq = 0
    for g, group in enumerate(groups):
        n = shared_length(group)
        ids, branch, pos = list(group[0].input_ids[:n]), [-1] * n, list(range(n))
        # layout index of each sequence's positions: shared ones where they are, the branch's after the others
        for b, s in enumerate(group):
            offset = len(ids)
            ids += s.input_ids[n:]
            branch += [b] * (len(s.input_ids) - n)
            pos += list(range(n, len(s.input_ids)))

            def layout(p: int, offset=offset) -> int:
                return p if p < n else offset + p - n

            for p in range(1, len(s.input_ids)):  # position p - 1 predicts token p
                if s.response_mask[p]:
                    source.append((g, layout(p - 1)))
                    target.append(s.input_ids[p])
                    owner.append(seq)
            tokens += [(g, layout(p)) for p in range(len(s.input_ids))]
            token_owner += [seq] * len(s.input_ids)
            last.append((g, layout(len(s.input_ids) - 1)))
            seq += 1
        rows.append((ids, branch, pos))
    width = max(len(r[0]) for r in rows)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    branch_t = torch.full((len(rows), width), -2, dtype=torch.long)  # -1: shared, b: branch b, -2: padding
    pos_t = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, branch, pos) in enumerate(rows):
        ids_t[r, : len(ids)] = torch.tensor(ids)
        branch_t[r, : len(ids)] = torch.tensor(branch)
        pos_t[r, : len(ids)] = torch.tensor(pos)
    q, k = branch_t[:, :, None], branch_t[:, None, :]
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = causal & (q != -2) & ((k == -1) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool) & (q == -2)  # padding sees itself: no empty softmax row

    def flat(places: list[tuple[int, int]]) -> torch.Tensor:
        return torch.tensor([r * width + t for r, t in places], dtype=torch.long)

    return ForkBatch(ids_t, mask[:, None], pos_t, flat(source), torch.tensor(target, dtype=torch.long),
                     torch.tensor(owner, dtype=torch.long), seq, flat(tokens),
                     torch.tensor(token_owner, dtype=torch.long), flat(last))


def forked_response_logprobs(model, batch: ForkBatch) -> torch.Tensor:
    """Summed response log-probs of the sequences of a ``ForkBatch`` (in the order they were given), the LM head
    on the response positions only, at most ``HEAD_ROWS`` of them at a time (the whole logits where the head cannot
    be applied apart)."""
    decoder, head = decoder_and_head(model)
    if decoder is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.mask, position_ids=batch.position_ids).logits
        token_logp = gathered_logprobs(logits.reshape(-1, logits.shape[-1])[batch.source].float(), batch.target)
    else:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.mask,
                         position_ids=batch.position_ids).last_hidden_state
        rows = hidden.reshape(-1, hidden.shape[-1])[batch.source]
        token_logp = torch.cat([gathered_logprobs(head(rows[a : a + HEAD_ROWS]).float(),
                                                  batch.target[a : a + HEAD_ROWS])
                                for a in range(0, len(rows), HEAD_ROWS)] or [rows.new_zeros(0).float()])
    return torch.zeros(batch.sequences, dtype=token_logp.dtype).index_add(0, batch.owner, token_logp)


# A row of ``collate_forks`` costs its width W in the matrix products and W^2 in attention, which this CPU runs
# far less efficiently: with the embedded model here a token pair of attention cost ~1.3e-3 of a token's linear
# layers (SDPA ~75 GFLOP/s vs the products' ~400 at bf16, 2 cores). A reply joins its conversation's row only while
# that costs less than running it apart; long replies behind a short prompt stay apart.
FORK_ATTENTION_COST = 1.3e-3


def row_cost(width: int) -> float:
    """Relative cost of one forward row of ``width`` tokens (linear layers + attention)."""
    return width + FORK_ATTENTION_COST * width * width


def prompt_key(seq: Encoded) -> tuple[int, ...]:
    """The tokens before a sequence's response (the templated conversation): replies to one conversation share it."""
    first = seq.response_mask.index(1) if 1 in seq.response_mask else len(seq.input_ids)
    return tuple(seq.input_ids[:first])


def fork_pieces(seqs: list[Encoded], members: list[int], batch_size: int) -> list[list[int]]:
    """A conversation's replies (``members``, same ``prompt_key``) cut into rows: a reply joins the current row while
    the row's extra cost (``row_cost``) is below its cost run alone, and a row holds at most ``batch_size``."""
    pieces: list[list[int]] = []
    width = 0
    for i in sorted(members, key=lambda i: len(seqs[i].input_ids)):
        n = len(seqs[i].input_ids)
        if pieces and len(pieces[-1]) < batch_size:
            own = n - len(prompt_key(seqs[i]))  # collate_forks shares at least the prompt
            if row_cost(width + own) - row_cost(width) < row_cost(n):
                pieces[-1].append(i)
                width += own
                continue
        pieces.append([i])
        width = n
    return pieces


def fork_batches(seqs: list[Encoded], todo: list[int], batch_size: int, fork: bool,
                 max_tokens: int | None = None) -> list[tuple[list[list[int]], bool]]:
    """Batches of ``todo`` (indices of ``seqs``), each (rows, forked), at most ``batch_size`` sequences and
    ``max_tokens`` padded tokens (default ``MAX_BATCH_TOKENS``) a batch. With ``fork``, replies to one conversation
    share a row where that pays (``fork_pieces``), and such rows make forked batches (each row a group for
    ``collate_forks``); the rest go one sequence a row into plain right-padded batches (``length_batches``).
    Widest first, so the first batch shows the worst memory."""
    max_tokens = max_tokens or MAX_BATCH_TOKENS
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        groups.setdefault(prompt_key(seqs[i]) if fork else (i,), []).append(i)
    pieces = [p for g in groups.values() for p in (fork_pieces(seqs, g, batch_size) if len(g) > 1 else [g])]

    def width(piece: list[int]) -> int:
        n = shared_length([seqs[i] for i in piece])
        return n + sum(len(seqs[i].input_ids) - n for i in piece)

    batches: list[tuple[list[list[int]], bool]] = []
    widest = 0
    for piece in sorted((p for p in pieces if len(p) > 1), key=lambda p: -width(p)):
        rows = batches[-1][0] if batches else []
        if rows and sum(map(len, rows)) + len(piece) <= batch_size and (len(rows) + 1) * widest <= max_tokens:
            rows.append(piece)
        else:
            batches.append(([piece], True))
            widest = width(piece)
    alone = [p[0] for p in pieces if len(p) == 1]
    plain = length_batches([len(seqs[i].input_ids) for i in alone], batch_size, max_tokens)
    return batches + [([[alone[j]] for j in b], False) for b in reversed(plain)]


def pair_logprobs(module, chosen: list[Encoded], rejected: list[Encoded], pad_id: int, fork: bool,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the chosen and the rejected replies of some pairs under ``module`` (a
    ``SequenceLogprobs``, wrapped or not). ``fork``: each pair in one row, its prompt once (``collate_forks``);
    else the 2 x pairs sequences right-padded, chosen ones first."""
    n = len(chosen)
    if fork:
        logps = module(collate_forks([[c, r] for c, r in zip(chosen, rejected)], pad_id).to(device))
        logps = logps.float().cpu()
        return logps[0::2], logps[1::2]
    ids, attn, resp = (t.to(device) for t in collate(chosen + rejected, pad_id))
    logps = module(ids, attn, resp).float().cpu()
    return logps[:n], logps[n:]


def forks_supported(model) -> bool:
    """Whether the model takes a 4-D attention mask (eager or SDPA attention; flash-attention kernels do not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "_attn_implementation", "eager") in ("eager", "sdpa")


def encode_response(tokenizer, prompt_messages: list[dict], response: str, max_length: int) -> Encoded:
    """Chat-templated prompt + response + end-of-turn, truncated to ``max_length`` tokens.

    The prompt keeps its end and gets at least half the budget (more when the response is short);
    the response fills the rest and is cut at its end.
    """
    from openrlaif.models.loading import encode_prompts, end_of_turn_id

    prompt_ids = encode_prompts(tokenizer, [prompt_messages])[0]
    from openrlaif.core.text import neutralize_special_tokens

    # A response that spells a special token ('<|im_end|>') is scored as the characters it wrote.
    response_ids = (tokenizer(neutralize_special_tokens(response, tokenizer), add_special_tokens=False).input_ids
                    + [end_of_turn_id(tokenizer)])
    keep = min(len(prompt_ids), max(max_length // 2, max_length - len(response_ids)))
    prompt_ids = keep_system_turn(tokenizer, prompt_messages, prompt_ids, keep)
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return prompt_then_response(prompt_ids, response_ids)


def keep_system_turn(tokenizer, messages: list[dict], prompt_ids: list[int], keep: int) -> list[int]:
    """The last ``keep`` prompt tokens, except that a system turn at the start is always kept whole
    (the conversation is cut just after it): a likelihood judge conditions on that system prompt."""
    if keep >= len(prompt_ids):
        return prompt_ids
    tail = prompt_ids[len(prompt_ids) - keep :]
    if not messages or messages[0].get("role") != "system":
        return tail
    system_ids = tokenizer(tokenizer.apply_chat_template(messages[:1], tokenize=False), add_special_tokens=False).input_ids
    if prompt_ids[: len(system_ids)] != system_ids or keep < len(system_ids) + 16:
        return tail
    return system_ids + prompt_ids[len(prompt_ids) - (keep - len(system_ids)) :]


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


def response_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Summed log-probs of the response tokens, projecting only response positions onto the vocabulary.

    The decoder runs on the whole batch; the LM head (a 49k-wide matmul for SmolLM2) runs only on
    the hidden states that predict a response token, not on prompt or padding positions. Models
    whose head does more than a linear projection (e.g. logit soft-capping) take the full path.
    Packed rows (``collate_packed``) pass their 4-D mask as ``attn`` and their ``position_ids``; a packed
    sequence's log-prob is the sum over its rows.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
        return sequence_logprobs(logits.float(), ids, resp)
    hidden = decoder(input_ids=ids, attention_mask=attn, position_ids=position_ids).last_hidden_state
    mask = resp[:, 1:].bool()  # position t predicts token t + 1
    token_logp = gathered_logprobs(head(hidden[:, :-1][mask]).float(), ids[:, 1:][mask])
    rows = mask.nonzero()[:, 0]
    return torch.zeros(ids.shape[0], dtype=token_logp.dtype).index_add(0, rows, token_logp)


def token_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """(B, T-1) log-probs of each response token (0 elsewhere); position t holds log p(token t+1).

    Like ``response_logprobs`` but per token (RL needs per-token KL); the LM head runs on response
    positions only. ``temperature`` gives the log-probs of the tempered policy, softmax(logits / T): the
    distribution that sampling at temperature T draws from, so RL updates what it sampled."""
    decoder, head = decoder_and_head(model)
    mask = resp[:, 1:].bool()
    out = torch.zeros(mask.shape, dtype=torch.float32)
    if decoder is None:
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        out[mask] = gathered_logprobs(logits[mask] / temperature, ids[:, 1:][mask])
        return out
    hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state
    out = out.to(hidden.dtype) if hidden.dtype != torch.float32 else out
    values = gathered_logprobs(head(hidden[:, :-1][mask]).float() / temperature, ids[:, 1:][mask])
    return torch.zeros(mask.shape, dtype=values.dtype).masked_scatter(mask, values)


class SequenceLogprobs(torch.nn.Module):
    """A causal LM whose forward returns summed response log-probs (``per_token``: the (B, T-1) token
    log-probs): the module that DDP, FSDP or DeepSpeed wrap, so the training forward goes through the
    wrapper (gradient sync hooks and all)."""

    def __init__(self, model, per_token: bool = False, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.per_token = per_token
        self.temperature = temperature  # per-token only: RL's tempered policy (see token_logprobs)

    def forward(self, ids: torch.Tensor | ForkBatch, attn: torch.Tensor | None = None, resp: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(ids, ForkBatch):  # groups of sequences sharing their first tokens (collate_forks)
            return forked_response_logprobs(self.model, ids)
        if self.per_token:
            return token_logprobs(self.model, ids, attn, resp, self.temperature)
        return response_logprobs(self.model, ids, attn, resp, position_ids)


def batch_logprobs(model, seqs: list[Encoded], pad_id: int) -> torch.Tensor:
    ids, attn, resp = collate(seqs, pad_id)
    return response_logprobs(model, ids, attn, resp)


MAX_BATCH_TOKENS = 4096  # padded tokens per scoring forward pass: ~as fast per token on CPU as larger batches


def batched_response_logprobs(model, seqs: list[Encoded], pad_id: int, batch_size: int,
                              description: str = "score", on_batch=None,
                              max_batch_tokens: int = MAX_BATCH_TOKENS) -> tuple[list[float], list[int]]:
    """Summed response log-probs of many sequences without gradients, batched by length (``length_batches``).

    Returns (log-probs, response token counts) in the order of ``seqs``, with a progress bar.
    ``on_batch({index: log-prob})`` is called after every batch (e.g. to store it in a cache).
    """
    import time

    from openrlaif.core.progress import advance, bar

    out = [0.0] * len(seqs)
    start, done = time.perf_counter(), 0
    with bar(description, len(seqs), "seq") as progress, torch.inference_mode():
        for idx in length_batches([len(s.input_ids) for s in seqs], batch_size, max_batch_tokens):
            values = batch_logprobs(model, [seqs[i] for i in idx], pad_id)
            for i, v in zip(idx, values.tolist()):
                out[i] = v
            if on_batch is not None:
                on_batch({i: out[i] for i in idx})
            done += len(idx)
            advance(progress, len(idx), done / max(time.perf_counter() - start, 1e-9), "seq")
    return out, [sum(s.response_mask) for s in seqs]


def length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices of sequences grouped shortest first into batches of at most ``batch_size`` rows whose padded size
    (rows x longest row) stays within ``max_tokens`` (a longer single row is a batch of its own): long
    conversations then run a few at a time instead of padding 64 rows to the longest."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        current = batches[-1] if batches else None
        # sorted ascending, so the newcomer is the longest row of the batch it joins
        if current and len(current) < batch_size and (len(current) + 1) * lengths[i] <= max_tokens:
            current.append(i)
        else:
            batches.append([i])
    return batches


# ---------------------------------------------------------------------------------------------
# Shared prefixes: judge prompts of one request share everything up to the first response (both
# orders, every pair of candidates), and a likelihood judge's sequences share the system prompt and
# conversation. The prefix is run once; its key/value cache is reused by every suffix.


@dataclass
class Split:
    """One sequence as a shared ``prefix`` (token ids) and its own non-empty ``suffix``."""

    prefix: tuple[int, ...]
    suffix: list[int]


def decoder_and_head(model):
    """(decoder, LM head) of a causal LM, peft-wrapped or not; (None, None) when the head cannot be applied
    apart (no decoder accessor, or logit soft-capping)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings()
    if decoder is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None, None
    return decoder, head


def _cache_argument(decoder) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` in the model forward (5.2x)."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def supports_prefix_reuse(model) -> bool:
    return decoder_and_head(model)[0] is not None


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


# Prefix tokens (rows x the longest, as padded in their batches) whose key/value caches are kept at once on the
# shared-prefix path while a chunk's suffixes run: ~46 KB a token for the 135M model in float32 (30 layers x keys and
# values x 3 heads x 64), so ~0.38 GB. Before, a chunk was 64 prefixes whatever their length (people's long
# conversations in eval's human_prefs yardstick; docs/benchmarks.md, session 31).
PREFIX_CHUNK_TOKENS = 8192


def left_padded(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token rows padded on the left to the longest (what ``tokenizer.pad`` does
    with padding_side='left', without the tokenizer: samplers call it from their lanes' threads)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if len(row):
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
    return ids, mask


def prefix_hidden_states(model, splits: list[Split], batch_size: int, pad_id: int):
    """Yield ``(index, H)`` for every split, where ``H`` (len(suffix) + 1, hidden) holds the final
    hidden states that predict each suffix token and then the token after the sequence.

    Distinct prefixes are run once (left-padded batches), then suffixes run in batches of
    ``batch_size`` on top of their prefix's cache (left-padded to a common prefix length, masked).
    Work goes in chunks (``length_batches``) so that at most ``8 * batch_size`` prefixes' caches, and at most
    ``PREFIX_CHUNK_TOKENS`` padded tokens of them, are alive at once.
    """
    from transformers import DynamicCache

    decoder, _ = decoder_and_head(model)
    if decoder is None:
        raise ValueError("this model's head is not a plain projection; use the full-sequence path")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(splits):
        if not s.suffix:
            raise ValueError("every suffix needs at least one token")
        groups.setdefault(s.prefix, []).append(i)
    prefixes = sorted(groups, key=len)
    for chunk in length_batches([len(p) for p in prefixes], 8 * batch_size, PREFIX_CHUNK_TOKENS):
        chunk_prefixes = [prefixes[i] for i in chunk]
        # 1. Each distinct prefix once: its per-layer keys/values and its last hidden state.
        kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        last: dict[tuple[int, ...], torch.Tensor] = {}
        for b in range(0, len(chunk_prefixes), batch_size):
            batch = chunk_prefixes[b : b + batch_size]
            width = max(len(p) for p in batch)
            ids, attn = left_padded(batch, pad_id)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            out = decoder(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
            layers = _kv(getattr(out, "cache", None) or out.past_key_values)
            for r, p in enumerate(batch):
                kv[p] = [(k[r : r + 1, :, width - len(p):], v[r : r + 1, :, width - len(p):]) for k, v in layers]
                last[p] = out.last_hidden_state[r, -1]
        # 2. Suffixes, sorted by length, on top of their prefix's cache.
        members = sorted((i for p in chunk_prefixes for i in groups[p]), key=lambda i: len(splits[i].suffix))
        for b in range(0, len(members), batch_size):
            idx = members[b : b + batch_size]
            pmax = max(len(splits[i].prefix) for i in idx)
            smax = max(len(splits[i].suffix) for i in idx)
            ids = torch.full((len(idx), smax), pad_id, dtype=torch.long)
            attn = torch.zeros((len(idx), pmax + smax), dtype=torch.long)
            pos = torch.zeros((len(idx), smax), dtype=torch.long)
            for r, i in enumerate(idx):
                p, s = splits[i].prefix, splits[i].suffix
                ids[r, : len(s)] = torch.tensor(s)
                attn[r, pmax - len(p) : pmax + len(s)] = 1
                pos[r] = len(p) + torch.arange(smax)
            layer_kv = []
            for layer in range(len(kv[splits[idx[0]].prefix])):
                ks, vs = [], []
                for i in idx:
                    k, v = kv[splits[i].prefix][layer]
                    pad = pmax - k.shape[2]
                    ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                    vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
                layer_kv.append((torch.cat(ks), torch.cat(vs)))
            out = decoder(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                          **{_cache_argument(decoder): DynamicCache(layer_kv)})
            for r, i in enumerate(idx):
                n = len(splits[i].suffix)
                yield i, torch.cat([last[splits[i].prefix][None], out.last_hidden_state[r, :n]])


def _in_batches(results, batch_size: int, on_batch) -> dict:
    """Collect ``(index, value)`` pairs; hand them to ``on_batch`` every ``batch_size`` (and at the end)."""
    out: dict = {}
    pending: dict = {}
    for i, value in results:
        pending[i] = value
        if len(pending) >= batch_size:
            out.update(pending)
            if on_batch is not None:
                on_batch(pending)
            pending = {}
    out.update(pending)
    if pending and on_batch is not None:
        on_batch(pending)
    return out


def split_next_token_logprobs(model, splits: list[Split], batch_size: int, pad_id: int, on_batch=None) -> dict[int, torch.Tensor]:
    """Log-softmax over the vocabulary of the token after each sequence (prefix reused).

    ``on_batch({index: log-probs})`` is called every ``batch_size`` results (e.g. to store them)."""
    _, head = decoder_and_head(model)
    results = ((i, torch.log_softmax(head(hidden[-1:])[0].float(), dim=-1))  # 2-D: int8 heads need it
               for i, hidden in prefix_hidden_states(model, splits, batch_size, pad_id))
    return _in_batches(results, batch_size, on_batch)


HEAD_ROWS = 512  # positions projected onto the vocabulary together on the shared-prefix and forked paths


def split_response_logprobs(model, splits: list[Split], masks: list[list[int]], batch_size: int, pad_id: int,
                            on_batch=None) -> dict[int, float]:
    """Summed log-probs of the suffix tokens whose ``masks[i]`` entry is 1 (prefix reused)."""
    _, head = decoder_and_head(model)

    def summed(items: list[tuple[int, torch.Tensor]]):
        # one vocabulary projection for the masked positions of a batch's sequences (one large product instead of
        # a small one per sequence: ~2x faster on the head here, and one bf16 cast of it under autocast)
        rows, targets, owners = [], [], []
        for i, hidden in items:
            mask = torch.tensor(masks[i], dtype=torch.bool)
            rows.append(hidden[:-1][mask])
            targets.append(torch.tensor(splits[i].suffix)[mask])
            owners.append(int(mask.sum()))
        hidden, wanted = torch.cat(rows), torch.cat(targets)
        # at most HEAD_ROWS positions' logits at a time (~100 MB in float32 on a 49k vocabulary)
        logps = torch.cat([gathered_logprobs(head(hidden[a : a + HEAD_ROWS]).float(), wanted[a : a + HEAD_ROWS])
                           for a in range(0, len(hidden), HEAD_ROWS)] or [torch.zeros(0)])
        for (i, _), part in zip(items, logps.split(owners)):
            yield i, float(part.sum())

    def results():
        pending = []
        for item in prefix_hidden_states(model, splits, batch_size, pad_id):
            pending.append(item)
            if len(pending) == batch_size:
                yield from summed(pending)
                pending = []
        if pending:
            yield from summed(pending)

    return _in_batches(results(), batch_size, on_batch)


def shared_prefix_logprobs(model, seqs: list[Encoded], pad_id: int, batch_size: int, description: str = "score",
                           on_batch=None, reuse_prefix: bool = True) -> list[float]:
    """Summed response log-probs of ``seqs`` (in their order) without gradients. Sequences whose tokens before the
    response are the same (a prompt's candidates under one system prompt; a people's pair's two replies) run that
    prefix once: in one row with their responses after it (``collate_forks``, where ``fork_batches`` finds that
    it pays; 13-15% faster than the cache here: bench/prefix_logprobs.py), else their responses on its KV cache
    (``split_response_logprobs``); where the model allows neither, or ``reuse_prefix`` is off, every sequence
    runs whole (``batched_response_logprobs``). ``on_batch({index: log-prob})`` after every batch; a progress bar
    either way."""
    import time

    from openrlaif.core.progress import advance, bar

    if not (reuse_prefix and supports_prefix_reuse(model)
            and all(s.response_mask[0] == 0 and 1 in s.response_mask for s in seqs)):
        return batched_response_logprobs(model, seqs, pad_id, batch_size, description, on_batch=on_batch)[0]
    with bar(description, len(seqs), "seq") as progress, torch.inference_mode():
        start, done = time.perf_counter(), 0

        def tick(batch: dict) -> None:
            nonlocal done
            if on_batch is not None:
                on_batch(batch)
            done += len(batch)
            advance(progress, len(batch), done / max(time.perf_counter() - start, 1e-9), "seq")

        out: dict[int, float] = {}
        rest = list(range(len(seqs)))
        if forks_supported(model):  # a prompt's replies in one row where that pays (fork_batches)
            batches = fork_batches(seqs, rest, batch_size, True)
            for rows, forked in batches:
                if forked:
                    batch = collate_forks([[seqs[i] for i in row] for row in rows], pad_id)
                    done_now = dict(zip((i for row in rows for i in row),
                                        forked_response_logprobs(model, batch).tolist()))
                    out.update(done_now)
                    tick(done_now)
            rest = [row[0] for rows, forked in batches if not forked for row in rows]
        # the rest on their prefix's key/value cache (a prefix shared by replies that do not fork well is still
        # run once; where the model cannot take a 4-D mask, every sequence goes this way)
        prefixes = [prompt_key(seqs[i]) for i in rest]
        splits = [Split(p, seqs[i].input_ids[len(p):]) for p, i in zip(prefixes, rest)]
        masks = [seqs[i].response_mask[len(p):] for p, i in zip(prefixes, rest)]
        found = split_response_logprobs(model, splits, masks, batch_size, pad_id,
                                        on_batch=lambda batch: tick({rest[j]: v for j, v in batch.items()}))
        out.update((rest[j], v) for j, v in found.items())
    return [out[i] for i in range(len(seqs))]
