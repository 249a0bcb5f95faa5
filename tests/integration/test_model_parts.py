"""Model-facing parts on the tiny model: loading, sampler bookkeeping, judge batching, encoding."""

import json
import math

import pytest
import torch

from openrlaif.config import TrainConfig
from openrlaif.core.errors import UserError
from openrlaif.data.constitution import Principle
from openrlaif.feedback.judges import JUDGE_PREFILL, LocalJudge, answer_token_ids
from openrlaif.feedback.types import Comparison
from openrlaif.models.loading import chat_prompt, end_of_turn_id, load_causal_lm, load_tokenizer, resolve_model
from openrlaif.models.logprobs import collate
from openrlaif.models.logprobs import encode_response as encode_pair_side
from openrlaif.sampling.hf import HFSampler
from openrlaif.sampling.types import SamplingParams
from openrlaif.stages.dpo import REFERENCE_PAIRS, reference_batches, smoothing_for


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir))


def test_resolve_model(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"model.judge: unknown model '/no/such'"):
        resolve_model("/no/such", "model.judge")
    # a hub id that is not in the (offline) cache is an error, not a download
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        resolve_model("nobody-xyz/not-a-real-model-123")


def test_tokenizer_and_chat_template(tiny):
    tok = tiny.tokenizer
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    text = chat_prompt(tok, [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_chat_template_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UserError, match="no chat template"):
        load_tokenizer(tmp_path)


def test_tokenizer_is_read_once_per_process_and_again_once_rewritten(tiny_model_dir, tmp_path):
    import shutil

    root = tmp_path / "model"
    shutil.copytree(tiny_model_dir, root)
    first = load_tokenizer(root)
    assert load_tokenizer(root) is first  # the stages of one run share it
    config = root / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["model_max_length"] = 777
    config.write_text(json.dumps(data))
    again = load_tokenizer(root)
    assert again is not first and again.model_max_length == 777
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((root / "config.json").read_text())
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        load_tokenizer(broken)
    for f in root.iterdir():  # the tokenizer arrives: an error is never remembered
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, broken / f.name)
    assert load_tokenizer(broken).model_max_length == 777


class ScriptedModel:
    """Stands in for a causal LM: 'generates' a reply that names the prompt it was given."""

    def __init__(self, tok, stop_for):
        self.tok = tok
        self.stop_for = stop_for
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kw):
        self.calls.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            assert mask[0] == 0 or all(mask)  # left padding
            text = self.tok.decode([t for t, m in zip(ids, mask) if m])
            word = text.split("user\n", 1)[1].split("<|im_end|>")[0]
            reply = self.tok(f" {word} ok", add_special_tokens=False).input_ids
            if word in self.stop_for:
                reply = reply + [eos_token_id[0]] + self.tok(" after stop", add_special_tokens=False).input_ids
            reply = (reply + [pad_token_id] * max_new_tokens)[:max_new_tokens]
            rows.append(ids + reply)
        return torch.tensor(rows)


def test_sampler_maps_outputs_back_and_stops(tiny):
    tok = tiny.tokenizer
    prompts = [[{"role": "user", "content": w}] for w in ["cat", "elephant giraffe zebra", "dog"]]
    model = ScriptedModel(tok, stop_for={"cat", "dog"})
    sampler = HFSampler(model, tok)
    out = sampler.sample(prompts, 2, SamplingParams(max_new_tokens=30, batch_size=4))
    assert out == [["cat ok"] * 2, ["elephant giraffe zebra ok"] * 2, ["dog ok"] * 2]
    assert sampler.finished == [[True, True], [False, False], [True, True]]
    assert model.calls == [4, 2]  # 6 sequences in batches of 4
    assert sampler.stats.sequences == 6
    assert sampler.stats.finished == 4
    n_cat = len(tok(" cat ok", add_special_tokens=False).input_ids) + 1
    n_dog = len(tok(" dog ok", add_special_tokens=False).input_ids) + 1
    assert sampler.stats.new_tokens == 2 * n_cat + 2 * n_dog + 2 * 30


def test_sampler_real_model_is_seeded(tiny):
    sampler = HFSampler(tiny.model, tiny.tokenizer)
    convs = [[{"role": "user", "content": "Why is the sky blue?"}], [{"role": "user", "content": "Hi"}]]
    params = SamplingParams(temperature=1.5, max_new_tokens=6, batch_size=3, seed=11)
    a = sampler.sample(convs, 2, params)
    b = sampler.sample(convs, 2, params)
    assert a == b
    assert len(a) == 2 and all(len(x) == 2 for x in a)
    assert sampler.stats.new_tokens <= 4 * 6


def test_judge_answer_tokens(tiny):
    tok = tiny.tokenizer
    a, b = answer_token_ids(tok, "A"), answer_token_ids(tok, "B")
    assert a and b and not set(a) & set(b)
    assert tok.convert_tokens_to_ids("A") in a


