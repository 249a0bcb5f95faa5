"""Shared fixtures: a tiny random Llama + byte-level BPE tokenizer built offline, tiny configs.

Nothing here touches the network or the user's cache: OPENRLAIF_CACHE points at a session tmp dir
(except for the smoke test, which opts out through the ``real_cache`` marker handling below).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The smoke test wants the caller's real cache (so the converted embedded model is reused), unless
# the caller already set OPENRLAIF_CACHE. Remember what it was before we redirect it.
ORIGINAL_OPENRLAIF_CACHE = os.environ.get("OPENRLAIF_CACHE")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A helpful assistant answers the question clearly and honestly.",
    "Response A is better than Response B because it is more accurate.",
    "Response B is better than Response A because it is more concise.",
    "The better response is Response A.",
    "The better response is Response B.",
    "Answer with one letter: A or B.",
    "You are a fair, careful judge of AI assistant responses.",
    "A user sent this request: explain photosynthesis in simple words.",
    "Plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    "Write a short poem about the sea and the stars at night.",
    "The sea is wide, the stars are bright, the ship sails on into the night.",
    "How do I sort a list in Python? Use the sorted function or list.sort.",
    "What is the capital of France? The capital of France is Paris.",
    "Give me three tips for better sleep: keep a schedule, avoid screens, and stay cool.",
    "Summarize the plot of a famous novel in two sentences.",
    "Explain why the sky is blue: sunlight scatters off molecules in the air.",
    "Translate 'good morning' into Spanish: buenos dias.",
    "Numbers one two three four five six seven eight nine ten.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } < > ! ? , . ; :",
    "Please be polite, safe, and harmless in every answer you give.",
    "Which response is more helpful, honest and harmless?",
    "I cannot help with that request, but here is a safer alternative.",
    "Cooking pasta: boil water, add salt, cook for ten minutes, drain.",
    "The mitochondria is the powerhouse of the cell.",
    "Machine learning models learn patterns from data.",
    "Reinforcement learning from AI feedback trains a policy with a judge.",
    "Direct preference optimization compares chosen and rejected answers.",
    "Dear friend, thank you for your kind letter and your thoughtful gift.",
    "Step 1: read the problem. Step 2: plan. Step 3: solve. Step 4: check.",
    "user assistant system",
    "Hello! How can I help you today?",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Exercise regularly, eat vegetables, and drink enough water.",
    "Why do cats purr? Nobody knows for sure, but it may calm them.",
    "List the planets: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 3, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token=None,
        unk_token=None,
    )
    tok.chat_template = CHATML
    return tok


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Point OPENRLAIF_CACHE (and HF caches) at a session tmp dir so the user's cache is untouched."""
    root = tmp_path_factory.mktemp("openrlaif-cache")
    saved = {k: os.environ.get(k) for k in ("OPENRLAIF_CACHE",)}
    os.environ["OPENRLAIF_CACHE"] = str(root)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model")
    assert (path / "config.json").is_file()
    return path


TINY_OVERRIDES = [
    "data.max_train_prompts=4",
    "data.max_eval_prompts=4",
    "generate.n=3",
    "generate.max_new_tokens=8",
    "generate.temperature=1.5",
    "train.epochs=1",
    "train.batch_size=2",
    "train.max_length=96",
    "train.learning_rate=1e-2",
    "eval.max_new_tokens=8",
    "eval.bootstrap=200",
    "label.batch_size=4",
    "feedback.min_agreement=0",  # the judge gate has its own tests
    "feedback.method=pairwise",  # the stage tests check the two-order pairwise maths; other methods have their own
]


def tiny_overrides(model_dir: Path) -> list[str]:
    return [f"model.policy={model_dir}", *TINY_OVERRIDES]


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir):
    from openrlaif.config import load_config

    return load_config(None, tiny_overrides(tiny_model_dir))


@pytest.fixture(scope="module")
def browser():
    """A headless Debian Chromium under Playwright, shared by one module's page tests. Module scope: while
    Playwright's sync API runs, its event loop is the thread's, and asyncio.run() elsewhere would fail."""
    from browser import FLAGS, need_browser

    path = need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def die_on_call(monkeypatch, module, name: str, n: int):
    """Make ``module.name`` raise KeyboardInterrupt (a kill) on its n-th call; returns the real function,
    to put back with ``monkeypatch.setattr(module, name, real)`` before resuming."""
    real, calls = getattr(module, name), {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dies)
    return real



def labelled_run(cfg, run_dir: Path):
    """A run directory whose round 1 is generated and labelled (the AI pairs an audit desk reviews):
    (store, preference rows, the desk's queue database)."""
    from openrlaif.audit.prepare import prepare_queue
    from openrlaif.core.store import read_jsonl
    from openrlaif.pipeline import open_run, run_stage

    store = open_run(cfg, run_dir)
    run_stage("generate", cfg, store)
    run_stage("label", cfg, store)
    db, _ = prepare_queue(store.root, use_reward_model=False)
    return store, read_jsonl(store.path("preferences.jsonl")), db
