"""A lean decoding loop for Llama-architecture models on a CPU, token for token what transformers' ``generate``
draws.

On a CPU whose bf16 products are fast (AMX tiles), a decoding step of the embedded 135M model is mostly Python:
transformers' forward walks 30 layers of modules, keyword dicts, mask building and a ``DynamicCache`` that
``torch.cat``-s every layer's keys and values at every step, and ``generate`` adds its own bookkeeping. This loop
runs the same kernels on the same weights in the same order (RMS norms in float32, the rotary embedding, SDPA with
the same mask, the packed linear layers of ``models.loading.pack_frozen``), writing keys and values into buffers
reserved for the whole answer, so its logits are bit-identical to the model's own forward
(tests/integration/test_decoding.py compares them and the tokens drawn, with padding and without), at ~25% less
time a step (docs/benchmarks.md, session 44).

``lean_decoder(model)`` returns None for anything it does not reproduce exactly (another architecture, a peft
wrapper, rope scaling, biases, another attention implementation, a GPU, a generation config that adds logits
processors of its own), and the caller keeps ``generate``.
"""

from __future__ import annotations

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
    """One decoder layer's weights and linear maps (each a callable on the hidden states)."""

    input_norm: object
    q: object
    k: object
    v: object
    o: object
    post_norm: object
    gate: object
    up: object
    down: object


def _linear(module):
    """The layer as a callable: straight onto oneDNN's packed weight where ``pack_frozen`` packed it (what the
    module's own forward does without gradients, minus its checks), else the module itself."""
    from openrlaif.models.loading import packed_linear

    packed = getattr(module, "_openrlaif_packed_only", None)
    if packed is not None:
        return lambda x: packed_linear(x, packed, None)
    return module


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
    return LeanLlama(model)


class LeanLlama:
    """The decoding step of a ``LlamaForCausalLM`` (see the module docstring) and ``generate``'s greedy loop over
    it, with an optional logits processor (``sampling.nucleus.NucleusSampler``) as the draw."""

    def __init__(self, model):
        config = model.config
        self.model = model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        inner = model.model
        self.layers = [LlamaLayer(layer.input_layernorm.weight, _linear(layer.self_attn.q_proj),
                                  _linear(layer.self_attn.k_proj), _linear(layer.self_attn.v_proj),
                                  _linear(layer.self_attn.o_proj), layer.post_attention_layernorm.weight,
                                  _linear(layer.mlp.gate_proj), _linear(layer.mlp.up_proj),
                                  _linear(layer.mlp.down_proj))
                       for layer in inner.layers[: config.num_hidden_layers]]
        self.scaling = inner.layers[0].self_attn.scaling
        self.embed = inner.embed_tokens
        self.final_norm = inner.norm.weight
        self.inv_freq = inner.rotary_emb.inv_freq
        self.head = model.lm_head

    def rms_norm(self, x, weight):
        import torch

        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def rotate(self, x, cos, sin):
        import torch

        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def step(self, tokens, positions, keys, values, filled: int, mask):
        """Logits (B, V) of the next token after ``tokens`` (B, 1) at ``positions`` (B, 1): their keys and values
        are written at column ``filled`` of every layer's buffers ``keys``/``values`` (B, KV heads, T, D), and
        attention runs over columns 0..filled with ``mask`` (B, 1, 1, filled + 1; True = attend), or over all of
        them without a mask (no padding: what transformers passes then)."""
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
            q = self.rotate(layer.q(h).view(rows, 1, heads, dim).transpose(1, 2), cos, sin)
            keys[i][:, :, filled:end] = self.rotate(layer.k(h).view(rows, 1, kv, dim).transpose(1, 2), cos, sin)
            values[i][:, :, filled:end] = layer.v(h).view(rows, 1, kv, dim).transpose(1, 2)
            k, v = keys[i][:, :, :end], values[i][:, :, :end]
            if mask is None:  # transformers' SDPA path without a mask: grouped-query attention in the kernel
                out = scaled_dot_product_attention(q, k, v, scale=self.scaling, enable_gqa=True)
            else:  # with a mask and one query: the query heads of each key/value head as its rows (``pack_gqa``)
                out = scaled_dot_product_attention(q.reshape(rows, kv, heads // kv, dim), k, v, attn_mask=mask,
                                                   scale=self.scaling)
            out = out.reshape(rows, heads, 1, dim).transpose(1, 2).reshape(rows, 1, heads * dim)
            x = x + layer.o(out)
            h = self.rms_norm(x, layer.post_norm)
            x = x + layer.down(silu(layer.gate(h)) * layer.up(h))
        return self.head(self.rms_norm(x, self.final_norm))[:, -1]

    def generate(self, input_ids, attention_mask, cache, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                 processor=None):
        """``generate``'s greedy loop from a KV cache of every prompt token but the last (a ``DynamicCache`` over
        ``input_ids[:, :-1]``, its rows matching ``input_ids``: ``sampling.hf.prefill``): the prompt rows
        (left-padded) followed by the new tokens, pad after a row's stop token, ending when every row has stopped
        or at ``max_new_tokens``. ``processor(ids, scores)`` (float32 scores) chooses the token as in
        ``generate``."""
        import torch

        rows, prompt = input_ids.shape
        width = prompt - 1 + max_new_tokens
        keys, values = [], []
        for layer in cache.layers[: len(self.layers)]:
            buf_k = torch.empty(rows, self.kv_heads, width, self.head_dim, dtype=layer.keys.dtype)
            buf_v = torch.empty_like(buf_k)
            buf_k[:, :, : prompt - 1] = layer.keys
            buf_v[:, :, : prompt - 1] = layer.values
            keys.append(buf_k)
            values.append(buf_v)
        padded = not bool(attention_mask.all())
        full = torch.cat([attention_mask.bool(), attention_mask.new_ones(rows, max_new_tokens).bool()], 1)
        positions = attention_mask.long().sum(-1, keepdim=True) - 1
        stops = torch.tensor(stop_ids, dtype=torch.long)
        unfinished = torch.ones(rows, dtype=torch.long)
        ids, tokens = input_ids, input_ids[:, -1:]
        for s in range(max_new_tokens):
            filled = prompt - 1 + s
            mask = full[:, None, None, : filled + 1] if padded else None
            scores = self.step(tokens, positions, keys, values, filled, mask).float()
            if processor is not None:
                scores = processor(ids, scores)
            chosen = scores.argmax(-1)
            chosen = chosen * unfinished + pad_id * (1 - unfinished)
            ids = torch.cat([ids, chosen[:, None]], dim=-1)
            unfinished = unfinished * (~torch.isin(chosen, stops)).long()
            if not bool(unfinished.any()):
                break
            tokens, positions = chosen[:, None], positions + 1
        return ids