def test_judge_render(tiny):
    judge = LocalJudge(tiny.model, tiny.tokenizer, max_response_chars=50)
    text = judge.render("the question", "x" * 80, "short", "Which is better?")
    assert text.endswith("<|im_start|>assistant\n" + JUDGE_PREFILL)
    assert "x" * 47 + "..." in text and "x" * 48 not in text
    assert "Response B:\nshort" in text
    assert "Which is better?" in text


def test_judge_is_batch_invariant_and_consistent(tiny):
    """Left padding must not change a verdict: batch size 1 and 8 give the same probabilities."""
    principle = Principle("helpful", "Which response is more helpful?")
    items = [
        Comparison("Why is the sky blue?", "Sunlight scatters.", "Because of the sea and the stars at night.", principle),
        Comparison("Hi", "Hello! How can I help you today?", "no", principle),
        Comparison("List the planets.", "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.", "Mars", principle),
    ]
    one = LocalJudge(tiny.model, tiny.tokenizer, batch_size=1).compare(items)
    many = LocalJudge(tiny.model, tiny.tokenizer, batch_size=8).compare(items)
    for v1, v8 in zip(one, many):
        assert v1.p_first == pytest.approx(v8.p_first, abs=1e-4)
        assert v1.score_ab == pytest.approx(v8.score_ab, abs=1e-4)
        assert v1.score_ba == pytest.approx(v8.score_ba, abs=1e-4)
        assert v1.p_first == pytest.approx((v1.score_ab + v1.score_ba) / 2)
        assert v1.principle == "helpful"
        (la, lb) = v1.raw["logp_ab"]
        assert all(x <= 0 for x in la + lb)
        pa = sum(math.exp(x) for x in la)
        pb = sum(math.exp(x) for x in lb)
        assert v1.score_ab == pytest.approx(pa / (pa + pb), abs=1e-6)


def test_encode_pair_side(tiny):
    tok = tiny.tokenizer
    eot = end_of_turn_id(tok)
    prompt = [{"role": "user", "content": "Explain why the sky is blue in simple words please."}]
    p_ids = tok(chat_prompt(tok, prompt), add_special_tokens=False).input_ids
    r_ids = tok("Sunlight scatters off molecules.", add_special_tokens=False).input_ids

    enc = encode_pair_side(tok, prompt, "Sunlight scatters off molecules.", max_length=200)
    assert enc.input_ids == p_ids + r_ids + [eot]
    assert enc.response_mask == [0] * len(p_ids) + [1] * (len(r_ids) + 1)

    # tight budget: the prompt keeps its end (the assistant header), at most half the budget
    budget = 16
    enc = encode_pair_side(tok, prompt, "Sunlight scatters off molecules.", max_length=budget)
    assert len(enc.input_ids) <= budget
    n_prompt = enc.response_mask.count(0)
    assert 1 <= n_prompt <= budget // 2
    assert enc.input_ids[:n_prompt] == p_ids[-n_prompt:]
    assert enc.input_ids[n_prompt:] == (r_ids + [eot])[: len(enc.input_ids) - n_prompt]

    # a response longer than the budget is cut; the sequence never exceeds max_length
    enc = encode_pair_side(tok, prompt, "water " * 100, max_length=32)
    assert len(enc.input_ids) == 32
    assert len(enc.input_ids) == len(enc.response_mask)
    assert enc.response_mask[0] == 0 and enc.response_mask[-1] == 1


