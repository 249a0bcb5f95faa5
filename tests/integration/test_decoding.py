"""models.decoding: the lean Llama decoding loop gives the logits of the model's own forward bit for bit and draws
the tokens ``generate`` draws (left padding and none, float32 and a packed bf16 copy, stop tokens, pad after a
row stops), and declines every model or argument it does not reproduce."""

import copy

import pytest
import torch

from openrlaif.models.decoding import lean_decoder
from openrlaif.models.loading import chat_prompt, end_of_turn_id, load_causal_lm, pack_frozen, packing_available
from openrlaif.sampling.hf import cache_argument, generate_n, lean_arguments, prefill
from openrlaif.sampling.nucleus import sampling_kwargs

TEXTS = ("Hi?", "Tell me about the sea and the sky, please.", "Why is grass green?")
DTYPES = ["float32"] + (["bfloat16"] if packing_available() else [])


def model_in(tiny_model_dir, dtype: str):
    loaded = load_causal_lm(str(tiny_model_dir), dtype)
    model = loaded.model.eval()
    if dtype == "bfloat16":
        assert pack_frozen(model) > 0  # what a sampler's bf16 copy runs on
    return model, loaded.tokenizer


def encoded(tok, texts):
    tok.padding_side = "left"
    prompts = [chat_prompt(tok, [{"role": "user", "content": t}]) for t in texts]
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("texts", [TEXTS, TEXTS[1:2]], ids=["padded", "one-row"])
def test_a_lean_step_gives_the_forward_s_logits_bit_for_bit(tiny_model_dir, dtype, texts):
    model, tok = model_in(tiny_model_dir, dtype)
    lean = lean_decoder(model)
    assert lean is not None
    enc = encoded(tok, texts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert bool((mask == 0).any()) == (len(texts) > 1)  # the padded case has padding, the one-row case none
    cache = prefill(model, ids, mask)
    rows, prompt = ids.shape
    keys, values = lean.buffers([cache], prompt + 5)
    full = torch.cat([mask, torch.ones(rows, 6, dtype=mask.dtype)], 1)
    tokens, positions = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
    name = cache_argument(model)
    with torch.inference_mode():
        for step in range(6):
            filled = prompt - 1 + step
            theirs = model(input_ids=tokens, attention_mask=full[:, : filled + 1], position_ids=positions,
                           use_cache=True, **{name: cache}).logits[:, -1]
            lean_mask = full.bool()[:, None, None, : filled + 1] if len(texts) > 1 else None
            ours = lean.step(tokens, positions, keys, values, filled, lean_mask)
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), f"step {step}"
            tokens, positions = theirs.argmax(-1, keepdim=True), positions + 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_the_lean_loop_draws_what_generate_draws(tiny_model_dir, dtype, temperature):
    """From the same prefill, with per-row seeds: the same tokens as ``generate``, rows that hit a stop token
    padded after it, and the same recorded log-probs; a stop token that every row meets ends the loop early."""
    model, tok = model_in(tiny_model_dir, dtype)
    enc = encoded(tok, TEXTS)
    n = 2
    ids, mask = enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)
    seeds = list(range(50, 50 + len(ids)))
    base = dict(max_new_tokens=12, pad_token_id=tok.pad_token_id)

    def both(stops):
        out = []
        for lean in (False, True):
            kwargs = sampling_kwargs(temperature, 0.9, seeds, record=temperature > 0)
            cache = prefill(model, enc["input_ids"], enc["attention_mask"], n)
            with torch.inference_mode():
                if lean:
                    got = lean_decoder(model).generate(ids, mask, [cache], 12, stops, tok.pad_token_id,
                                                       kwargs.get("logits_processor"))
                else:
                    got = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=stops,
                                         **{cache_argument(model): cache}, **kwargs, **base)
            recorded = kwargs["logits_processor"][0].logprobs if temperature > 0 else []
            out.append((got, recorded))
        (plain, plain_lp), (lean, lean_lp) = out
        assert torch.equal(plain, lean)
        assert len(plain_lp) == len(lean_lp) and all(torch.equal(a, b) for a, b in zip(plain_lp, lean_lp))
        return plain[:, ids.shape[1]:]

    new = both([end_of_turn_id(tok)])
    # a stop token that some row draws early: that row is padded after it, the others go on
    stop = new[0, 2].item()
    stopped = both([stop])
    first = stopped[0].tolist().index(stop)
    assert all(t == tok.pad_token_id for t in stopped[0, first + 1:].tolist())
    if temperature > 0:
        assert len({tuple(r) for r in new.tolist()}) > 3  # it did sample


