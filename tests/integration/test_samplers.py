"""Samplers: an OpenAI-compatible server on loopback (`rlaif serve`'s app on the tiny model, real HTTP) and
the vLLM glue (vLLM itself needs a GPU: only its interface is exercised here, see docs/scaling.md)."""

import json
import sys
import types

import pytest
import torch
from conftest import tiny_overrides

from openrlaif import pipeline
from openrlaif.config import load_config
from openrlaif.core.errors import UserError
from openrlaif.core.store import read_jsonl
from openrlaif.models.loading import chat_prompt, end_of_turn_id, load_causal_lm
from openrlaif.sampling.remote import OpenAICompatibleSampler, VLLMSampler
from openrlaif.sampling.types import SamplingParams
from openrlaif.serve import FaultPlan, ServerThread, create_app


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    loaded = load_causal_lm(str(tiny_model_dir))
    app = create_app(loaded.model, loaded.tokenizer, "tiny")
    with ServerThread(app) as url:
        yield url, app


def greedy(model, tok, messages, max_new_tokens):
    ids = tok(chat_prompt(tok, messages), add_special_tokens=False, return_tensors="pt").input_ids
    stop = sorted({end_of_turn_id(tok), tok.eos_token_id} - {None})
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=stop, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in stop), len(new))]
    return tok.decode(new, skip_special_tokens=True).strip()


def test_n_samples_per_prompt_over_http(server):
    url, _ = server
    sampler = OpenAICompatibleSampler(url, "tiny", concurrency=2)
    prompts = [[{"role": "user", "content": f"Say something about {x}."}] for x in ("cats", "rain", "tea")]
    out = sampler.sample(prompts, 3, SamplingParams(temperature=1.5, top_p=1.0, max_new_tokens=8, seed=5))
    assert [len(o) for o in out] == [3, 3, 3] and [len(f) for f in sampler.finished] == [3, 3, 3]
    assert sampler.stats.sequences == 9 and sampler.stats.new_tokens > 0
    assert len({t for o in out for t in o}) > 3  # samples differ
    again = OpenAICompatibleSampler(url, "tiny").sample(prompts, 3, SamplingParams(1.5, 1.0, 8, seed=5))
    assert again == out  # seeded per prompt


def test_sampler_retries_faults_with_the_judges_policy(tiny_model_dir):
    """The sampler shares the judge's retry policy (core.http): 429/5xx, timeouts and unreadable bodies are
    retried and counted by kind, and the seeded samples come back exactly as from a fault-free server."""
    loaded = load_causal_lm(str(tiny_model_dir))
    prompts = [[{"role": "user", "content": f"Tell me about {x}."}] for x in ("owls", "snow", "bread", "maps", "ink")]
    params = SamplingParams(temperature=1.2, top_p=1.0, max_new_tokens=6, seed=2)
    with ServerThread(create_app(loaded.model, loaded.tokenizer, "tiny")) as url:
        reference = OpenAICompatibleSampler(url, "tiny").sample(prompts, 2, params)
    faults = FaultPlan(rate=0.5, kinds=("429", "500", "timeout", "malformed"), hang_s=1.5, seed=1)
    with ServerThread(create_app(loaded.model, loaded.tokenizer, "tiny", faults=faults)) as url:
        sampler = OpenAICompatibleSampler(url, "tiny", concurrency=2, timeout_s=1.0, max_retries=12,
                                          backoff_base_s=0.01, backoff_cap_s=0.05)
        out = sampler.sample(prompts, 2, params)
    assert out == reference
    injected = sum(faults.injected.values())
    assert injected >= 2 and sampler.attempts.retries == injected and sampler.attempts.failed == 0
    assert sampler.attempts.requests == len(prompts) + injected
    assert set(sampler.attempts.errors) <= {"http_429", "http_500", "timeout", "malformed_body", "http_503"}
    assert sum(sampler.attempts.errors.values()) == injected


def test_adapter_registered_and_sampled(server, tiny_model_dir, tmp_path):
    """A LoRA adapter registered through vLLM's runtime endpoint answers like base + adapter in process."""
    from peft import LoraConfig, get_peft_model

    url, app = server
    base = load_causal_lm(str(tiny_model_dir))
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    sampler = OpenAICompatibleSampler(url, "tiny")
    sampler.load_adapter("policy-r1", tmp_path / "adapter")
    assert sampler.model == "policy-r1"
    messages = [{"role": "user", "content": "Name a colour."}]
    with_adapter = sampler.sample([messages], 1, SamplingParams(temperature=0.0, max_new_tokens=10))[0][0]
    assert with_adapter == greedy(model, base.tokenizer, messages, 10)
    plain = OpenAICompatibleSampler(url, "tiny").sample([messages], 1, SamplingParams(temperature=0.0, max_new_tokens=10))[0][0]
    with model.disable_adapter():
        assert plain == greedy(model, base.tokenizer, messages, 10)
    assert plain != with_adapter
    sampler.load_adapter("policy-r1", tmp_path / "adapter")  # registering twice is fine