def test_collate_right_pads():
    from openrlaif.models.logprobs import Encoded

    ids, attn, resp = collate([Encoded([5, 6, 7], [0, 1, 1]), Encoded([8], [1])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert resp.tolist() == [[0, 1, 1], [1, 0, 0]]


def test_smoothing_for():
    soft = TrainConfig()
    hard = TrainConfig(soft_labels=False, label_smoothing=0.1)
    assert smoothing_for({"p_chosen": 0.8}, soft) == pytest.approx(0.2)
    assert smoothing_for({"p_chosen": 0.3}, soft) == pytest.approx(0.5)  # clamped to at most 0.5
    assert smoothing_for({"p_chosen": 1.2}, soft) == 0.0  # clamped to at least 0
    assert smoothing_for({}, soft) == 0.0  # no judge probability: the fixed value
    assert smoothing_for({"p_chosen": 0.8}, hard) == pytest.approx(0.1)


def test_reference_batches_first_step_in_its_shapes_then_larger_batches():
    """DPO's reference pass: the first step's pairs in the very parts the policy runs them in (micro-batches, then
    process shares), then every other pair once, shortest first, REFERENCE_PAIRS at a time."""
    import random

    from openrlaif.models.accel import epoch_steps
    from openrlaif.models.logprobs import Encoded

    n = 21
    chosen = [Encoded([1] * (10 + (i * 7) % 13), [0] * (10 + (i * 7) % 13)) for i in range(n)]
    rejected = [Encoded([1] * (5 + i % 4), [0] * (5 + i % 4)) for i in range(n)]
    tc = TrainConfig(batch_size=4, grad_accum_steps=2)
    batches = reference_batches(chosen, rejected, tc, processes=2, seed=3)
    first = next(epoch_steps(n, 4, 1, random.Random(3), 0, 1))[2]  # the order training draws with the same seed
    # 4 pairs, 2 micro-batches of 2, each shared out over 2 processes: 4 parts of one pair
    assert batches[:4] == [[first[0]], [first[1]], [first[2]], [first[3]]]
    rest = batches[4:]
    assert [len(b) for b in rest] == [REFERENCE_PAIRS, REFERENCE_PAIRS, n - 4 - 2 * REFERENCE_PAIRS]
    flat = [i for b in rest for i in b]
    assert sorted(flat + first) == list(range(n))  # every pair once
    widths = [len(chosen[i].input_ids) + len(rejected[i].input_ids) for i in flat]
    assert widths == sorted(widths)
    one = reference_batches(chosen, rejected, TrainConfig(batch_size=4), processes=1, seed=3)
    assert one[0] == first and reference_batches([], [], tc, 1, 0) == []


def test_adamw_is_fused_on_a_cpu_and_steps_like_the_default():
    """models.accel.adamw: torch's fused AdamW on a CPU, with the updates of torch's default AdamW."""
    from openrlaif.models.accel import adamw, make_accelerator

    accelerator = make_accelerator(TrainConfig(mixed_precision="no"))
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(16, 24, generator=generator), torch.randn(24, 16, generator=generator)]
    grads = [[torch.randn(t.shape, generator=generator) for t in start] for _ in range(3)]
    runs = {}
    for name, make in (("ours", lambda ps: adamw(accelerator, ps, 1e-2)),
                       ("default", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0))):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        runs[name] = (optimizer, params)
    assert runs["ours"][0].defaults["fused"] is True and not runs["default"][0].defaults["fused"]
    for mine, theirs, first in zip(runs["ours"][1], runs["default"][1], start):
        assert not torch.equal(mine, first)  # it moved
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_response_logprobs_matches_full_vocabulary_path(tiny):
    """The fast path (LM head on response positions only) equals log-softmax over every position."""
    from openrlaif.models.logprobs import response_logprobs
    from openrlaif.models.policy import add_lora
    from openrlaif.optimize.losses import sequence_logprobs

    tok = tiny.tokenizer
    prompt = [{"role": "user", "content": "Explain why the sky is blue."}]
    seqs = [encode_pair_side(tok, prompt, text, 64)
            for text in ("Sunlight scatters off molecules.", "Blue.", "The sea is wide, the stars are bright.")]
    ids, attn, resp = collate(seqs, tok.pad_token_id)
    torch.manual_seed(0)
    model = add_lora(tiny.model, TrainConfig(lora_r=4, lora_alpha=8))
    for module_name, param in model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in module_name:
            torch.nn.init.normal_(param, std=0.5)
    with torch.no_grad():
        full = sequence_logprobs(model(input_ids=ids, attention_mask=attn).logits.float(), ids, resp)
        fast = response_logprobs(model, ids, attn, resp)
        with model.disable_adapter():
            full_ref = sequence_logprobs(model(input_ids=ids, attention_mask=attn).logits.float(), ids, resp)
            fast_ref = response_logprobs(model, ids, attn, resp)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_ref, full_ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, full_ref)  # the adapter really changed the log-probs
    model.unload()  # leave the shared tiny model as it was


def test_tempered_token_logprobs_are_the_sampled_distribution(tiny):
    """RL at temperature T scores log softmax(logits / T) per response token, in token_logprobs and in PPO's
    actor-critic alike; T = 1 is the plain distribution, and the two differ."""
    from openrlaif.models.logprobs import token_logprobs
    from openrlaif.stages.ppo import ActorCritic

    tok = tiny.tokenizer
    prompt = [{"role": "user", "content": "Name a colour."}]
    seqs = [encode_pair_side(tok, prompt, text, 64) for text in ("Blue.", "It is a shade of green, mostly.")]
    ids, attn, resp = collate(seqs, tok.pad_token_id)
    mask = resp[:, 1:].bool()
    with torch.no_grad():
        logits = tiny.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        per_t = {}
        for t in (1.0, 0.7):
            expected = torch.log_softmax(logits / t, -1).gather(-1, ids[:, 1:, None])[..., 0] * mask
            got = token_logprobs(tiny.model, ids, attn, resp, t)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            logp, _, _ = ActorCritic(tiny.model, temperature=t)(ids, attn, resp, with_entropy=False)
            torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)
            per_t[t] = got
    assert (per_t[1.0] - per_t[0.7]).abs().max() > 1e-3


def test_int8_judge_is_close_to_fp32_and_named_apart(tiny_model_dir):
    from openrlaif.config import load_config
    from openrlaif.data.constitution import Principle
    from openrlaif.feedback.factory import build_judge
    from openrlaif.feedback.types import Comparison

    items = [Comparison("Say hello.", "Hello there, friend.", "Go away.", Principle("p", "Which is kinder?")),
             Comparison("Name a planet.", "Mars.", "The sea is wide.", Principle("p", "Which is right?"))]
    base = [f"model.policy={tiny_model_dir}", "feedback.method=contrastive", "feedback.temperature=1", "feedback.cache=null"]
    fp32, name32 = build_judge(load_config(None, base))
    int8, name8 = build_judge(load_config(None, base + ["model.judge_quantize=int8"]))
    assert name8 == f"{name32}@int8"
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in int8.model.modules())
    for a, b in zip(fp32.compare(items), int8.compare(items)):
        assert b.p_first == pytest.approx(a.p_first, abs=0.05)


