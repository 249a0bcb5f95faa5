"""The over-optimisation monitor a trainer calls every ``monitor.every`` updates (the rule is in
``evaluate.overopt``)."""

from __future__ import annotations

import math
from dataclasses import asdict

from openrlaif.evaluate.overopt import Check, MonitorState, divergence_streaks, heldout_spec
from openrlaif.models.loading import encode_prompts
from openrlaif.models.policy import save_adapter


class OveroptimizationMonitor:
    """Runs the checks of one training stage. ``check`` is called after each update; it does nothing
    except every ``monitor.every`` updates and after ``last_step``. All processes compute the same check
    (same prompts and seed).

    ``proxy`` is the reward RL optimises, a callable (conversations, prompts, responses) -> scores; for
    DPO it is None and the proxy is DPO's implicit reward, ``implicit_beta`` * log(pi(y) / pi_start(y))
    (direct alignment over-optimises too: Rafailov et al. 2024)."""

    def __init__(self, cfg, store, k: int, tok, proxy, state: dict | None = None, last_step: int | None = None,
                 implicit_beta: float | None = None):
        from openrlaif.data.prompts import run_prompts
        from openrlaif.optimize.rollout import reward_source

        self.cfg, self.store, self.k, self.tok, self.proxy = cfg, store, k, tok, proxy
        self.last_step = cfg.rl.steps if last_step is None else last_step
        self.implicit_beta = implicit_beta
        mc = cfg.monitor
        self.prompts = run_prompts(cfg.data, "heldout", mc.prompts)
        if mc.every and not self.prompts:
            from openrlaif.core.errors import UserError

            raise UserError("monitor.every: the over-optimisation monitor needs held-out prompts; "
                            "add rows with split 'heldout' or set monitor.every=0")
        self.encoded = encode_prompts(tok, [p.messages for p in self.prompts])
        self.heldout_name = heldout_spec(cfg)
        self.heldout = reward_source(cfg, store, k, spec=self.heldout_name, tag="monitor") if mc.every else None
        self.state = MonitorState.from_dict(state)

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.monitor.every)

    def due(self, step: int) -> bool:
        return self.enabled and (step % self.cfg.monitor.every == 0 or step == self.last_step)

    def check(self, step: int, model, is_main: bool) -> Check | None:
        """After update ``step``: sample the fixed answers, score them twice, log, keep the best adapter."""
        import torch

        from openrlaif.core.progress import console
        from openrlaif.models.logprobs import collate, token_logprobs
        from openrlaif.models.policy import reference_policy
        from openrlaif.optimize.rollout import sample

        if not self.due(step):
            return None
        mc = self.cfg.monitor
        model.eval()
        with torch.random.fork_rng(devices=[]):  # the training RNG stream is untouched (resume stays exact)
            torch.manual_seed(self.cfg.seed + 4242)
            seqs, _ = sample(model, self.tok, self.encoded, mc.samples_per_prompt, self.cfg)
        ids, attn, resp = collate(seqs, self.tok.pad_token_id)
        # RL: the tempered policy it samples and updates; DPO: the plain log-probs its implicit reward uses.
        temperature = self.cfg.rl.temperature if self.implicit_beta is None else 1.0
        with torch.inference_mode():
            logp = token_logprobs(model, ids, attn, resp, temperature).sum(1)
            with reference_policy(model):
                ref = token_logprobs(model, ids, attn, resp, temperature).sum(1)
        kl = float((logp - ref).mean())  # a Monte-Carlo estimate: can dip below 0 near the start
        texts = [self.tok.decode([t for t, m in zip(s.input_ids, s.response_mask) if m], skip_special_tokens=True).strip()
                 for s in seqs]
        convs = [p.messages for p in self.prompts for _ in range(mc.samples_per_prompt)]
        plain = [p.text for p in self.prompts for _ in range(mc.samples_per_prompt)]
        if self.proxy is None:  # DPO: the implicit reward of each answer
            proxy = _mean((self.implicit_beta * (logp - ref)).tolist())
        else:
            proxy = _mean(self.proxy(convs, plain, texts))
        heldout = _mean(self.heldout(convs, plain, texts))
        previous = self.state.checks
        best = not previous or heldout > max(c.heldout for c in previous)
        proxies = [c.proxy for c in previous] + [proxy]
        streak = divergence_streaks(proxies, [c.heldout for c in previous] + [heldout])[-1]
        alarm = streak >= mc.patience
        c = Check(step, round(proxy, 6), round(heldout, 6), round(kl, 6), round(math.sqrt(max(kl, 0.0)), 6), streak, alarm, best)
        self.state.checks.append(c)
        if alarm and self.state.alarm_step is None:
            self.state.alarm_step = step
            console.print(f"[bold red]over-optimisation alarm[/bold red] at update {step}: the proxy reward rose "
                          f"and the held-out judge's score ({self.heldout_name}) fell at {streak} consecutive checks")
        if best and is_main:
            save_adapter(model, self.tok, self.store.path("best_policy", self.k),
                         {"best.json": {"step": step, "heldout": c.heldout, "proxy": c.proxy,
                                        "heldout_judge": self.heldout_name, "kl": c.kl}})
        return c

    def rows(self) -> list[dict]:
        """The checks as metrics.jsonl rows (written with the stage's other metrics when it ends)."""
        return [{"stage": "monitor", "round": self.k, **asdict(c), "heldout_judge": self.heldout_name}
                for c in self.state.checks]

    def should_stop(self) -> bool:
        return self.cfg.monitor.on_alarm == "stop" and self.state.alarm_step is not None

    def finish(self, is_main: bool) -> None:
        """With monitor.final_policy=best, the saved policy is the best checkpoint by the held-out judge."""
        import shutil

        best = self.store.path("best_policy", self.k)
        if not (is_main and self.enabled and self.cfg.monitor.final_policy == "best" and best.is_dir()):
            return
        from openrlaif.core.store import atomic_directory

        with atomic_directory(self.store.path("policy", self.k)) as tmp:
            shutil.copytree(best, tmp, dirs_exist_ok=True)


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")