def test_two_rounds_sampled_by_the_server(server, tiny_model_dir, tmp_path):
    url, app = server
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "generate.backend=openai", f"generate.api={{base_url: '{url}', model: tiny, concurrency: 2}}"])
    pipeline.run(cfg, out, rounds=2)
    for k in (1, 2):
        rows = read_jsonl(out / f"round_{k}" / "candidates.jsonl")
        assert len(rows) == cfg.data.max_train_prompts and all(len(r["candidates"]) == 3 for r in rows)
    served = json.loads(__import__("httpx").get(f"{url}/models").text)
    assert "openrlaif-round1" in [m["id"] for m in served["data"]]  # round 2 sampled with round 1's adapter


def test_unreachable_sampler_server_is_one_line(tiny_model_dir, tmp_path):
    from test_bad_inputs import free_port

    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "generate.backend=openai", f"generate.api={{base_url: 'http://127.0.0.1:{free_port()}/v1', model: tiny}}"])
    with pytest.raises(UserError, match="generate.api.base_url: cannot connect"):
        pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_vllm_glue_against_its_interface(monkeypatch, tmp_path):
    """Our VLLMSampler drives vLLM's documented offline API (LLM.chat with SamplingParams(n=...), LoRARequest).
    vLLM needs CUDA, so a recording double stands in for it; this checks our side of the interface only."""
    calls = {}

    class Out:
        def __init__(self, text, reason):
            self.text, self.finish_reason, self.token_ids = f" {text} ", reason, [1, 2, 3]

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def chat(self, messages, sampling_params, lora_request=None, use_tqdm=True):
            calls["chat"] = (messages, sampling_params, lora_request)
            return [types.SimpleNamespace(outputs=[Out(f"{i}-{j}", "stop" if j else "length")
                                                   for j in range(sampling_params.n)]) for i in range(len(messages))]

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, lid, path: (name, lid, path)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    sampler = VLLMSampler("/models/base", adapter=tmp_path / "round_1" / "policy", adapter_id=1, seed=3)
    out = sampler.sample([[{"role": "user", "content": "hi"}]] * 2, 2, SamplingParams(0.7, 0.9, 16, seed=11))
    assert out == [["0-0", "0-1"], ["1-0", "1-1"]] and sampler.finished == [[False, True], [False, True]]
    assert calls["init"]["model"] == "/models/base" and calls["init"]["enable_lora"] is True
    sp = calls["chat"][1]
    assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed) == (2, 0.7, 0.9, 16, 11)
    assert calls["chat"][2] == ("policy-1", 1, str(tmp_path / "round_1" / "policy"))
    assert sampler.stats.new_tokens == 12


def test_vllm_backend_without_vllm_is_one_line(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["generate.backend=vllm"])
    with pytest.raises(UserError, match="generate.backend=vllm: vLLM is not installed"):
        pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lora", [False, True])
