"""Reward over-optimisation monitor for RL (PPO, RLOO): the proxy reward against a held-out judge.

Every ``monitor.every`` updates the policy answers a fixed set of held-out prompts (fixed seed, so
only the policy changes between checks). Each answer is scored by the *proxy* (the reward RL
optimises: a reward model or the run's judge) and by a *held-out* judge the policy never trained on
(another feedback method, and principles drawn with another seed). Both are logged against
sqrt(KL(policy || start)) on those answers (Gao et al. 2022 plot gold and proxy reward against that
distance). When the proxy rises and the held-out score falls at ``monitor.patience`` consecutive
checks, the policy is learning the proxy's blind spots rather than what it stands for: the monitor
raises an alarm (and can stop training). The adapter with the best held-out score is kept in
``round_K/best_policy`` either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# --- pure functions --------------------------------------------------------------------------


def divergence_streaks(proxy: list[float], heldout: list[float]) -> list[int]:
    """For each check, how many consecutive checks up to and including it saw the proxy rise and the
    held-out score fall (each against the previous check). The first check has streak 0."""
    if len(proxy) != len(heldout):
        raise ValueError("proxy and held-out series differ in length")
    streaks: list[int] = []
    for i in range(len(proxy)):
        diverging = i > 0 and proxy[i] > proxy[i - 1] and heldout[i] < heldout[i - 1]
        streaks.append(streaks[-1] + 1 if diverging and streaks else 0)
    return streaks


def first_alarm(proxy: list[float], heldout: list[float], patience: int) -> int | None:
    """Index of the first check at which the divergence streak reaches ``patience``, else None."""
    for i, s in enumerate(divergence_streaks(proxy, heldout)):
        if s >= patience:
            return i
    return None


# --- the monitor ---------------------------------------------------------------------------


@dataclass
class Check:
    step: int
    proxy: float
    heldout: float
    kl: float
    sqrt_kl: float
    streak: int
    alarm: bool
    best: bool


@dataclass
class MonitorState:
    checks: list[Check] = field(default_factory=list)
    alarm_step: int | None = None

    def to_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "alarm_step": self.alarm_step}

    @classmethod
    def from_dict(cls, data: dict | None) -> MonitorState:
        if not data:
            return cls()
        return cls([Check(**c) for c in data.get("checks", [])], data.get("alarm_step"))

    def summary(self) -> dict:
        if not self.checks:
            return {"checks": 0}
        best = max(self.checks, key=lambda c: c.heldout)
        return {"checks": len(self.checks), "alarm_step": self.alarm_step, "best_step": best.step,
                "best_heldout": round(best.heldout, 6), "proxy_first": round(self.checks[0].proxy, 6),
                "proxy_last": round(self.checks[-1].proxy, 6), "heldout_first": round(self.checks[0].heldout, 6),
                "heldout_last": round(self.checks[-1].heldout, 6)}


def heldout_spec(cfg) -> str:
    """The held-out judge: monitor.heldout, or for 'auto' a judge the policy is not trained on."""
    spec = cfg.monitor.heldout
    if spec != "auto":
        return spec
    if cfg.train.algo == "dpo":  # the proxy is DPO's implicit reward: grade with the run's judge
        return "judge"
    if cfg.rl.reward == "judge":  # the proxy is the run's judge: grade with the other scoring method
        return "pointwise" if cfg.feedback.method == "contrastive" else "contrastive"
    return "judge"  # the proxy is a reward model or a function: grade with the run's judge