def test_bf16_autocast_judge_computes_in_bf16_close_to_fp32_and_named_apart(tiny_model_dir):
    """model.judge_mixed_precision=bf16: the judge's matrix products run in bf16 (its Linear layers return bf16
    under autocast, its weights stay float32 so the fitted heads' and probe's fingerprints still match), the
    verdicts move a little but not much, and the judge has its own name (cache entries, gate figures)."""
    from openrlaif.config import load_config
    from openrlaif.core.cache import model_fingerprint
    from openrlaif.data.constitution import Principle
    from openrlaif.feedback.factory import build_judge
    from openrlaif.feedback.gate_cache import gate_key
    from openrlaif.feedback.types import Comparison

    items = [Comparison("Say hello.", "Hello there, friend.", "Go away.", Principle("p", "Which is kinder?")),
             Comparison("Name a planet.", "Mars.", "The sea is wide.", Principle("p", "Which is right?"))]
    base = [f"model.policy={tiny_model_dir}", "feedback.method=contrastive", "feedback.temperature=1", "feedback.cache=null"]
    cfg32, cfg16 = load_config(None, base), load_config(None, base + ["model.judge_mixed_precision=bf16"])
    fp32, name32 = build_judge(cfg32)
    plain = [(v.p_first, v.score_ab) for v in fp32.compare(items)]
    fingerprint = model_fingerprint(fp32.model)
    bf16, name16 = build_judge(cfg16)
    assert name16 == f"{name32}@bf16" and bf16.model is not fp32.model  # one judge model per precision
    assert next(bf16.model.parameters()).dtype == torch.float32 and model_fingerprint(bf16.model) == fingerprint
    seen = []
    hook = bf16.model.get_decoder().layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    try:
        mixed = [(v.p_first, v.score_ab) for v in bf16.compare(items)]
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert mixed != plain  # it did compute differently
    for (p32, s32), (p16, s16) in zip(plain, mixed):
        assert p16 == pytest.approx(p32, abs=0.05)
    from openrlaif.data.constitution import load_constitution

    constitution = load_constitution("builtin")
    assert gate_key(bf16, cfg16, constitution, []) != gate_key(fp32, cfg32, constitution, [])
    with pytest.raises(Exception, match="judge_mixed_precision"):
        load_config(None, base + ["model.judge_mixed_precision=bf16", "model.judge_quantize=int8"])


def test_shared_prefix_forward_equals_full_sequences(tiny_model_dir, monkeypatch):
    """Prefix KV reuse (several prefixes of different lengths, groups split across batches) gives the
    same next-token and response log-probs as running every full sequence alone."""
    from openrlaif.feedback.judges import last_position_logits
    from openrlaif.models.loading import load_causal_lm
    from openrlaif.models.logprobs import Split, split_next_token_logprobs, split_response_logprobs

    m = load_causal_lm(str(tiny_model_dir)).model
    gen = torch.Generator().manual_seed(0)
    prefixes = [tuple(torch.randint(10, 300, (n,), generator=gen).tolist()) for n in (5, 9, 3)]
    splits = [Split(prefixes[i % 3], torch.randint(10, 300, (2 + (i * 7) % 11,), generator=gen).tolist()) for i in range(10)]
    masks = [[int(t % 2 == 0) for t in range(len(s.suffix))] for s in splits]
    with torch.inference_mode():
        nxt = split_next_token_logprobs(m, splits, 3, 0)
        resp = split_response_logprobs(m, splits, masks, 4, 0)
        for i, s in enumerate(splits):
            ids = torch.tensor([list(s.prefix) + s.suffix])
            ref = torch.log_softmax(last_position_logits(m, ids, torch.ones_like(ids))[0].float(), -1)
            assert torch.allclose(nxt[i], ref, atol=1e-5)
            lp = torch.log_softmax(m(input_ids=ids).logits[0].float(), -1)
            p = len(s.prefix)
            expected = sum(lp[p + t - 1, s.suffix[t]].item() for t in range(len(s.suffix)) if masks[i][t])
            assert resp[i] == pytest.approx(expected, abs=1e-4)
        # the vocabulary projection split into pieces that cut across sequences gives the same sums
        import openrlaif.models.logprobs as logprobs

        monkeypatch.setattr(logprobs, "HEAD_ROWS", 3)
        pieces = split_response_logprobs(m, splits, masks, 4, 0)
        assert all(pieces[i] == pytest.approx(resp[i], abs=1e-5) for i in range(len(splits)))
        # prefixes' caches kept a few tokens at a time (each prefix its own chunk): the same sums
        monkeypatch.setattr(logprobs, "PREFIX_CHUNK_TOKENS", 4)
        chunked = split_response_logprobs(m, splits, masks, 4, 0)
        assert all(chunked[i] == pytest.approx(resp[i], abs=1e-5) for i in range(len(splits)))