def test_one_prefill_per_prompt_draws_what_plain_generate_draws(tiny_model_dir, lora):
    """generate_n computes each prompt's prefill once and repeats its KV cache for the n samples; with the same
    per-row seeds it draws exactly the tokens of plain ``generate`` on the prompt repeated n times (left padding,
    prompts of different lengths; also through a peft LoRA wrapper)."""
    from openrlaif.config import TrainConfig
    from openrlaif.models.policy import add_lora
    from openrlaif.sampling.hf import generate_n
    from openrlaif.sampling.nucleus import sampling_kwargs

    loaded = load_causal_lm(str(tiny_model_dir), "float32")
    tok, model = loaded.tokenizer, loaded.model.eval()
    if lora:
        torch.manual_seed(0)
        model = add_lora(model, TrainConfig(lora_target_modules=["q_proj", "v_proj"])).eval()
        for name, param in model.named_parameters():  # a trained-looking adapter, so it changes the logits
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    prompts = [chat_prompt(tok, [{"role": "user", "content": text}]) for text in
               ("Hi?", "Tell me about the sea and the sky, please.", "Why is grass green?")]
    tok.padding_side = "left"
    enc = tok([p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    n, seeds = 3, list(range(1000, 1009))
    kwargs = dict(max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=[end_of_turn_id(tok)])
    with torch.inference_mode():
        plain = model.generate(input_ids=enc["input_ids"].repeat_interleave(n, 0),
                               attention_mask=enc["attention_mask"].repeat_interleave(n, 0),
                               **sampling_kwargs(1.0, 0.9, seeds), **kwargs)
        shared = generate_n(model, enc["input_ids"], enc["attention_mask"], n, **sampling_kwargs(1.0, 0.9, seeds),
                            **kwargs)
    assert torch.equal(plain, shared)
    assert len({tuple(r) for r in shared[:, enc["input_ids"].shape[1]:].tolist()}) > 3  # it did sample


def test_sampling_in_bfloat16_writes_answers_from_nearly_the_policy_s_distribution(tmp_path, tiny_model_dir):
    """model.sample_dtype=bfloat16: generate's sampler and eval's answer writer run a bf16 copy of the policy,
    whose next-token distributions stay within a small KL of float32's; training and the judge keep float32."""
    import copy

    from conftest import tiny_overrides

    from openrlaif.config import load_config
    from openrlaif.models.loading import encode_prompts, load_causal_lm
    from openrlaif.pipeline import open_run, run_stage
    from openrlaif.sampling.factory import build_sampler
    from openrlaif.sampling.hf import HFSampler

    bench = '[{"name": "ifeval", "file": "builtin", "limit": 3, "max_new_tokens": 8}]'
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["model.sample_dtype=bfloat16", f"eval.benchmarks={bench}",
                                                              "eval.red_team=null", "eval.anchors=null"])
    store = open_run(cfg, tmp_path / "run")
    assert next(build_sampler(cfg, store, 1).model.parameters()).dtype == torch.bfloat16
    for stage in ("generate", "label", "train", "eval"):
        run_stage(stage, cfg, store)
    assert store.stage_done("eval")
    # IFEval's answers come from the same bf16 writer as the held-out answers: one start copy, the trained
    # adapter unmerged on the trained rows (sampling.hf.sample_with_adapter), greedy.
    import json

    from peft import PeftModel

    from openrlaif.evaluate.benchmarks import answer, load_benchmark, run_settings
    from openrlaif.models.policy import load_merged

    ev = json.loads(store.path("eval.json", 1).read_text())
    assert ev["trained_writer"] == "start copy with the adapter unmerged, one decoding loop"
    ife = ev["benchmarks"]["ifeval-builtin-heldout"]
    assert ife["generation"]["dtype"] == "bfloat16" and ife["start"]["prompts"] == 3
    # the two policies wrote them in one loop (their tokens/s then share it, and the result says so)
    assert ife["start"]["decoded_alongside"] == "trained" and ife["trained"]["decoded_alongside"] == "start"
    rows = [json.loads(line) for line in store.path("bench/ifeval-builtin-heldout_rows.jsonl", 1).open()]
    spec = cfg.eval.benchmarks[0]
    _, items = load_benchmark(spec)
    # ... and the KL to the start is between those two, on the trained policy's held-out answers.
    from openrlaif.data.prompts import run_prompts
    from openrlaif.stages.evaluate import answer_logprobs, drawn_sequences, mean_difference

    assert ev["kl_dtype"] == "bfloat16" and ev["kl_trained_logprobs"] == "decoding steps"
    messages = {p.id: p.messages for p in run_prompts(cfg.data, "heldout", cfg.data.max_eval_prompts)}
    held = [json.loads(line) for line in store.path("samples.jsonl", 1).open()]
    held = [r for r in held if r["set"] == "heldout"]
    convs = [messages[r["prompt_id"]] for r in held]
    start_copy = load_merged(cfg, None, "bfloat16", frozen=True)
    # each policy alone, through transformers: the start's packed bf16 copy, and peft's unmerged trained policy on
    # a bf16 copy of the start (its adapter in float32, as the one loop computes it)
    trained_peft = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir), "bfloat16").model,
                                             str(store.path("policy", 1))).eval()
    writers, recorded = {"trained": trained_peft, "start": start_copy.model}, None
    for who, model in writers.items():
        again = answer(model, start_copy.tokenizer, items, run_settings(spec, cfg.eval.batch_size, cfg.seed), who)
        assert [r[who] for r in rows] == again.answers
        params = SamplingParams(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                                cfg.seed + 7 + 1000)
        sampler = HFSampler(model, start_copy.tokenizer, row_seeds=True, record_logprobs=who == "trained")
        alone = sampler.sample(convs, 1, params)
        assert [a[0] for a in alone] == [r[who] for r in held]
        recorded = recorded or sampler
    # ... and the KL to the start is between those two copies, on the trained copy's held-out answers as drawn:
    # the trained copy's log-probs read off its decoding steps, the start copy's from a pass over those tokens
    tok = start_copy.tokenizer
    seqs = drawn_sequences(tok, convs, [t[0] for t in recorded.tokens])
    start = answer_logprobs(start_copy.model, tok, seqs, cfg.eval.batch_size, "start")
    assert ev["kl_to_start"] == pytest.approx(mean_difference([lp[0] for lp in recorded.logprobs], start), abs=1e-3)
    # The distributions: float32 vs its bf16 copy on real prompts (next-token KL, every position).
    lm = load_causal_lm(str(tiny_model_dir))
    half = copy.deepcopy(lm.model).to(torch.bfloat16)
    ids = torch.tensor([encode_prompts(lm.tokenizer, [[{"role": "user", "content": "Name three fruits."}]])[0]])
    with torch.inference_mode():
        p = torch.log_softmax(lm.model(input_ids=ids).logits.float(), -1)
        q = torch.log_softmax(half(input_ids=ids).logits.float(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    assert float(kl.mean()) < 0.01 and float(kl.max()) < 0.05


def test_decoding_steps_record_the_policy_s_own_log_probs_of_what_it_drew(tiny_model_dir):
    """HFSampler(record_logprobs=True) keeps each answer's tokens as drawn (its stop token when it stopped) and
    their summed log-probability under the model's raw distribution, read off the decoding steps: in float32
    the same sums as a forward pass over prompt + drawn tokens (eval's KL takes them instead of that pass),
    whatever the sampling temperature and nucleus; greedy decoding records nothing."""
    from openrlaif.models.logprobs import batched_response_logprobs
    from openrlaif.sampling.hf import HFSampler
    from openrlaif.stages.evaluate import drawn_sequences

    loaded = load_causal_lm(str(tiny_model_dir), "float32")
    tok, model = loaded.tokenizer, loaded.model.eval()
    convs = [[{"role": "user", "content": text}] for text in
             ("Hi?", "Tell me about the sea and the sky, please.", "Why is grass green?")]
    sampler = HFSampler(model, tok, row_seeds=True, record_logprobs=True)
    # batch 4 with n=2: two prompts per decoding batch, so the prompts of two lengths share left-padded batches
    out = sampler.sample(convs, 2, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=12, batch_size=4, seed=3))
    stops = {end_of_turn_id(tok), tok.eos_token_id} - {None}
    for i in range(len(convs)):
        for j in range(2):
            drawn = sampler.tokens[i][j]
            assert drawn and len(drawn) <= 12
            assert (drawn[-1] in stops) == sampler.finished[i][j]
            body = drawn[:-1] if sampler.finished[i][j] else drawn
            assert tok.decode(body, skip_special_tokens=True).strip() == out[i][j]
    flat = [(i, j) for i in range(len(convs)) for j in range(2)]
    seqs = drawn_sequences(tok, [convs[i] for i, _ in flat], [sampler.tokens[i][j] for i, j in flat])
    forward = batched_response_logprobs(model, seqs, tok.pad_token_id, 4, "forward")[0]
    recorded = [sampler.logprobs[i][j] for i, j in flat]
    assert recorded == pytest.approx(forward, abs=1e-4)  # 7.6e-6 here
    assert all(lp < 0 for lp in recorded) and len(set(recorded)) == len(recorded)
    greedy = HFSampler(model, tok, record_logprobs=True)
    greedy.sample(convs, 1, SamplingParams(temperature=0.0, max_new_tokens=4))
    assert greedy.tokens is None and greedy.logprobs is None


def test_lanes_draw_what_one_decoding_loop_draws(tiny_model_dir, monkeypatch):
    """HFSampler(lanes=2) deals each batch's prompts out to two decoding loops in two threads sharing the model
    (generate.lanes): with row seeds every answer, its end flag, its drawn tokens and their log-probs are what
    one loop with both threads writes; sampling in lanes without row seeds is refused, greedy needs none."""
    from openrlaif.sampling import hf
    from openrlaif.sampling.hf import HFSampler

    jobs = []  # the number of decoding loops run at once, per batch
    real = hf.in_threads
    monkeypatch.setattr(hf, "in_threads", lambda batch: jobs.append(len(batch)) or real(batch))
    loaded = load_causal_lm(str(tiny_model_dir), "float32")
    tok, model = loaded.tokenizer, loaded.model.eval()
    convs = [[{"role": "user", "content": text}] for text in
             ("Hi?", "Tell me about the sea and the sky, please.", "Why is grass green?", "Count to five.",
              "What is a lane?")]
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=10, batch_size=6, seed=11)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = HFSampler(model, tok, row_seeds=True, record_logprobs=True)
        two = HFSampler(model, tok, row_seeds=True, record_logprobs=True, lanes=2)
        a = one.sample(convs, 3, params)
        jobs.clear()
        b = two.sample(convs, 3, params)
        assert jobs == [2, 2, 1]  # batches of 2, 2 and 1 prompts (6 rows // 3 samples): the pairs in two loops
        assert a == b and one.finished == two.finished and one.tokens == two.tokens
        assert [x for r in two.logprobs for x in r] == pytest.approx([x for r in one.logprobs for x in r], abs=1e-4)
        assert len({t for row in a for t in row}) > 5  # it sampled
        assert two.stats.new_tokens == one.stats.new_tokens and two.stats.sequences == 15
        with pytest.raises(ValueError, match="row_seeds"):
            HFSampler(model, tok, lanes=2).sample(convs, 2, params)
        greedy = SamplingParams(temperature=0.0, max_new_tokens=6, batch_size=4)
        assert HFSampler(model, tok, lanes=2).sample(convs, 1, greedy) == HFSampler(model, tok).sample(convs, 1, greedy)
    finally:
        torch.set_num_threads(threads)