def test_generate_n_takes_the_lean_loop_and_keeps_its_draws(tiny_model_dir, monkeypatch):
    """Through ``generate_n`` (one prefill per prompt, n samples): the lean loop's rows equal ``generate``'s from the
    same shared prefill, and it is the lean loop that ran."""
    import openrlaif.models.decoding as decoding

    model, tok = model_in(tiny_model_dir, DTYPES[-1])
    enc = encoded(tok, TEXTS)
    seeds = list(range(100, 109))
    kwargs = dict(max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=[end_of_turn_id(tok)])
    calls = []
    real = decoding.LeanLlama.generate
    monkeypatch.setattr(decoding.LeanLlama, "generate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with torch.inference_mode():
        lean = generate_n(model, enc["input_ids"], enc["attention_mask"], 3, **sampling_kwargs(1.0, 0.9, seeds),
                          **kwargs)
        assert calls == [1]
        monkeypatch.setattr(decoding, "lean_decoder", lambda m: None)
        plain = generate_n(model, enc["input_ids"], enc["attention_mask"], 3, **sampling_kwargs(1.0, 0.9, seeds),
                           **kwargs)
    assert calls == [1] and torch.equal(lean, plain)


def test_what_the_lean_loop_declines(tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrlaif.config import TrainConfig
    from openrlaif.models.policy import add_lora

    model, _ = model_in(tiny_model_dir, "float32")
    assert lean_decoder(model) is not None
    assert lean_decoder(add_lora(copy.deepcopy(model), TrainConfig()).eval()) is None  # a peft wrapper
    assert lean_decoder(copy.deepcopy(model).train()) is None
    penalised = copy.deepcopy(model)
    penalised.generation_config.repetition_penalty = 1.3  # generate would add a processor
    assert lean_decoder(penalised) is None
    hooked = copy.deepcopy(model)
    hooked.model.layers[0].mlp.up_proj.register_forward_hook(lambda *a: None)
    assert lean_decoder(hooked) is None
    small = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
    assert lean_decoder(LlamaForCausalLM(LlamaConfig(**small)).eval()) is not None
    for change in (dict(attention_bias=True), dict(mlp_bias=True), dict(hidden_act="gelu"),
                   dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})):
        assert lean_decoder(LlamaForCausalLM(LlamaConfig(**small, **change)).eval()) is None, change
    eager = LlamaForCausalLM(LlamaConfig(**small, attn_implementation="eager")).eval()
    assert lean_decoder(eager) is None
    # generate arguments: a greedy loop with a processor, a budget, stops and a pad; anything else goes to generate
    plain = dict(do_sample=False, max_new_tokens=4, eos_token_id=[1], pad_token_id=0)
    assert lean_arguments(plain) and lean_arguments({**plain, **sampling_kwargs(1.0, 0.9)})
    assert not lean_arguments({**plain, "do_sample": True}) and not lean_arguments({**plain, "num_beams": 2})
    assert not lean_arguments({k: v for k, v in plain.items() if k != "eos_token_id"})



def trained_adapter(model, path, targets=None):
    """A LoRA r4 adapter on ``targets`` (default: every projection) of ``model`` with trained-looking B matrices,
    saved as a peft directory at ``path``; returns the peft model (float32 adapter)."""
    from openrlaif.config import TrainConfig
    from openrlaif.models.policy import add_lora

    tc = TrainConfig(lora_r=4, lora_alpha=8, **({"lora_target_modules": targets} if targets else {}))
    torch.manual_seed(3)  # peft draws the A matrices from the global generator
    peft_model = add_lora(copy.deepcopy(model), tc).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
    peft_model.save_pretrained(path)
    return peft_model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("targets", [None, ["q_proj", "v_proj", "down_proj"]], ids=["every-layer", "some-layers"])
