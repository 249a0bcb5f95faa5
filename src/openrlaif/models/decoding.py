"""A lean decoding loop for Llama-architecture models on a CPU, token for token what transformers' ``generate``
draws.

On a CPU whose bf16 products are fast (AMX tiles), a decoding step of the embedded 135M model is mostly Python:
transformers' forward walks 30 layers of modules, keyword dicts, mask building and a ``DynamicCache`` that
``torch.cat``-s every layer's keys and values at every step, and ``generate`` adds its own bookkeeping. This loop
runs the same kernels on the same weights in the same order (RMS norms in float32, the rotary embedding, SDPA with
the same mask, the packed linear layers of ``models.loading.pack_frozen``), writing keys and values into buffers
reserved for the whole answer, so its logits are bit-identical to the model's own forward
(tests/integration/test_decoding.py compares them and the tokens drawn, with padding and without), at ~20% less
time a step (docs/benchmarks.md, session 44). Layers of one input on packed weights (q|k|v, gate|up) run as one
product over their stacked weights: the same numbers, fewer calls.

``LeanLlama.with_adapter`` adds a LoRA adapter, unmerged, to the first rows of the batch: one loop then decodes a
policy and the policy with its adapter (eval's start and trained answers) over one copy of the weights.

``lean_decoder(model)`` returns None for anything it does not reproduce exactly (another architecture, a peft
wrapper, rope scaling, biases, another attention implementation, a GPU, a generation config that adds logits
processors of its own), and the caller keeps ``generate``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

# generation-config fields that make ``generate`` add a logits processor or change its stopping even when it
# decodes greedily; any of them away from its default sends the model back to ``generate``
PROCESSOR_FIELDS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty",
    "renormalize_logits", "guidance_scale", "watermarking_config", "stop_strings", "max_time",
    "remove_invalid_values", "token_healing", "prompt_lookup_num_tokens", "assistant_model",
)


@dataclass
class LlamaLayer:
    """One decoder layer: its norms' weights and its projections (``Projection``: q|k|v, o, gate|up, down)."""

    input_norm: object
    qkv: "Projection"
    o: "Projection"
    post_norm: object
    gate_up: "Projection"
    down: "Projection"


def _linear(module):
    """The layer as a callable: straight onto oneDNN's packed weight where ``pack_frozen`` packed it (what the
    module's own forward does without gradients, minus its checks), else the module itself."""
    from openrlaif.models.loading import packed_linear, packed_only

    packed = packed_only(module)
    if packed is not None:
        return lambda x: packed_linear(x, packed, None)
    return module


class Projection:
    """Linear layers of one input (q|k|v, gate|up, or a single one) as one call returning each layer's output.
    Layers on packed bf16 weights run as one product over their weights stacked and packed once (oneDNN computes
    each output column alike whatever its neighbours: bit-identical to the separate products, fewer calls);
    others one by one. ``delta`` (A (R, in), B (sum of outputs, R), both float32, and the scaling:
    ``with_delta``): a LoRA adapter added to the first ``rows`` rows as peft computes an unmerged one, ``y + (x @
    A^T) @ B^T * scaling`` in float32, cast back to the output's dtype."""

    def __init__(self, modules: list, maps: list | None = None, delta=None):
        import torch

        from openrlaif.models.loading import packed_linear, packed_only, packed_weight

        self.modules = modules
        self.sizes = [m.out_features for m in modules]
        packed = [packed_only(m) for m in modules]
        if maps is not None:
            self.maps = maps
        elif len(modules) > 1 and all(p is not None for p in packed):
            stacked = packed_weight(torch.cat([p.to_dense() for p in packed]))
            self.maps = [lambda x: packed_linear(x, stacked, None)]
        else:
            self.maps = [_linear(m) for m in modules]
        self.delta = delta

    def with_delta(self, deltas: dict):
        """This projection with the LoRA matrices ``deltas`` holds for its layers ({module: (A, B, scaling)})."""
        import torch

        mine = [deltas.get(m) for m in self.modules]
        present = [d for d in mine if d is not None]
        if not present:
            return Projection(self.modules, self.maps)
        # the layers' A matrices stacked, their B matrices block-diagonal: one low-rank product for all outputs
        a = torch.cat([d[0].float() for d in present])
        b = torch.zeros(sum(self.sizes), a.shape[0])
        row = col = 0
        for d, size in zip(mine, self.sizes):
            if d is not None:
                b[row : row + size, col : col + d[0].shape[0]] = d[1].float()
                col += d[0].shape[0]
            row += size
        return Projection(self.modules, self.maps, (a, b, present[0][2]))  # a plain LoRA: one scaling

    def __call__(self, x, rows: int = 0) -> list:
        import torch

        if self.delta is None or rows == 0:
            if len(self.maps) > 1:
                return [f(x) for f in self.maps]
            y = self.maps[0](x)
        else:
            y = self.maps[0](x) if len(self.maps) == 1 else torch.cat([f(x) for f in self.maps], -1)
            part = y[:rows].view(rows, -1)
            part.copy_(part + lora_delta(x[:rows].reshape(rows, -1), *self.delta))
        return list(y.split(self.sizes, -1)) if len(self.sizes) > 1 else [y]


