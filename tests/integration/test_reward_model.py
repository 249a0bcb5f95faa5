"""The Bradley-Terry reward model on the tiny model: it learns a separable preference, saves and loads
as a RewardModel, and an ensemble is less sure of inputs unlike its training data."""

import json
import random

import pytest

from conftest import CORPUS, tiny_overrides
from openrlaif.config import load_config
from openrlaif.pipeline import open_run, run_stage
from openrlaif.reward.model import RewardEnsemble, load_reward
from openrlaif.stages.reward import split_pairs
from openrlaif.core.store import atomic_write_jsonl


def separable_prefs(n: int, seed: int = 0) -> list[dict]:
    """Chosen replies end politely ('Thank you.'), rejected ones rudely ('Go away.'); everything else random."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.sample(CORPUS, 2)
        rows.append({"prompt": [{"role": "user", "content": rng.choice(CORPUS)}],
                     "chosen": [{"role": "assistant", "content": f"{a} Thank you."}],
                     "rejected": [{"role": "assistant", "content": f"{b} Go away."}],
                     "p_chosen": 1.0, "principle": "kind", "source": "ai", "round": 1})
    return rows


def test_split_pairs_is_seeded_and_disjoint():
    train, held = split_pairs(20, 0.1, 3)
    assert len(held) == 2 and not set(train) & set(held) and sorted(train + held) == list(range(20))
    assert split_pairs(20, 0.1, 3) == (train, held)
    assert split_pairs(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "reward.members=3", "reward.full_finetune=true", "reward.learning_rate=3e-3", "reward.epochs=3",
        "reward.batch_size=8", "reward.heldout_fraction=0.25", "reward.max_length=96"])
    store = open_run(cfg, tmp_path_factory.mktemp("rm") / "run")
    atomic_write_jsonl(store.path("preferences.jsonl"), separable_prefs(96))
    summary = run_stage("reward", cfg, store)
    return cfg, store, summary


def test_reward_model_learns_a_separable_preference(trained):
    cfg, store, summary = trained
    assert summary["members"] == 3 and summary["heldout_pairs"] == 24
    assert summary["heldout_accuracy"] >= 0.95
    meta = json.loads((store.path("reward_model") / "ensemble.json").read_text())
    assert meta["members"] == ["member_0", "member_1", "member_2"]
    assert all(s["heldout"]["accuracy"] >= 0.9 for s in meta["summaries"])
    steps = [m for m in store.read_metrics() if m.get("stage") == "reward" and m.get("member") == 0]
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_saved_reward_model_loads_and_ranks_new_pairs(trained):
    cfg, store, _ = trained
    rm = load_reward(str(store.path("reward_model")))
    assert isinstance(rm, RewardEnsemble) and len(rm.members) == 3
    conv = [{"role": "user", "content": "Tell me about the planets."}]
    polite, rude = rm.rewards([conv, conv], ["List the planets: Mercury and Venus. Thank you.",
                                             "List the planets: Mercury and Venus. Go away."])
    assert polite > rude
    single = load_reward(str(store.path("reward_model") / "member_0"))
    assert len(single.rewards([conv], ["Thank you."])) == 1


def test_ensemble_is_less_certain_out_of_distribution(trained):
    _, store, _ = trained
    rm = load_reward(str(store.path("reward_model")))
    rng = random.Random(1)
    conv = [{"role": "user", "content": "Hello!"}]
    in_dist = [f"{rng.choice(CORPUS)} {rng.choice(['Thank you.', 'Go away.'])}" for _ in range(16)]
    # Out of distribution: byte soup the members never saw, with neither ending.
    ood = ["".join(rng.choice("xqzj#@%&~^0123456789") for _ in range(40)) for _ in range(16)]
    std_in = rm.member_rewards([conv] * 16, in_dist).std(0).mean()
    std_ood = rm.member_rewards([conv] * 16, ood).std(0).mean()
    assert std_ood > std_in


def test_lora_reward_member_saves_an_adapter(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + ["reward.epochs=1", "reward.max_length=64",
                                                               "reward.lora_r=4", "reward.lora_alpha=8"])
    store = open_run(cfg, tmp_path / "run")
    atomic_write_jsonl(store.path("preferences.jsonl"), separable_prefs(12))
    run_stage("reward", cfg, store)
    member = store.path("reward_model") / "member_0"
    assert (member / "adapter_config.json").is_file()
    rm = load_reward(str(store.path("reward_model")))
    assert len(rm.rewards([[{"role": "user", "content": "Hi"}]], ["Thank you."])) == 1
