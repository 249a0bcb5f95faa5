"""Our DPO sequence log-probs and loss equal TRL's DPOTrainer on the same tiny model and batch (fp32).

TRL is a test-only dependency. The batch is TRL's own (its tokenization and collation); ours is then
computed on those tensors, so the comparison is of the log-prob and loss maths. Our tokenization of the
same pairs is compared too."""

import pytest
import torch

trl = pytest.importorskip("trl")


PAIRS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
     "rejected": [{"role": "assistant", "content": "Numbers one two three."}]},
    {"prompt": [{"role": "user", "content": "Explain why the sky is blue."}],
     "chosen": [{"role": "assistant", "content": "Sunlight scatters off molecules in the air."}],
     "rejected": [{"role": "assistant", "content": "The sea is wide, the stars are bright, the ship sails on."}]},
]


def test_dpo_logps_and_loss_match_trl(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from openrlaif.models.logprobs import encode_response, response_logprobs
    from openrlaif.models.loading import load_causal_lm
    from openrlaif.optimize.losses import dpo_loss

    beta = 0.1
    policy = load_causal_lm(str(tiny_model_dir)).model
    loaded_ref = load_causal_lm(str(tiny_model_dir))
    ref, tok = loaded_ref.model, loaded_ref.tokenizer
    torch.manual_seed(0)
    with torch.no_grad():  # make the policy differ from the reference, so the log-ratios are not all zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, beta=beta, bf16=False,
                     fp16=False, loss_type=["sigmoid"], precompute_ref_log_probs=False, report_to=[], use_cpu=True,
                     max_length=128, logging_steps=1)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # eval(): no dropout, logged as "eval"

    # Ours on TRL's tensors: the batch is [chosen..., rejected...], completion_mask marks the answers.
    ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        pol = response_logprobs(policy, ids, attn, resp)
        refl = response_logprobs(ref, ids, attn, resp)
    pc, pr = pol.chunk(2)
    rc, rr = refl.chunk(2)
    loss, r_c, r_r = dpo_loss(pc, pr, rc, rr, beta)
    assert loss.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    assert pc.mean().item() == pytest.approx(logged["logps/chosen"], abs=1e-4)  # sums over ~10 tokens
    assert pr.mean().item() == pytest.approx(logged["logps/rejected"], abs=1e-4)
    assert r_c.mean().item() == pytest.approx(logged["rewards/chosen"], abs=1e-5)
    assert r_r.mean().item() == pytest.approx(logged["rewards/rejected"], abs=1e-5)
    assert abs(trl_loss - 0.6931) > 1e-3  # the policy and reference differ: the comparison is not trivial

    # Our tokenization of the same pairs gives TRL's sequences and answer masks, except that TRL keeps the chat
    # template's newline after the end-of-turn token as part of the answer; ours stops at end-of-turn, which
    # is where the policy's own samples stop.
    ours = [encode_response(tok, p["prompt"], p[side][0]["content"], 128) for side in ("chosen", "rejected")
            for p in PAIRS]
    for row, seq in enumerate(ours):
        n = int(attn[row].sum())
        assert seq.input_ids == ids[row, : n - 1].tolist(), row
        assert seq.response_mask == resp[row, : n - 1].tolist(), row
        assert tok.decode(ids[row, n - 1 : n]).strip() == "" and resp[row, n - 1] == 1
