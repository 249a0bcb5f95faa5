"""In-process sampling with transformers ``generate``: the policy's candidates (``HFSampler``) and the
judge's own greedy writing (``continue_texts``: rationales, critiques, revisions)."""

from __future__ import annotations

import time
from contextlib import nullcontext

from openrlaif.models.loading import cut_at_stop, encode_prompts, stop_token_ids
from openrlaif.sampling.nucleus import row_seed, sampling_kwargs
from openrlaif.sampling.types import Conversation, SampleStats, SamplingParams


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: 'cache' (transformers 5.25+) or 'past_key_values'."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it through
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def generate_n(model, input_ids, attention_mask, n: int, **kwargs):
    """``generate`` with ``n`` continuations of each (left-padded) prompt row, prompt-major (row i * n + j), where
    each prompt's prefill runs once: the KV cache of every prompt token but the last is computed for the unique
    prompts and repeated n times (the cache is expanded, not the prompt), then decoding goes on from the last
    prompt token. The positions follow the padding as ``generate``'s own prefill does, so the logits are those
    of the plain call (tests/integration/test_samplers.py draws the same tokens both ways). Where
    ``models.decoding.lean_decoder`` reproduces the model's decoding exactly (Llama on a CPU) and ``kwargs`` ask
    for nothing but a greedy loop after an optional logits processor, its loop decodes instead of ``generate``
    (the same tokens, ~20% less time a step; n = 1 then takes the same split prefill)."""
    import torch

    from openrlaif.models.decoding import lean_decoder

    ids, mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
    torch_model = isinstance(model, torch.nn.Module)
    lean = lean_decoder(model) if torch_model and input_ids.shape[1] >= 2 and lean_arguments(kwargs) else None
    if lean is None and (n == 1 or input_ids.shape[1] < 2 or not torch_model):
        # nothing to share (one sample, a one-token prompt) or no KV cache to share (not a torch model)
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    cache = prefill(model, input_ids, attention_mask, n)
    if lean is None:
        return model.generate(input_ids=ids, attention_mask=mask, **{cache_argument(model): cache}, **kwargs)
    stops = kwargs["eos_token_id"]
    with torch.inference_mode():
        return lean.generate(ids, mask, [cache], kwargs["max_new_tokens"],
                             [stops] if isinstance(stops, int) else list(stops), kwargs["pad_token_id"],
                             kwargs.get("logits_processor") or None)