def test_pairwise_judge_with_and_without_prefix_reuse_agree(tiny_model_dir):
    from openrlaif.data.constitution import Principle
    from openrlaif.feedback.judges import LocalJudge, last_position_logits
    from openrlaif.feedback.scoring import combine_orders, prob_first_slot
    from openrlaif.feedback.types import Comparison
    from openrlaif.models.loading import load_causal_lm

    lm = load_causal_lm(str(tiny_model_dir))
    judge = LocalJudge(lm.model, lm.tokenizer, batch_size=3)
    cands = ["Paris.", "It is Paris, the capital.", "Lyon", "I do not know."]
    items = [Comparison("What is the capital of France?", cands[i], cands[j], Principle("p", "Which is right?"))
             for i in range(4) for j in range(i + 1, 4)]
    texts = [t for it in items for t in (judge.render(it.prompt, it.first, it.second, "Which is right?"),
                                         judge.render(it.prompt, it.second, it.first, "Which is right?"))]
    shared = judge.compare(items)
    # The plain path on the same token ids (head and rest tokenised apart) gives the same readings.
    head = judge.request_head(items[0].prompt)
    ids = [lm.tokenizer(t[: t.find(head) + len(head)], add_special_tokens=False).input_ids
           + lm.tokenizer(t[t.find(head) + len(head):], add_special_tokens=False).input_ids for t in texts]
    with torch.inference_mode():
        for n, v in enumerate(shared):
            reads = []
            for k in (2 * n, 2 * n + 1):
                x = torch.tensor([ids[k]])
                logp = torch.log_softmax(last_position_logits(lm.model, x, torch.ones_like(x))[0], -1)
                reads.append((logp[judge.ids_a].tolist(), logp[judge.ids_b].tolist()))
            p, _, _ = combine_orders(prob_first_slot(*reads[0]), prob_first_slot(*reads[1]))
            assert v.p_first == pytest.approx(p, abs=1e-5)


def test_truncated_prompt_keeps_the_system_turn(tiny_model_dir):
    from openrlaif.models.loading import load_tokenizer
    from openrlaif.models.logprobs import encode_response

    tok = load_tokenizer(tiny_model_dir)
    system = {"role": "system", "content": "You are kind."}
    long_user = {"role": "user", "content": "word " * 300 + "the final question?"}
    enc = encode_response(tok, [system, long_user], "A reply.", 96)
    text = tok.decode(enc.input_ids)
    assert len(enc.input_ids) <= 96 and text.startswith(tok.apply_chat_template([system], tokenize=False))
    assert "the final question?" in text and "A reply." in text
    # Without a system turn the tail is kept as before.
    plain = encode_response(tok, [long_user], "A reply.", 96)
    assert len(plain.input_ids) <= 96 and "the final question?" in tok.decode(plain.input_ids)


