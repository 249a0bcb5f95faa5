"""The policy a round trains and samples: LoRA adapters (fresh or continued), the reference policy,
merging an adapter into the starting model, and saving an adapter."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from openrlaif.config import RunConfig, TrainConfig
from openrlaif.core.errors import UserError
from openrlaif.core.store import RunStore, atomic_directory, atomic_write_json


def add_lora(model, tc: TrainConfig, start=None, reference=None):
    """``model`` with a trainable LoRA adapter: a fresh one, or (from round 2) a copy of ``start``, the previous
    round's policy adapter, which this round keeps training. With ``reference`` (pipeline.reference=previous)
    that adapter is loaded as well, frozen, under the name 'reference' (see ``reference_policy``)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if start is not None:
        peft_model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
    else:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in tc.lora_target_modules if t in names]
        if not targets:
            raise UserError(f"train.lora_target_modules: none of {tc.lora_target_modules} exist in this model; "
                            f"pick from its linear layers (e.g. q_proj, v_proj)")
        config = LoraConfig(r=tc.lora_r, lora_alpha=tc.lora_alpha, lora_dropout=tc.lora_dropout,
                            target_modules=targets, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
    if reference is not None:
        peft_model.load_adapter(str(reference), adapter_name="reference", is_trainable=False)
        peft_model.set_adapter("default")
    return peft_model


@contextmanager
def reference_policy(model):
    """Run the reference policy inside this block: the frozen 'reference' adapter when one is loaded
    (pipeline.reference=previous), else the starting model (the adapter switched off)."""
    if "reference" not in getattr(model, "peft_config", {}):
        with model.disable_adapter():
            yield
        return
    active = model.active_adapter
    model.set_adapter("reference")
    try:
        yield
    finally:
        model.set_adapter(active)
        for name, param in model.named_parameters():  # set_adapter marks the active adapter trainable
            if ".reference." in name:
                param.requires_grad_(False)


def round_adapters(cfg: RunConfig, store: RunStore, k: int):
    """(start, reference) adapters of round ``k``'s training: round k-1's policy to continue (None in round
    1), and the same adapter as the reference when pipeline.reference is 'previous'."""
    from openrlaif.models.policy import start_adapter

    start = start_adapter(store, k)
    return start, (start if cfg.pipeline.reference == "previous" else None)


def start_adapter(store: RunStore, k: int) -> Path | None:
    """The LoRA adapter round ``k`` starts from: round k-1's policy (None in round 1)."""
    if k <= 1:
        return None
    adapter = store.path("policy", k - 1)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} holds no trained policy, and round {k} starts from it; "
                        f"run round {k - 1} first (`rlaif run -o {store.root}`)")
    return adapter


def load_round_policy(cfg: RunConfig, store: RunStore, k: int):
    """The policy that samples round ``k``: the starting model with round k-1's adapter merged in, in the dtype
    it samples in (``model.sample_dtype``)."""
    from openrlaif.models.loading import sample_dtype

    return load_merged(cfg, start_adapter(store, k), sample_dtype(cfg.model), frozen=True)


def load_merged(cfg: RunConfig, adapter: Path | None, dtype: str | None = None, frozen: bool = False):
    """The starting model with ``adapter`` (a peft LoRA directory) merged into its weights, or alone (in ``dtype``,
    model.dtype when None). ``frozen``: it only samples and scores, without gradients, so its bf16 linear layers
    pack their weights for oneDNN (``models.loading.pack_frozen``: the same numbers, faster)."""
    from openrlaif.models.loading import load_causal_lm, pack_frozen

    loaded = load_causal_lm(cfg.model.policy, dtype or cfg.model.dtype)
    if adapter is not None:
        loaded.model = merge_adapter(loaded.model, Path(adapter))
        loaded.model.eval()
        # merge_and_unload freezes the weights; on a CPU, torch's bf16 matmul on frozen weights took 2x as long
        # and held ~3.5 GB more at batch 64 here (sampling runs under inference_mode: no graph is built either way)
        for param in loaded.model.parameters():
            param.requires_grad_(True)
    if frozen:
        pack_frozen(loaded.model)
    return loaded


def plain_lora_deltas(model, adapter: Path) -> list[tuple] | None:
    """(linear layer, lora_A, lora_B, scaling) for every layer of a plain LoRA ``adapter`` (a peft directory: every
    layer the config's r and alpha, on ``nn.Linear`` layers of ``model``; no DoRA, bias, fan-in-fan-out, extra saved
    modules, layer replication, targeted parameters, activated or quantisation-aware LoRA), or None when it is
    anything else."""
    import json
    import math

    import torch

    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    weights = adapter / "adapter_model.safetensors"
    if (config.get("peft_type") != "LORA" or not weights.is_file() or config.get("use_dora")
            or config.get("rank_pattern") or config.get("alpha_pattern") or config.get("bias", "none") != "none"
            or config.get("modules_to_save") or config.get("fan_in_fan_out") or config.get("layer_replication")
            or config.get("lora_bias") or config.get("target_parameters") or config.get("alora_invocation_tokens")
            or config.get("use_qalora") or not config.get("r")):
        return None
    from safetensors.torch import load_file

    r, alpha = config["r"], config.get("lora_alpha", config["r"])
    scaling = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    tensors = load_file(str(weights))
    modules = dict(model.named_modules())
    found = []
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                return None  # something besides the two LoRA matrices (an embedding's, a saved module)
            continue
        name = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        a, b = tensors[key], tensors.get(f"{key[: -len('.lora_A.weight')]}.lora_B.weight")
        layer = modules.get(name)
        if (b is None or not isinstance(layer, torch.nn.Linear) or a.shape != (r, layer.in_features)
                or b.shape != (layer.out_features, r)):
            return None
        found.append((layer, a, b, scaling))
    return found or None


def merge_adapter(model, adapter: Path):
    """``model`` with the LoRA ``adapter`` (a peft directory) merged into its weights: the numbers of peft's
    ``PeftModel.from_pretrained(...).merge_and_unload()`` (W += (B @ A) * scaling, the product in float32 as peft's
    float32 adapter copies compute it; tests/integration/test_model_parts.py compares them bit for bit). A plain
    LoRA (``plain_lora_deltas``) is merged from its file, without building the peft model around ``model``:
    0.44-0.62 s -> 0.09-0.19 s for the bench round's r16 adapter on the embedded model's 7 projections here
    (docs/benchmarks.md, session 40); any other adapter through peft."""
    import torch

    deltas = plain_lora_deltas(model, adapter)
    if deltas is None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        for layer, a, b, scaling in deltas:
            layer.weight.data += (b.float() @ a.float()) * scaling
    return model


def save_adapter(model, tokenizer, final: str | Path, extra_json: dict[str, dict] | None = None) -> Path:
    """Write ``model``'s trainable LoRA adapter ('default') and the tokenizer as a peft directory at ``final``,
    atomically (a crash leaves the previous directory or none), with optional small JSON files beside them."""
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            atomic_write_json(tmp / name, obj)
    return Path(final)