def prefill(model, input_ids, attention_mask, n: int = 1):
    """The KV cache (a ``DynamicCache``) of every token but the last of each left-padded prompt row, computed once
    per row and repeated for its ``n`` samples (prompt-major), with the positions ``generate`` gives padded rows."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=positions[:, :-1],
              use_cache=True, **{cache_argument(model): cache})
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


LEAN_ARGUMENTS = {"do_sample", "logits_processor", "max_new_tokens", "eos_token_id", "pad_token_id"}


def lean_arguments(kwargs: dict) -> bool:
    """Whether ``generate`` arguments ask for what the lean loop does: a greedy choice after an optional logits
    processor, a token budget, stop tokens and a pad token, nothing else."""
    return (set(kwargs) <= LEAN_ARGUMENTS and kwargs.get("do_sample") is False and kwargs.get("max_new_tokens")
            is not None and kwargs.get("eos_token_id") is not None and kwargs.get("pad_token_id") is not None)


class HFSampler:
    """Batched sampling with transformers ``generate`` (left padding, sorted by length).

    After ``sample`` the attributes ``stats`` (tokens, seconds) and ``finished`` (whether each
    sample ended with the end-of-turn token rather than hitting ``max_new_tokens``) are set.

    With ``lanes`` > 1 each batch's prompts are dealt out to that many decoding loops that run at once, in
    threads sharing the model, the process's intra-op threads shared out between them (``in_threads``); sampled
    rows then need ``row_seeds``. Between a step's kernels, Python and the small ops leave a second intra-op thread
    idle that a second loop fills: on 2 cores the embedded model's 24 prompts x 2 candidates x 64 tokens took 7.43 s
    in one loop of two threads and 7.14 s in two loops of one (medians of 6, interleaved; docs/benchmarks.md).
    """

    def __init__(self, model, tokenizer, description: str = "generate", row_seeds: bool = False,
                 record_logprobs: bool = False, lanes: int = 1):
        self.model = model
        self.tokenizer = tokenizer
        self.description = description
        # each row (prompt i, sample j) from its own generator seeded by (params.seed, i, j): its draws do not
        # depend on the batch or thread it runs in, and two policies answering with one seed share random numbers
        self.row_seeds = row_seeds
        self.lanes = lanes
        self.stats = SampleStats()
        self.finished: list[list[bool]] = []
        self.progress = None  # an open progress bar to advance instead of opening one per call
        # record_logprobs: after ``sample``, ``tokens[i][j]`` holds each answer's token ids as drawn (its stop token
        # included when it stopped) and ``logprobs[i][j]`` their summed log-probability under the model (raw
        # logits, before temperature and nucleus), read off the decoding steps; None when greedy
        self.record_logprobs = record_logprobs
        self.tokens: list[list[list[int]]] | None = None
        self.logprobs: list[list[float]] | None = None

    def sample(self, prompts: list[Conversation], n: int, params: SamplingParams) -> list[list[str]]:
        import torch

        from openrlaif.core.progress import advance, bar
        from openrlaif.models.logprobs import left_padded

        if self.lanes > 1 and params.temperature > 0 and not self.row_seeds:
            raise ValueError("sampling in lanes needs row_seeds: the global generator would interleave their draws")
        tok = self.tokenizer
        stop_ids = stop_token_ids(tok)
        encoded, order, per_batch = batch_plan(tok, prompts, n, params)
        answers = Answers(self, len(prompts), n, params, stop_ids)
        torch.manual_seed(params.seed)

        def decode(part: list[int]):
            """(new token ids, per-step log-probs or None) of the n samples of each prompt in ``part``."""
            ids, mask = left_padded([encoded[i] for i in part], tok.pad_token_id)
            # temperature 0 = greedy decoding (benchmarks); otherwise nucleus sampling (sampling.nucleus: the
            # distribution of transformers' top-p warper, drawn ~8x faster at batch 64)
            kwargs = sampling_kwargs(params.temperature, params.top_p,
                                     [row_seed(params.seed, i, j) for i in part for j in range(n)]
                                     if self.row_seeds else None, record=answers.record)
            out = generate_n(self.model, ids, mask, n, **kwargs, max_new_tokens=params.max_new_tokens,
                             eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)
            return out[:, ids.shape[1] :], recorded_steps(kwargs)

        start = time.perf_counter()
        own = bar(self.description, len(prompts) * n, "tok") if self.progress is None else nullcontext(self.progress)
        with own as progress, torch.inference_mode():
            for b in range(0, len(order), per_batch):
                chunk = order[b : b + per_batch]
                parts = [p for p in (chunk[lane :: self.lanes] for lane in range(self.lanes)) if p]
                for part, (new, steps) in zip(parts, in_threads([lambda p=p: decode(p) for p in parts])):
                    answers.take(part, new, steps)
                answers.stats.seconds = time.perf_counter() - start
                advance(progress, len(chunk) * n, answers.stats.tokens_per_s, "tok")
        return answers.finish()


def batch_plan(tok, prompts: list[Conversation], n: int, params: SamplingParams):
    """(encoded prompts, their order, prompts per batch): longest prompts decode together, and a batch holds whole
    prompts (all n samples of each), so each prompt's prefill runs once and its KV cache is shared by its n
    samples (``generate_n``)."""
    encoded = encode_prompts(tok, prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    return encoded, order, max(1, params.batch_size // n)


def recorded_steps(kwargs: dict):
    """The (rows, steps) log-probs a recording ``NucleusSampler`` in ``kwargs`` kept, or None."""
    import torch

    processors = kwargs.get("logits_processor")
    kept = processors[0].logprobs if processors else None
    return torch.stack(kept, 1) if kept else None


class Answers:
    """What one ``HFSampler.sample`` call collects, batch by batch, and hands to its sampler at the end: the texts
    cut at their stop token, whether each stopped, counts and, when recording, the drawn tokens and their summed
    log-probs."""

    def __init__(self, sampler: HFSampler, prompts: int, n: int, params: SamplingParams, stop_ids: list[int]):
        self.sampler, self.n, self.stop_ids = sampler, n, stop_ids
        self.outputs: list[list[str]] = [["" for _ in range(n)] for _ in range(prompts)]
        self.finished: list[list[bool]] = [[False] * n for _ in range(prompts)]
        self.stats = SampleStats(sequences=prompts * n)
        self.record = sampler.record_logprobs and params.temperature > 0
        self.drawn: list[list[list[int]]] = [[[] for _ in range(n)] for _ in range(prompts)]
        self.summed: list[list[float]] = [[0.0] * n for _ in range(prompts)]

    def take(self, part: list[int], new, steps) -> None:
        """The new tokens (rows: the n samples of each prompt of ``part``, prompt-major) and per-step log-probs."""
        tok = self.sampler.tokenizer
        for r, (row, (i, j)) in enumerate(zip(new.tolist(), [(i, j) for i in part for j in range(self.n)])):
            kept, ended = cut_at_stop(row, self.stop_ids)
            self.outputs[i][j] = tok.decode(kept, skip_special_tokens=True).strip()
            self.finished[i][j] = ended
            if self.record:
                self.drawn[i][j] = row[: len(kept) + ended]
                self.summed[i][j] = float(steps[r, : len(kept) + ended].sum())
            self.stats.new_tokens += len(kept) + ended
            self.stats.finished += ended

    def finish(self) -> list[list[str]]:
        s = self.sampler
        s.stats, s.finished = self.stats, self.finished
        s.tokens, s.logprobs = (self.drawn, self.summed) if self.record else (None, None)
        return self.outputs


def decoding_lanes(choice: int | str, dtype: str, flags: set[str] | None = None, cuda: bool | None = None) -> int:
    """``generate.lanes`` resolved for a sampler whose model decodes in ``dtype``: a number stands; 'auto' is one
    loop on a GPU (its kernels queue on one device) and where the CPU multiplies bf16 in AMX tiles (the products
    are then cheap and a step waits on reading the weights, which every loop reads again), two elsewhere (a second
    loop fills the intra-op thread that Python leaves idle between a step's kernels). ``flags``: the CPU's flags
    (read from /proc/cpuinfo when None); ``cuda``: whether a GPU is used (asked of torch when None)."""
    if choice != "auto":
        return int(choice)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    from openrlaif.models.loading import amx_bf16

    return 1 if cuda or (dtype == "bfloat16" and amx_bf16(flags)) else 2


def in_threads(jobs: list) -> list:
    """Each job's result, the jobs run at once in threads among which the process's intra-op threads are shared
    out (OpenMP's thread count is per calling thread); one after the other with all of them when there are
    fewer intra-op threads than jobs, or one job."""
    import torch

    # Reading the count here also pins the caller's own: in a process whose main thread never asked for it, a
    # worker's set_num_threads(1) showed through to the caller afterwards (2 -> 1 in a bare torch script).
    threads = torch.get_num_threads() // max(len(jobs), 1)
    if len(jobs) < 2 or threads == 0:
        return [job() for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    def run(job):
        torch.set_num_threads(threads)
        with torch.inference_mode():  # grad mode is per thread
            return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result() for f in [pool.submit(run, job) for job in jobs]]


def sample_side_by_side(samplers: list[HFSampler], prompts: list[Conversation], n: int, params: SamplingParams,
                        description: str) -> list[list[list[str]]]:
    """Each sampler answers the same prompts in its own thread at once, the process's intra-op threads shared out
    between them (``in_threads``: one after the other when there are fewer threads than samplers), under one
    progress bar. A batch of ~16-20 rows decodes at a size where a
    second intra-op thread adds little (per-step latency, Python between the kernels): on 2 cores the start and
    the trained policy's 16 eval answers of 64 tokens took 9.8 s one after the other and 7.0 s side by side.
    The samplers need their own models and tokenizers, and ``row_seeds`` (the global generator is shared)."""
    import copy

    from openrlaif.core.progress import bar

    if any(not s.row_seeds for s in samplers):
        raise ValueError("samplers side by side need row_seeds: the global generator would interleave their draws")
    for s in samplers[1:]:
        if s.tokenizer is samplers[0].tokenizer:
            s.tokenizer = copy.deepcopy(s.tokenizer)  # each thread encodes and decodes with its own
    with bar(description, len(prompts) * n * len(samplers), "tok") as progress:
        for s in samplers:
            s.progress = progress
        try:
            return in_threads([lambda s=s: s.sample(prompts, n, params) for s in samplers])
        finally:
            for s in samplers:
                s.progress = None


def sample_with_adapter(adapted: HFSampler, base: HFSampler, deltas: dict, prompts: list[Conversation], n: int,
                        params: SamplingParams, progress=None) -> tuple[list[list[str]], list[list[str]]]:
    """Two policies answer the same prompts in one decoding loop: ``base``'s model, and that model with a LoRA
    adapter (``deltas``: ``models.decoding.lora_deltas``) unmerged, as ``adapted``. Both samplers hold the same
    model, one the lean loop takes (``models.decoding.lean_decoder``), and the same tokenizer. Each batch is prefilled twice (the adapter's rows through the model's forward with the
    adapter hooked in: ``adapted_forward``), then one loop decodes the adapter's rows and the base's rows at once,
    every product over all rows of the model's weights, the low-rank delta on the adapter's rows alone: one read
    of the weights a step and one interpreter, where two copies side by side read two and contend for one
    (docs/benchmarks.md, session 44). The adapter's rows decode the unmerged adapter in the model's dtype (a merged
    bf16 copy rounds the sum W + BA instead); every row's numbers are its policy's up to the products' rounding,
    which on a CPU may depend on how many rows a product takes. Each sampler's rows draw with its own row seeds and
    record as they would alone. Returns (adapted's answers, base's answers)."""
    import torch

    from openrlaif.core.progress import advance, bar
    from openrlaif.models.decoding import adapted_forward, lean_decoder
    from openrlaif.models.logprobs import left_padded

    samplers = [adapted, base]
    model, tok = base.model, base.tokenizer
    lean = lean_decoder(model)
    if (lean is None or any(not s.row_seeds for s in samplers) or adapted.tokenizer is not tok
            or adapted.model is not model):
        raise ValueError("sample_with_adapter needs two row-seeded samplers of one model the lean loop takes and "
                         "one tokenizer")
    lean = lean.with_adapter(deltas)
    stop_ids = stop_token_ids(tok)
    encoded, order, per_batch = batch_plan(tok, prompts, n, params)
    answers = [Answers(s, len(prompts), n, params, stop_ids) for s in samplers]
    start = time.perf_counter()
    own = bar(adapted.description, len(prompts) * n * 2, "tok") if progress is None else nullcontext(progress)
    with own as progress, torch.inference_mode():
        for b in range(0, len(order), per_batch):
            part = order[b : b + per_batch]
            ids, mask = left_padded([encoded[i] for i in part], tok.pad_token_id)
            seeds = [row_seed(params.seed, i, j) for i in part for j in range(n)]
            rows = len(seeds)
            # each policy's rows drawn by its own sampler from its own row generators, exactly as it draws alone
            kwargs = [sampling_kwargs(params.temperature, params.top_p, seeds, record=a.record) for a in answers]
            processors = [k.get("logits_processor") for k in kwargs]
            both = None if processors[0] is None else BothDraws(processors[0][0], processors[1][0], rows)
            with adapted_forward(deltas):
                adapted_cache = prefill(model, ids, mask, n)
            base_cache = prefill(model, ids, mask, n)
            out = lean.generate(ids.repeat_interleave(n, 0).repeat(2, 1), mask.repeat_interleave(n, 0).repeat(2, 1),
                                [adapted_cache, base_cache], params.max_new_tokens, stop_ids, tok.pad_token_id,
                                both, adapted_rows=rows)
            for g, (a, k) in enumerate(zip(answers, kwargs)):
                a.take(part, out[g * rows : (g + 1) * rows, ids.shape[1] :], recorded_steps(k))
                a.stats.seconds = time.perf_counter() - start
            advance(progress, rows * 2, sum(a.stats.new_tokens for a in answers)
                    / max(time.perf_counter() - start, 1e-9), "tok")
    return answers[0].finish(), answers[1].finish()


class BothDraws:
    """Two ``NucleusSampler``-s as one draw over their rows stacked (the first ``rows`` rows, then the rest)."""

    def __init__(self, first, second, rows: int):
        self.first, self.second, self.rows = first, second, rows

    def draw(self, scores):
        import torch

        return torch.cat([self.first.draw(scores[: self.rows]), self.second.draw(scores[self.rows :])])


def continue_texts(model, tokenizer, texts: list[str], max_new_tokens: int, *, batch_size: int = 16,
                   description: str = "generate", cache=None, key_parts: tuple = ()) -> list[str]:
    """Greedy continuation of each raw text (a rendered chat prompt, maybe with a prefilled reply),
    stopping at the end of the turn; batched by length, and cached when ``cache`` is given.

    Used where the judge writes something itself: chain-of-thought rationales, critiques, revisions.
    """
    import torch

    from openrlaif.core.cache import cache_key, cached_compute
    from openrlaif.core.progress import advance, bar

    tok = tokenizer
    stop_ids = stop_token_ids(tok)
    encoded = [tok(t, add_special_tokens=False).input_ids for t in texts]
    keys = ([cache_key(*key_parts, "greedy", max_new_tokens, ids) for ids in encoded] if cache is not None
            else [""] * len(texts))

    def compute(missing: list[int], on_batch) -> None:
        order = sorted(missing, key=lambda i: -len(encoded[i]))
        tok.padding_side = "left"
        start, tokens = time.perf_counter(), 0
        with bar(description, len(order), "tok") as progress, torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                enc = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                     pad_token_id=tok.pad_token_id)
                done = {}
                for row, i in zip(out[:, enc["input_ids"].shape[1]:].tolist(), idx):
                    kept, _ = cut_at_stop(row, stop_ids)
                    tokens += len(kept)
                    done[i] = tok.decode(kept, skip_special_tokens=True)
                on_batch(done)
                advance(progress, len(idx), tokens / max(time.perf_counter() - start, 1e-9), "tok")

    return cached_compute(cache, keys, compute, str(key_parts[1]) if len(key_parts) > 1 else "generate")