def test_peoples_pairs_share_their_conversation_and_score_as_run_whole(tiny_model_dir):
    """The human_prefs yardstick runs a pair's conversation once for both replies (the KV cache of the shared
    prefix), with a LoRA adapter on and off: the summed reply log-probs equal the whole-sequence path's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from openrlaif.data.pairs import LabelledPair
    from openrlaif.evaluate.benchmarks import pair_logprobs
    from openrlaif.models.loading import load_causal_lm
    from openrlaif.models.logprobs import batched_response_logprobs, encode_response

    lm = load_causal_lm(str(tiny_model_dir))
    model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))  # a non-zero adapter
    model.eval()
    pairs = [LabelledPair(str(i), [{"role": "user", "content": f"Question {i}: " + "why? " * i}], f"Because {i}.",
                          "No." * (i + 1)) for i in range(5)]
    seqs = [encode_response(lm.tokenizer, p.messages, r, 256) for p in pairs for r in (p.chosen, p.rejected)]
    pad = lm.tokenizer.pad_token_id
    for adapter_on in (True, False):
        with (torch.no_grad() if adapter_on else model.disable_adapter()):
            shared = pair_logprobs(model, seqs, pad, 4, "shared")
            whole, _ = batched_response_logprobs(model, seqs, pad, 4, "whole")
        assert shared == pytest.approx(whole, abs=1e-4)


@pytest.mark.parametrize("attention_cost", [0.0, 0.05, None])
def test_shared_prefix_logprobs_forked_cached_or_mixed_equal_whole(tiny_model_dir, monkeypatch, attention_cost):
    """Replies that share a prompt run in one forked row, or on the prompt's KV cache when a row would cost more
    (``FORK_ATTENTION_COST``: 0 forks every group, 0.05 the short replies but not the long ones; None: a model
    that takes no 4-D mask, all on the cache); every way gives the whole-sequence log-probs, in the caller's
    order."""
    import torch

    import openrlaif.models.logprobs as lp

    lm = load_causal_lm(str(tiny_model_dir))
    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    convs = [[{"role": "user", "content": f"Question {i}: " + "why? " * (3 * i)}] for i in range(4)]
    replies = ["Yes.", "No, never.", "Because " + "it is so " * 12, "Maybe " * 15]
    seqs = [lp.encode_response(tok, c, r, 256) for c in convs for r in replies] + \
        [lp.encode_response(tok, [{"role": "user", "content": "Alone."}], "Fine.", 256)]
    calls = {"forked": 0, "cached": 0}
    forked, cached = lp.forked_response_logprobs, lp.split_response_logprobs

    def count_forked(*a, **k):
        calls["forked"] += 1
        return forked(*a, **k)

    def count_cached(model, splits, *a, **k):
        calls["cached"] += len(splits)
        return cached(model, splits, *a, **k)

    monkeypatch.setattr(lp, "forked_response_logprobs", count_forked)
    monkeypatch.setattr(lp, "split_response_logprobs", count_cached)
    if attention_cost is None:
        monkeypatch.setattr(lp, "forks_supported", lambda model: False)
    else:
        monkeypatch.setattr(lp, "FORK_ATTENTION_COST", attention_cost)
    with torch.inference_mode():
        shared = lp.shared_prefix_logprobs(lm.model, seqs, pad, 4, "shared")
        whole, _ = lp.batched_response_logprobs(lm.model, seqs, pad, 4, "whole")
    assert shared == pytest.approx(whole, rel=1e-6, abs=1e-4)  # float32 sums of up to ~450 nats
    if attention_cost == 0.0:
        assert calls["forked"] >= 4 and calls["cached"] == 1  # only "Alone." is on the cache path
    elif attention_cost is None:
        assert calls == {"forked": 0, "cached": len(seqs)}
    else:
        assert calls["forked"] >= 1 and 1 < calls["cached"] < len(seqs)


def test_row_seeded_samplers_side_by_side(tiny_model_dir):
    """Row seeds: a prompt's answer does not depend on its batch; two copies of one policy sampling side by side
    (one thread each) write exactly what each writes alone, so two policies answer with shared random numbers."""
    from openrlaif.sampling.hf import sample_side_by_side

    prompts = [[{"role": "user", "content": f"tell me {w}"}] for w in ("a story", "why", "more about the sea", "hi")]
    params = SamplingParams(1.5, 0.95, 12, 8, seed=3)
    copies = [load_causal_lm(str(tiny_model_dir)) for _ in range(2)]
    alone = HFSampler(copies[0].model, copies[0].tokenizer, row_seeds=True).sample(prompts, 2, params)
    small_batches = HFSampler(copies[0].model, copies[0].tokenizer, row_seeds=True).sample(
        prompts, 2, SamplingParams(1.5, 0.95, 12, 2, seed=3))
    assert small_batches == alone
    samplers = [HFSampler(c.model, c.tokenizer, row_seeds=True) for c in copies]
    both = sample_side_by_side(samplers, prompts, 2, params, "side by side")
    assert both[0] == both[1] == alone
    assert len({a for row in alone for a in row}) > 4  # hot sampling: the rows really drew different answers
    assert all(s.stats.new_tokens > 0 and s.progress is None for s in samplers)
    threads = torch.get_num_threads()
    try:  # one intra-op thread for two samplers: they run one after the other, with the same answers
        torch.set_num_threads(1)
        assert sample_side_by_side(samplers, prompts, 2, params, "one thread") == [alone, alone]
    finally:
        torch.set_num_threads(threads)
    other_seed = HFSampler(copies[0].model, copies[0].tokenizer, row_seeds=True).sample(
        prompts, 2, SamplingParams(1.5, 0.95, 12, 8, seed=4))
    assert other_seed != alone
    with pytest.raises(ValueError, match="row_seeds"):
        sample_side_by_side([HFSampler(c.model, c.tokenizer) for c in copies], prompts, 1, params, "x")


def test_frozen_weights_cast_once_give_the_same_numbers(tiny_model_dir):
    """cast_frozen_once: under bf16 autocast a frozen linear layer reuses one bf16 copy of its weight, and the
    outputs, losses and LoRA gradients are bit-identical to plain autocast; a weight changed in place is cast anew."""
    import copy

    from openrlaif.models.loading import autocast_matmuls, cast_frozen_once
    from openrlaif.models.policy import add_lora

    ids = torch.randint(5, 200, (3, 17))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0
    # a judge: frozen, read under inference mode
    plain = load_causal_lm(str(tiny_model_dir)).model.eval()
    judge = copy.deepcopy(plain)
    autocast_matmuls(judge)  # gives its linear layers their casts
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain(input_ids=ids, attention_mask=attn).logits
    with torch.inference_mode():
        got = judge(input_ids=ids, attention_mask=attn).logits
        layer = judge.get_decoder().layers[0].mlp.up_proj
        kept = layer._openrlaif_cast[1]
        assert kept is not None and kept.dtype == torch.bfloat16
        judge(input_ids=ids, attention_mask=attn)
        assert layer._openrlaif_cast[1] is kept  # reused, not cast again
    assert torch.equal(got, want)
    bare = copy.deepcopy(plain)
    cast_frozen_once(bare)
    with torch.inference_mode():  # outside autocast: float32 as before
        assert torch.equal(bare(input_ids=ids).logits, plain(input_ids=ids).logits)
        assert bare.lm_head._openrlaif_cast[1] is None  # nothing cast

    # a LoRA policy: frozen base, trainable adapter; a training step either way is the same step
    torch.manual_seed(0)
    a = add_lora(load_causal_lm(str(tiny_model_dir)).model, TrainConfig(lora_r=4, lora_alpha=8))
    torch.manual_seed(0)
    b = add_lora(load_causal_lm(str(tiny_model_dir)).model, TrainConfig(lora_r=4, lora_alpha=8))
    assert cast_frozen_once(b) > 0
    for m in (a, b):
        with torch.no_grad():  # a non-zero adapter, so its gradients and outputs mean something
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (a, b)]
    for step in range(2):
        losses = []
        for m, opt in zip((a, b), opts):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m(input_ids=ids, attention_mask=attn).logits.float().logsumexp(-1).mean()
            loss.backward()
            losses.append(loss.detach())
            opt.step()
        assert torch.equal(losses[0], losses[1])
        grads = [[p.grad for n, p in m.named_parameters() if p.requires_grad] for m in (a, b)]
        assert all(torch.equal(x, y) for x, y in zip(*grads)) and any(x.abs().sum() > 0 for x in grads[0])
    # a base weight changed in place (e.g. merged into) is cast anew
    for m in (a, b):
        with torch.no_grad():
            m.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.mul_(1.5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


@pytest.mark.skipif(not __import__("openrlaif.models.loading", fromlist=["x"]).packing_available(),
                    reason="oneDNN bf16 packing needs a processor with native bf16")
def test_packed_frozen_layers_give_the_same_numbers_and_draws(tiny_model_dir, monkeypatch):
    """pack_frozen (a sampler's bf16 copy) and a judge under autocast_matmuls: every linear layer runs on a weight
    packed for oneDNN, with bit-identical logits and draws, the sampler's plain weights released; a call that needs
    gradients still gets them at its inputs; where the machine cannot pack, nothing changes."""
    import copy

    import openrlaif.models.loading as loading
    from openrlaif.models.loading import autocast_matmuls, pack_frozen

    ids = torch.randint(5, 200, (3, 17))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0
    tiny = load_causal_lm(str(tiny_model_dir), "bfloat16")
    plain = tiny.model
    packed = copy.deepcopy(plain)
    linears = [m for m in packed.modules() if isinstance(m, torch.nn.Linear)]
    assert pack_frozen(packed) == len(linears) > 0 and pack_frozen(packed) == len(linears)  # idempotent
    with torch.inference_mode():
        assert torch.equal(packed(input_ids=ids, attention_mask=attn).logits, plain(input_ids=ids, attention_mask=attn).logits)
    # each layer packed once and its own weight released
    assert all(m.weight.numel() == 0 and m._openrlaif_packed_only.is_mkldnn for m in linears)
    # an output head that shares the embeddings' weight (as SmolLM2's does) keeps it, packed beside it on first use
    tied = copy.deepcopy(plain)
    tied.lm_head.weight = tied.get_input_embeddings().weight
    untied_logits = tied(input_ids=ids).logits.detach()
    pack_frozen(tied)
    with torch.inference_mode():
        assert torch.equal(tied(input_ids=ids).logits, untied_logits)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight and tied.lm_head._openrlaif_cast[1].is_mkldnn
    assert getattr(tied.lm_head, "_openrlaif_packed_only", None) is None
    prompts = [[{"role": "user", "content": t}] for t in ("hello there", "a longer prompt for the sampler", "x")]
    params = SamplingParams(1.5, 0.95, 12, 8, seed=3)
    want = HFSampler(plain, tiny.tokenizer, row_seeds=True).sample(prompts, 2, params)
    assert HFSampler(packed, tiny.tokenizer, row_seeds=True).sample(prompts, 2, params) == want
    # a call with gradients: they reach the inputs (here the embeddings) as through the unpacked model
    grads = []
    for m in (plain, packed):
        m.zero_grad()
        m(input_ids=ids, attention_mask=attn).logits.float().logsumexp(-1).mean().backward()
        grads.append(m.get_input_embeddings().weight.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])
    # a judge: float32 weights under bf16 autocast, its casts packed; the numbers plain autocast gives
    judge32 = load_causal_lm(str(tiny_model_dir)).model.eval()
    judge = copy.deepcopy(judge32)
    autocast_matmuls(judge)
    with torch.inference_mode():
        got = judge(input_ids=ids, attention_mask=attn).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(got, judge32(input_ids=ids, attention_mask=attn).logits)
    assert judge.lm_head._openrlaif_cast[1].is_mkldnn
    # a machine without native bf16: nothing packed
    monkeypatch.setattr(loading, "native_bf16", lambda flags=None: False)
    assert not loading.packing_available() and pack_frozen(copy.deepcopy(plain)) == 0


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_training_stages_prepare_with_the_frozen_casts(tiny_model_dir, precision):
    """models.accel.prepare (every training stage's accelerator.prepare): under bf16 the LoRA policy's frozen
    linear layers get their one cast, in float32 they stay plain."""
    from openrlaif.models.accel import make_accelerator, prepare
    from openrlaif.models.loading import cast_once_linear
    from openrlaif.models.logprobs import SequenceLogprobs
    from openrlaif.models.policy import add_lora

    tc = TrainConfig(lora_r=4, lora_alpha=8, mixed_precision=precision)
    accelerator = make_accelerator(tc)
    model = add_lora(load_causal_lm(str(tiny_model_dir)).model, tc)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    policy, optimizer = prepare(accelerator, model, SequenceLogprobs(model), optimizer)
    cast = [m for m in model.modules() if isinstance(m, cast_once_linear())]
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert (len(cast) == len(linear) > 0) if precision == "bf16" else not cast
    assert accelerator.unwrap_model(policy).model is model


def attention_ops(fn) -> set[str]:
    """The SDPA kernels that ran inside ``fn()`` (forward and backward), by the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return {kind for kind, op in (("flash", "aten::_scaled_dot_product_flash_attention_for_cpu"),
                                  ("math", "aten::_scaled_dot_product_attention_math")) if op in names}


def test_short_rows_train_with_the_math_attention_kernel(tiny_model_dir):
    """models.loading.math_attention_for_short_rows: short rows (forward and backward) run the math kernel, long rows
    and decoding steps the flash kernel; a deep copy (PPO's critic) is hooked on itself; the kernel flags are put
    back even when the forward raises."""
    import copy

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from openrlaif.models.loading import math_attention_for_short_rows

    model = load_causal_lm(str(tiny_model_dir), math_attention_up_to=16).model
    assert math_attention_for_short_rows(model, 16) is False  # already hooked
    short, long = torch.randint(3, 50, (2, 12)), torch.randint(3, 50, (2, 40))

    def train_pass(m, ids):
        def run():
            m.zero_grad()
            m(input_ids=ids).logits.float().pow(2).mean().backward()
        return run

    assert attention_ops(train_pass(model, short)) == {"math"}
    assert attention_ops(train_pass(model, long)) == {"flash"}
    plain = load_causal_lm(str(tiny_model_dir)).model  # not hooked: flash for short rows too
    assert attention_ops(train_pass(plain, short)) == {"flash"}
    with torch.inference_mode():  # a decoding step (one new token after a cached prefix) is left to torch
        out = model(input_ids=short, use_cache=True)
        step = lambda: model(input_ids=short[:, -1:], cache=out.past_key_values, use_cache=True)  # noqa: E731
        assert "math" not in attention_ops(step)
    # the same numbers as running the math kernel by hand
    with torch.inference_mode():
        hooked = model(input_ids=short).logits
        with sdpa_kernel(SDPBackend.MATH):
            by_hand = plain(input_ids=short).logits
    assert torch.equal(hooked, by_hand)
    # a deep copy computes with its own weights through its own hooks
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
        with sdpa_kernel(SDPBackend.MATH):
            expected = twin(input_ids=short).logits
        twin_logits = twin(input_ids=short).logits
    assert torch.equal(twin_logits, expected) and not torch.equal(twin_logits, hooked)
    assert attention_ops(train_pass(twin, short)) == {"math"}
    # a forward that raises leaves the kernels as they were
    assert torch.backends.cuda.flash_sdp_enabled()
    with pytest.raises(Exception):
        model(input_ids=torch.full((1, 8), 10_000))  # an id past the vocabulary
    assert torch.backends.cuda.flash_sdp_enabled()
    assert attention_ops(train_pass(plain, short)) == {"flash"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_direct_adapter_merge_equals_peft_merge_bit_for_bit(tiny_model_dir, tmp_path, dtype):
    """A plain LoRA adapter merged from its file gives the very weights of peft's merge_and_unload, in both dtypes
    the policy is loaded in; an adapter the direct path does not know (rank_pattern) goes through peft."""
    import json

    from peft import PeftModel

    from openrlaif.models.policy import add_lora, merge_adapter, plain_lora_deltas, save_adapter

    base = load_causal_lm(str(tiny_model_dir))
    policy = add_lora(base.model, TrainConfig(lora_r=4, lora_alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)  # a fresh adapter's B is zero: give it something to merge
    adapter = save_adapter(policy, base.tokenizer, tmp_path / "adapter")
    expected = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir), dtype).model,
                                         str(adapter)).merge_and_unload().state_dict()
    fresh = load_causal_lm(str(tiny_model_dir), dtype).model
    assert plain_lora_deltas(fresh, adapter) is not None  # the direct path, not peft's
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    merged = merge_adapter(fresh, adapter).state_dict()
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
    assert sum(not torch.equal(merged[k], before[k]) for k in before) == 7 * len(fresh.model.layers)  # every projection

    config = json.loads((adapter / "adapter_config.json").read_text())
    config["rank_pattern"] = {"q_proj": 4}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    other = load_causal_lm(str(tiny_model_dir), dtype).model
    assert plain_lora_deltas(other, adapter) is None
    merged = merge_adapter(other, adapter).state_dict()
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
