"""The sampler ``generate.backend`` names, loaded with a round's policy."""

from __future__ import annotations

import os

from openrlaif.core.errors import UserError
from openrlaif.sampling.remote import OpenAICompatibleSampler, VLLMSampler


def build_sampler(cfg, store, k: int):
    """The sampler ``generate.backend`` names, loaded with round ``k``'s policy (round k-1's adapter)."""
    from openrlaif.models.policy import start_adapter

    gc = cfg.generate
    adapter = start_adapter(store, k)
    if gc.backend == "hf":
        from openrlaif.models.loading import sample_dtype, set_threads
        from openrlaif.models.policy import load_round_policy
        from openrlaif.sampling.hf import HFSampler, decoding_lanes

        set_threads(cfg.model.threads)
        policy = load_round_policy(cfg, store, k)
        # row seeds: a candidate's draws depend on the run's seed and where it is, not on its batch or lane
        return HFSampler(policy.model, policy.tokenizer, row_seeds=True,
                         lanes=decoding_lanes(gc.lanes, sample_dtype(cfg.model)))
    if gc.backend == "vllm":
        from openrlaif.models.loading import resolve_model

        vc = gc.vllm
        return VLLMSampler(str(resolve_model(cfg.model.policy)), adapter=adapter, adapter_id=max(k - 1, 1),
                           gpu_memory_utilization=vc.gpu_memory_utilization, tensor_parallel_size=vc.tensor_parallel_size,
                           max_lora_rank=vc.max_lora_rank, max_model_len=vc.max_model_len, seed=cfg.seed)
    ac = gc.api
    key = os.environ.get(ac.api_key_env) if ac.api_key_env else None
    sampler = OpenAICompatibleSampler(ac.base_url, ac.model, api_key=key, concurrency=ac.concurrency,
                                      timeout_s=ac.timeout_s, max_retries=ac.max_retries, seed=cfg.seed)
    if adapter is not None:
        if ac.load_adapters:
            sampler.load_adapter(f"{ac.adapter_prefix}round{k - 1}", adapter.resolve())
        elif ac.adapter_model:
            sampler.model = ac.adapter_model.format(round=k - 1)
        else:
            raise UserError(f"generate.api: round {k} samples with round {k - 1}'s adapter, but load_adapters is false "
                            "and adapter_model is unset; serve the adapter and name it in generate.api.adapter_model")
    return sampler