def lora_delta(x, a, b, scaling: float):
    """A LoRA adapter's term for input ``x`` with peft's own calls and dtype: ``B(A(x)) * scaling`` in float32 (an
    unmerged peft layer adds it to the base output, then casts back to that output's dtype)."""
    from torch.nn.functional import linear

    return linear(linear(x.float(), a.float()), b.float()) * scaling


def _plain_generation_config(model) -> bool:
    from transformers import GenerationConfig

    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    default = GenerationConfig()
    return all(getattr(config, name, None) == getattr(default, name, None) for name in PROCESSOR_FIELDS)


def lean_decoder(model) -> "LeanLlama | None":
    """A ``LeanLlama`` over ``model`` when the loop reproduces its decoding exactly, else None."""
    import torch

    if type(model).__name__ != "LlamaForCausalLM" or model.training:
        return None
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    linears = [m for layer in model.model.layers
               for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                         layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    if (model.device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa"
            or rope.get("rope_type", "default") != "default"
            or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
            or getattr(config, "hidden_act", None) != "silu" or (getattr(config, "pretraining_tp", 1) or 1) != 1
            or model.model.rotary_emb.attention_scaling != 1.0
            or any(not isinstance(m, torch.nn.Linear) or m.bias is not None or m._forward_hooks
                   or m._forward_pre_hooks for m in linears)
            or not _plain_generation_config(model)):
        return None
    # built once per model (stacking the packed weights costs ~0.1 s), again if its packed weights were replaced
    from openrlaif.models.loading import packed_only

    key = (id(model), *((id(packed_only(m)), id(m.weight)) for m in linears))
    cached = getattr(model, "_openrlaif_lean", None)
    if cached is None or cached[0] != key:
        cached = (key, LeanLlama(model))
        model.__dict__["_openrlaif_lean"] = cached
    return cached[1]


def lora_deltas(model, adapter) -> dict | None:
    """{linear layer of ``model``: (A, B, scaling)} of a plain LoRA adapter directory (``models.policy
    .plain_lora_deltas``), or None when it is anything else."""
    from openrlaif.models.policy import plain_lora_deltas

    found = plain_lora_deltas(model, adapter)
    return None if found is None else {layer: (a, b, scaling) for layer, a, b, scaling in found}


@contextmanager
def adapted_forward(deltas: dict):
    """Within the block, every linear layer in ``deltas`` adds its LoRA delta to its output (forward hooks, peft's
    unmerged arithmetic as in ``Projection``): the model's own forward then computes the adapted policy (a prefill
    for ``LeanLlama.generate``'s adapted rows)."""

    def hook(module, args, output):
        return (output + lora_delta(args[0], *deltas[module])).to(output.dtype)

    handles = [layer.register_forward_hook(hook) for layer in deltas]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class LeanLlama:
    """The decoding step of a ``LlamaForCausalLM`` (see the module docstring) and ``generate``'s greedy loop over
    it, with an optional logits processor (``sampling.nucleus.NucleusSampler``) as the draw."""

    def __init__(self, model):
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        inner = model.model
        self.layers = [LlamaLayer(layer.input_layernorm.weight,
                                  Projection([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                                  Projection([layer.self_attn.o_proj]), layer.post_attention_layernorm.weight,
                                  Projection([layer.mlp.gate_proj, layer.mlp.up_proj]), Projection([layer.mlp.down_proj]))
                       for layer in inner.layers[: config.num_hidden_layers]]
        self.scaling = inner.layers[0].self_attn.scaling
        self.embed = inner.embed_tokens
        self.final_norm = inner.norm.weight
        self.inv_freq = inner.rotary_emb.inv_freq
        self.head = model.lm_head

    def with_adapter(self, deltas: dict) -> "LeanLlama":
        """This loop with a LoRA adapter (``lora_deltas``) on the rows ``generate``'s ``adapted_rows`` names: the
        model's own weights for every row, the adapter's low-rank delta added to those rows' projections."""
        import copy

        other = copy.copy(self)
        other.layers = [LlamaLayer(layer.input_norm, layer.qkv.with_delta(deltas), layer.o.with_delta(deltas),
                                   layer.post_norm, layer.gate_up.with_delta(deltas), layer.down.with_delta(deltas))
                        for layer in self.layers]
        return other

    def rms_norm(self, x, weight):
        import torch

        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def rotate(self, x, cos, sin):
        import torch

        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def step(self, tokens, positions, keys, values, filled: int, mask, adapted_rows: int = 0):
        """Logits (B, V) of the next token after ``tokens`` (B, 1) at ``positions`` (B, 1): their keys and values
        are written at column ``filled`` of every layer's buffers ``keys``/``values`` (B, KV heads, T, D), and
        attention runs over columns 0..filled with ``mask`` (B, 1, 1, filled + 1; True = attend), or over all of
        them without a mask (no padding: what transformers passes then). The first ``adapted_rows`` rows take the
        adapter of ``with_adapter``."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention, silu

        rows, heads, kv, dim = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        x = self.embed(tokens)
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        end = filled + 1
        for i, layer in enumerate(self.layers):
            h = self.rms_norm(x, layer.input_norm)
            q, k, v = layer.qkv(h, adapted_rows)
            q = self.rotate(q.view(rows, 1, heads, dim).transpose(1, 2), cos, sin)
            keys[i][:, :, filled:end] = self.rotate(k.view(rows, 1, kv, dim).transpose(1, 2), cos, sin)
            values[i][:, :, filled:end] = v.view(rows, 1, kv, dim).transpose(1, 2)
            k, v = keys[i][:, :, :end], values[i][:, :, :end]
            if mask is None:  # transformers' SDPA path without a mask: grouped-query attention in the kernel
                out = scaled_dot_product_attention(q, k, v, scale=self.scaling, enable_gqa=True)
            else:  # with a mask and one query: the query heads of each key/value head as its rows (``pack_gqa``)
                out = scaled_dot_product_attention(q.reshape(rows, kv, heads // kv, dim), k, v, attn_mask=mask,
                                                   scale=self.scaling)
            out = out.reshape(rows, heads, 1, dim).transpose(1, 2).reshape(rows, 1, heads * dim)
            x = x + layer.o(out, adapted_rows)[0]
            h = self.rms_norm(x, layer.post_norm)
            gate, up = layer.gate_up(h, adapted_rows)
            x = x + layer.down(silu(gate) * up, adapted_rows)[0]
        return self.head(self.rms_norm(x, self.final_norm))[:, -1]

    def buffers(self, caches: list, width: int) -> tuple[list, list]:
        """Every layer's key and value buffers (B, KV heads, ``width``, D), their first columns holding the prompt
        caches ``caches`` (``DynamicCache``-s whose rows, one after the other, make the batch)."""
        import torch

        keys, values = [], []
        for i in range(len(self.layers)):
            k = torch.cat([c.layers[i].keys for c in caches])
            v = torch.cat([c.layers[i].values for c in caches])
            buf_k = k.new_empty(k.shape[0], self.kv_heads, width, self.head_dim)
            buf_v = torch.empty_like(buf_k)
            buf_k[:, :, : k.shape[2]], buf_v[:, :, : v.shape[2]] = k, v
            keys.append(buf_k)
            values.append(buf_v)
        return keys, values

    def generate(self, input_ids, attention_mask, caches: list, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, processor=None, adapted_rows: int = 0):
        """``generate``'s greedy loop from the KV caches of every prompt token but the last (``DynamicCache``-s over
        ``input_ids[:, :-1]`` from ``sampling.hf.prefill``, whose rows, one after the other, match ``input_ids``):
        the prompt rows (left-padded) followed by the new tokens, pad after a row's stop token, ending when every
        row has stopped or at ``max_new_tokens``. ``processor(ids, scores)`` (float32 scores) chooses the token as
        in ``generate`` (the argmax of what it returns), or its ``draw(scores)`` where it has one (also a logits
        processor list of one such). The first ``adapted_rows`` rows decode with the adapter of ``with_adapter``
        (their cache prefilled so: ``adapted_forward``)."""
        import torch

        rows, prompt = input_ids.shape
        keys, values = self.buffers(caches, prompt - 1 + max_new_tokens)
        one = processor[0] if isinstance(processor, list) and len(processor) == 1 else processor
        draw = getattr(one, "draw", None)  # sampling.nucleus.NucleusSampler (or what stands for several)
        padded = not bool(attention_mask.all())
        full = torch.cat([attention_mask.bool(), attention_mask.new_ones(rows, max_new_tokens).bool()], 1)
        positions = attention_mask.long().sum(-1, keepdim=True) - 1
        stops = torch.tensor(stop_ids, dtype=torch.long)
        unfinished = torch.ones(rows, dtype=torch.long)
        ids, tokens = input_ids, input_ids[:, -1:]
        for s in range(max_new_tokens):
            filled = prompt - 1 + s
            mask = full[:, None, None, : filled + 1] if padded else None
            scores = self.step(tokens, positions, keys, values, filled, mask, adapted_rows).float()
            if draw is not None:  # the processor's own draw: the same token as the argmax of what it returns
                chosen = draw(scores)
            else:
                chosen = (processor(ids, scores) if processor is not None else scores).argmax(-1)
            chosen = chosen * unfinished + pad_id * (1 - unfinished)
            ids = torch.cat([ids, chosen[:, None]], dim=-1)
            unfinished = unfinished * (~torch.isin(chosen, stops)).long()
            if not bool(unfinished.any()):
                break
            tokens, positions = chosen[:, None], positions + 1
        return ids