def test_in_threads_shares_the_intra_op_threads_out():
    """sampling.hf.in_threads: jobs at once in their own threads, each with its share of the intra-op threads,
    results in order; one after the other in the calling thread when there are fewer threads than jobs."""
    import threading

    from openrlaif.sampling.hf import in_threads

    barrier = threading.Barrier(2, timeout=30)  # both jobs must be running at once to pass it

    def job(tag):
        def run():
            barrier.wait()
            return tag, threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()
        return run

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = in_threads([job("a"), job("b")])
        assert [o[0] for o in out] == ["a", "b"] and len({o[1] for o in out} | {threading.get_ident()}) == 3
        assert [o[2] for o in out] == [1, 1] and all(o[3] for o in out)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        seen = in_threads([lambda: threading.get_ident(), lambda: threading.get_ident()])
        assert seen == [threading.get_ident()] * 2
    finally:
        torch.set_num_threads(threads)


def test_in_threads_leaves_the_caller_its_thread_count_in_a_fresh_process():
    """A worker's torch.set_num_threads(1) can show through to a calling thread that never read its own count (a
    fresh process whose main thread ran a parallel product: 2 -> 1). in_threads reads the count before its workers
    start, which pins the caller's, so a second side-by-side call still shares two threads out."""
    import subprocess
    import sys

    program = (
        "import torch\n"
        "from openrlaif.sampling.hf import in_threads\n"
        "torch.set_num_threads(2)\n"
        "a = torch.randn(512, 512); a @ a\n"
        "first = in_threads([lambda: torch.get_num_threads(), lambda: torch.get_num_threads()])\n"
        "second = in_threads([lambda: torch.get_num_threads(), lambda: torch.get_num_threads()])\n"
        "print(first, second, torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[1, 1] [1, 1] 2"


def test_eval_in_bfloat16_falls_back_to_a_merged_copy_per_policy(tmp_path, tiny_model_dir):
    """Where the lean loop does not reproduce the policy (here a generation config with a repetition penalty, a
    logits processor of generate's own), each policy answers with its own bf16 copy, the adapter merged in, side by
    side in threads, and eval.json says which way the trained policy's answers were written."""
    import json
    import shutil

    from conftest import tiny_overrides

    from openrlaif.config import load_config
    from openrlaif.pipeline import open_run, run_stage

    model_dir = tmp_path / "penalised"
    shutil.copytree(tiny_model_dir, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**gen, "repetition_penalty": 1.1}))
    cfg = load_config(None, tiny_overrides(model_dir) + ["model.sample_dtype=bfloat16", "eval.red_team=null",
                                                         "eval.anchors=null"])
    store = open_run(cfg, tmp_path / "run")
    for stage in ("generate", "label", "train", "eval"):
        run_stage(stage, cfg, store)
    ev = json.loads(store.path("eval.json", 1).read_text())
    assert ev["trained_writer"] == "its own copy, the adapter merged in"
    assert ev["kl_dtype"] == "bfloat16" and ev["kl_trained_logprobs"] == "decoding steps"
