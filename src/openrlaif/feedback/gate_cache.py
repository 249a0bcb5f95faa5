"""The judge gate paid once: a gate measurement kept in the user cache (``models.loading.cache_dir()/gates``),
keyed by everything that decides it, so a later run with the same judge on the same calibration pairs reads the
figures instead of re-scoring the pairs.

The key holds: the judge's identity (each part's class, method, prompt template and the weight fingerprint of its
local model; fitted heads' own weights; an ensemble's members), the feedback settings that shape verdicts, the
model's dtype and quantisation, the constitution's principles, the calibration pairs' content, the gate's pair
limit and the seed. Judges whose verdicts this machine cannot fingerprint — a remote API (the server may change
its weights under the same name), a Python rule or a reward-model callable — are never cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

GATE_CACHE_VERSION = 1  # bump when the gate's maths or the judges' prompts change what a gate measures
# feedback fields that do not change a single verdict: what to do with the figures, caching, the defence outside
# labelling
NOT_IN_KEY = {"min_agreement", "gate_action", "gate_cache", "cache", "defend"}


def judge_identity(judge) -> dict | None:
    """What makes ``judge``'s verdicts what they are, or None when part of it cannot be fingerprinted here."""
    import torch

    from openrlaif.core.cache import model_fingerprint

    members = getattr(judge, "members", None)
    if members is not None:  # an ensemble
        parts = [judge_identity(m) for m in members]
        return None if any(p is None for p in parts) else {"ensemble": parts, "aggregate": judge.aggregate}
    model = getattr(judge, "model", None)
    if not isinstance(model, torch.nn.Module):
        return None  # API (a model *name*), rule, reward model: no local weights to fingerprint
    out = {"class": type(judge).__name__, "method": judge.method, "template": judge.template,
           "model": model_fingerprint(model, getattr(judge, "name", ""))}
    heads = getattr(judge, "heads", None)
    if heads is not None:  # fitted heads: their own weights, and whether _any answers other principles
        h = hashlib.sha256()
        for key in sorted(heads):
            h.update(key.encode())
            h.update(json.dumps(dataclasses.asdict(heads[key]) if dataclasses.is_dataclass(heads[key])
                                else repr(heads[key]), sort_keys=True, default=_tensor_bytes).encode())
        out["heads"] = h.hexdigest()[:32]
        out["use_any"] = getattr(judge, "use_any", True)
        fallback = getattr(judge, "fallback", None)
        if fallback is not None:
            out["fallback"] = judge_identity(fallback)
            if out["fallback"] is None:
                return None
    return out


def _tensor_bytes(value) -> str:
    """JSON for the tensors inside a head: a digest of their values."""
    import torch

    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.detach().float().cpu().numpy().tobytes()).hexdigest()
    return repr(value)


def gate_key(judge, cfg, constitution, pairs: list) -> str | None:
    """The gate cache key for ``judge`` measured on ``pairs`` under ``cfg`` (a RunConfig); None = do not cache."""
    from openrlaif.models.loading import judge_bf16

    identity = judge_identity(judge)
    if identity is None:
        return None
    material = {
        "version": GATE_CACHE_VERSION, "judge": identity,
        "feedback": {k: v for k, v in cfg.feedback.model_dump(mode="json").items() if k not in NOT_IN_KEY},
        "dtype": cfg.model.dtype, "quantize": cfg.model.judge_quantize,
        "max_response_chars": cfg.label.max_response_chars,
        "constitution": dataclasses.asdict(constitution),
        "pairs": [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else repr(p) for p in pairs],
        "seed": cfg.seed,
    }
    if judge_bf16(cfg.model):  # only then: keys of float32 judges stay what they were
        material["autocast"] = "bf16"
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class GateCache:
    """Gate measurements as one JSON file per key (written atomically; safe to share between runs)."""

    def __init__(self, directory: str | Path | None = None):
        from openrlaif.models.loading import cache_dir

        self.directory = Path(directory) if directory is not None else cache_dir() / "gates"

    def get(self, key: str) -> dict | None:
        path = self.directory / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent or unreadable: measure again

    def put(self, key: str, measured: dict) -> None:
        from openrlaif.core.store import atomic_write_json

        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.directory / f"{key}.json", {"measured": measured, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