def test_adapter_rows_decode_as_peft_and_base_rows_as_the_base(tiny_model_dir, tmp_path, dtype, targets):
    """One loop over [adapter rows; base rows]: the adapter's rows (their prefill through ``adapted_forward``) give
    the logits of peft's unmerged model on the same base weights, the base's rows the base model's: to float32
    rounding (the products run over twice the rows, which a CPU's kernels may block differently, and a bf16
    output rounds where float32 sums differ in their last bits)."""
    from peft import PeftModel

    from openrlaif.models.decoding import adapted_forward, lora_deltas

    float_model, tok = model_in(tiny_model_dir, "float32")
    trained_adapter(float_model, tmp_path / "adapter", targets)
    reference = load_causal_lm(str(tiny_model_dir), dtype).model.eval()  # the same weights, not packed
    peft_model = PeftModel.from_pretrained(copy.deepcopy(reference), str(tmp_path / "adapter")).eval()
    model, _ = model_in(tiny_model_dir, dtype)
    deltas = lora_deltas(model, tmp_path / "adapter")
    assert deltas is not None and len(deltas) == 2 * (7 if targets is None else 3)
    lean = lean_decoder(model).with_adapter(deltas)
    enc = encoded(tok, TEXTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    rows, prompt = ids.shape
    with adapted_forward(deltas):
        adapted_cache = prefill(model, ids, mask)
    base_cache = prefill(model, ids, mask)
    assert not any(m._forward_hooks for m in deltas)  # the hooks are gone after the block
    peft_cache, plain_cache = prefill(peft_model, ids, mask), prefill(reference, ids, mask)
    # here the bf16 numbers came out bit-identical to peft's; the tolerances allow a few bf16 roundings elsewhere
    tol = 1e-5 if dtype == "float32" else 0.02
    for a, b in zip(adapted_cache.layers, peft_cache.layers):  # the hooked prefill is peft's prefill
        for ours, theirs in ((a.keys.float(), b.keys.float()), (a.values.float(), b.values.float())):
            assert (ours - theirs).abs().max() <= (1e-6 if dtype == "float32" else 0.01) * theirs.abs().max()
    keys, values = lean.buffers([adapted_cache, base_cache], prompt - 1 + 5)
    full = torch.cat([mask, torch.ones(rows, 5, dtype=mask.dtype)], 1)
    tokens, positions = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
    name = cache_argument(reference)
    with torch.inference_mode():
        for step in range(5):
            filled = prompt - 1 + step
            both = lean.step(tokens.repeat(2, 1), positions.repeat(2, 1), keys, values, filled,
                             full.bool().repeat(2, 1)[:, None, None, : filled + 1], adapted_rows=rows).float()
            theirs = peft_model(input_ids=tokens, attention_mask=full[:, : filled + 1], position_ids=positions,
                                use_cache=True, **{name: peft_cache}).logits[:, -1]
            plain = reference(input_ids=tokens, attention_mask=full[:, : filled + 1], position_ids=positions,
                              use_cache=True, **{name: plain_cache}).logits[:, -1]
            assert torch.allclose(both[:rows], theirs.float(), atol=tol), (both[:rows] - theirs).abs().max()
            assert torch.allclose(both[rows:], plain.float(), atol=tol)
            assert (theirs - plain).abs().max() > 0.3  # the adapter matters
            tokens, positions = theirs.argmax(-1, keepdim=True), positions + 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_with_adapter_answers_as_the_two_policies(tiny_model_dir, tmp_path, dtype):
    """The start and its adapter answer in one loop: in float32 the start's answers are those it gives alone and
    the adapter's those of peft's unmerged policy through ``generate``, every token and the recorded log-probs (a
    packed bf16 copy's roundings move the tiny model's near-uniform draws: its logits are checked above); log-probs
    are recorded for the adapter's rows only."""
    from openrlaif.models.decoding import lora_deltas
    from openrlaif.sampling.hf import HFSampler, sample_with_adapter
    from openrlaif.sampling.types import SamplingParams

    base, tok = model_in(tiny_model_dir, "float32")
    peft_model = trained_adapter(base, tmp_path / "adapter")
    prompts = [[{"role": "user", "content": t}] for t in TEXTS + ("Count to five.", "What is rain?")]
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=10, batch_size=4, seed=7)

    def answers(model, record: bool):
        s = HFSampler(model, tok, row_seeds=True, record_logprobs=record)
        return s, s.sample(prompts, 2, params)

    reference_trained = answers(peft_model, True)  # float32 peft through generate
    model, _ = model_in(tiny_model_dir, dtype)
    start_alone = answers(model, False)
    deltas = lora_deltas(model, tmp_path / "adapter")
    trained, start = HFSampler(model, tok, row_seeds=True, record_logprobs=True), HFSampler(model, tok, row_seeds=True)
    got_trained, got_start = sample_with_adapter(trained, start, deltas, prompts, 2, params)
    assert got_trained != got_start and trained.logprobs is not None and start.logprobs is None
    flat = lambda out: [a for row in out for a in row]  # noqa: E731

    def agreeing(a, b) -> int:
        return sum(x == y for x, y in zip(flat(a), flat(b)))

    if dtype == "float32":
        assert got_start == start_alone[1] and start.finished == start_alone[0].finished
        assert got_trained == reference_trained[1] and trained.tokens == reference_trained[0].tokens
        assert all(abs(a - b) < 1e-3 for a, b in zip(flat(trained.logprobs), flat(reference_trained[0].logprobs)))
    else:
        assert agreeing(got_start, start_alone[1]) >= len(flat(got_start)) // 2
