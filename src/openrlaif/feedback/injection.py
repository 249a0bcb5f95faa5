"""A learned detector of replies that address the judge: a logistic probe on the judge model's hidden states.

The pattern detector (``core.text.judge_directed``) catches the attacks it was written for; a probe on
the judge's own representation of the reply generalises to attacks it never saw (measured by
``bench/injection_probe.py``: leave-one-attack-kind-out recall, and recall on pairs written after the
patterns were tuned). The probe reads the normalised reply (``core.text.normalize_candidate``) at one
layer and pooling, standardises the features, and flags a reply when sigmoid(features . w + b) exceeds a
threshold chosen so that only a small share of clean training replies is flagged.

Files: ``<dir>/_injection.safetensors`` (``mean``, ``std``, ``w``; the last entry of ``w`` is the bias) and
an ``injection_probe`` entry in ``<dir>/heads.json`` (feature, threshold, the figures it was measured at,
the judge fingerprint). The shipped one sits beside the shipped heads (``feedback.heads: builtin``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from openrlaif.core.cache import model_fingerprint
from openrlaif.core.errors import UserError
from openrlaif.core.text import normalize_candidate
from openrlaif.feedback.fitting import Standardizer, fit_head
from openrlaif.models.features import parse_feature_name, reply_features

PROBE_FILE = "_injection.safetensors"


@dataclass
class InjectionProbe:
    feature: str  # 'layer{i}:{mean|last}'
    standardizer: Standardizer
    w: torch.Tensor  # (d + 1,): weights, then the bias
    threshold: float  # flag when P(addresses the judge) > threshold
    card: dict = field(default_factory=dict)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) raw features -> (n,) P(the reply addresses the judge)."""
        z = self.standardizer(features)
        return torch.sigmoid(z @ self.w[:-1] + self.w[-1])


def fit_probe(feature: str, positives: torch.Tensor, negatives: torch.Tensor, l2: float = 1.0,
              max_false_positive: float = 0.02) -> InjectionProbe:
    """Logistic regression of injected (1) vs clean (0) reply features, with a bias; the threshold flags at
    most ``max_false_positive`` of the clean training replies."""
    x = torch.cat([positives, negatives])
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    std = Standardizer.fit(x)
    w = fit_head(torch.cat([std(x), torch.ones(len(x), 1)], 1), y, l2)
    probe = InjectionProbe(feature, std, w, 0.5)
    clean = probe.probabilities(negatives)
    probe.threshold = max(0.5, float(torch.quantile(clean, 1 - max_false_positive)))
    return probe


def save_probe(directory: str | Path, probe: InjectionProbe, judge_fingerprint: str) -> None:
    """Write the probe into an existing head directory (its file and its heads.json entry)."""
    from safetensors.torch import save_file

    root = Path(directory)
    save_file({"mean": probe.standardizer.mean.contiguous(), "std": probe.standardizer.std.contiguous(),
               "w": probe.w.contiguous()}, str(root / PROBE_FILE))
    card = json.loads((root / "heads.json").read_text(encoding="utf-8"))
    card["injection_probe"] = {"feature": probe.feature, "threshold": round(probe.threshold, 6),
                               "judge_fingerprint": judge_fingerprint, **probe.card}
    (root / "heads.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def load_probe(directory: str | Path) -> InjectionProbe | None:
    """The probe of a head directory, or None when it has none."""
    from safetensors.torch import load_file

    root = Path(directory)
    card = json.loads((root / "heads.json").read_text(encoding="utf-8")) if (root / "heads.json").is_file() else {}
    meta = card.get("injection_probe")
    if not meta or not (root / PROBE_FILE).is_file():
        return None
    t = load_file(str(root / PROBE_FILE))
    parse_feature_name(meta["feature"])
    return InjectionProbe(meta["feature"], Standardizer(t["mean"], t["std"]), t["w"], float(meta["threshold"]),
                          {k: v for k, v in meta.items() if k not in ("feature", "threshold")})


class ProbeDetector:
    """Flags replies the probe reads as addressed to the judge, with the judge model that it was fitted on."""

    def __init__(self, model, tokenizer, probe: InjectionProbe, *, batch_size: int = 8, max_length: int = 384,
                 source: str = "label.injection_probe"):
        expected = probe.card.get("judge_fingerprint")
        actual = model_fingerprint(model)
        if expected is not None and expected != actual:
            raise UserError(f"{source}: the injection probe was fitted on a different judge model (fingerprint "
                            f"{expected}, this judge {actual}); set {source}=null or fit one for this model "
                            "(bench/injection_probe.py)")
        self.model, self.tokenizer, self.probe = model, tokenizer, probe
        self.batch_size, self.max_length = batch_size, max_length

    def probabilities(self, conversations: list[list[dict]], replies: list[str]) -> list[float]:
        if not replies:
            return []
        layer, pooling = parse_feature_name(self.probe.feature)
        feats = reply_features(self.model, self.tokenizer, conversations, [normalize_candidate(r) for r in replies],
                               layers=[layer], poolings=(pooling,), batch_size=self.batch_size,
                               max_length=self.max_length, description="injection probe")[self.probe.feature]
        return self.probe.probabilities(feats).tolist()

    def flags(self, conversations: list[list[dict]], replies: list[str]) -> list[bool]:
        return [p > self.probe.threshold for p in self.probabilities(conversations, replies)]
