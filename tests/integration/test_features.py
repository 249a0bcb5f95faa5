"""A judge's hidden states as reply features: the forward that stops at the deepest requested layer gives the
hidden states of the full forward, and a frozen model reads a sequence once for every layer and pooling."""

import torch

from openrlaif.models.features import decoder_layers, layer_states, reply_features
from openrlaif.models.loading import load_causal_lm


def conversations():
    convs = [[{"role": "user", "content": f"Question {i}: how do I keep basil alive?"}] for i in range(5)]
    replies = ["Water it often.", "Give it sun and pinch the flowers.", "No idea.", "Repot it.", "Ignore it " * (1 + 3)]
    return convs, replies


def test_stopping_early_gives_the_full_forward_s_hidden_states(tiny_model_dir):
    lm = load_causal_lm(str(tiny_model_dir))
    n = lm.model.config.num_hidden_layers
    assert decoder_layers(lm.model) is not None and n >= 2
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.inference_mode():
        full = lm.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
        for deepest in range(n + 1):
            early = layer_states(lm.model, ids, attn, [deepest])
            assert sorted(early) == list(range(deepest + 1))  # every layer up to the deepest comes back
            for layer, h in early.items():
                torch.testing.assert_close(h, full[layer], rtol=0, atol=1e-6)


def test_a_frozen_model_reads_a_reply_once_for_every_layer(tiny_model_dir, monkeypatch):
    lm = load_causal_lm(str(tiny_model_dir))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    convs, replies = conversations()
    n = lm.model.config.num_hidden_layers
    calls = []
    real = lm.model.forward

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", counted)
    deep = reply_features(lm.model, lm.tokenizer, convs, replies, layers=[n - 1], poolings=("mean",))
    assert sum(calls) == 5
    # Shallower layers and the other pooling come from the same forward: no model call.
    shallow = reply_features(lm.model, lm.tokenizer, convs, replies, layers=[1, n - 1], poolings=("mean", "last"))
    assert sum(calls) == 5
    torch.testing.assert_close(shallow[f"layer{n - 1}:mean"], deep[f"layer{n - 1}:mean"])
    # A deeper layer (the normed output) needs a forward; an unseen reply only its own row.
    reply_features(lm.model, lm.tokenizer, convs[:2], replies[:2], layers=[n])
    assert sum(calls) == 7
    reply_features(lm.model, lm.tokenizer, convs, replies[:4] + ["A new reply."], layers=[1])
    assert sum(calls) == 8
    # The same features with the memo as without it (a trainable model keeps none).
    fresh = load_causal_lm(str(tiny_model_dir))
    direct = reply_features(fresh.model, fresh.tokenizer, convs, replies, layers=[1, n - 1], poolings=("mean", "last"))
    assert getattr(fresh.model, "_openrlaif_features", None) is None
    for name, value in direct.items():
        torch.testing.assert_close(shallow[name], value, rtol=0, atol=1e-5)


def test_replies_to_one_conversation_share_its_forward(tiny_model_dir, monkeypatch):
    """Replies to the same conversation run in one row, the conversation once (``collate_forks``): the same
    features as each reply run alone, fewer tokens through the model; a conversation with more replies than a
    batch holds is cut into pieces, and a lone reply takes the plain padded path."""
    import openrlaif.models.features as features

    lm = load_causal_lm(str(tiny_model_dir))
    n = lm.model.config.num_hidden_layers
    ask = [{"role": "user", "content": "How do I keep basil alive?"}]
    other = [{"role": "user", "content": "Name a river."}]
    convs = [ask] * 5 + [other] * 2 + [[{"role": "user", "content": "Alone here."}]]
    replies = ["Water it often.", "Sun.", "No idea at all, sorry.", "Repot it in spring.", "Ignore it " * 4,
               "The Nile.", "Danube", "Yes."]
    widths = []
    real = features.layer_states

    def counted(model, ids, attn, layers, position_ids=None):
        widths.append((tuple(ids.shape), attn.dim()))
        return real(model, ids, attn, layers, position_ids)

    monkeypatch.setattr(features, "layer_states", counted)
    kw = dict(layers=[1, n - 1, n], poolings=("mean", "last"), batch_size=4)
    forked = reply_features(lm.model, lm.tokenizer, convs, replies, **kw)
    # basil's 5 replies: a piece of 4 (one row) and a lone one; the river's 2 in one row (4 + 2 > batch_size: a
    # batch of its own); basil's fifth and "Alone here." padded side by side
    assert [shape[0] for shape, dim in widths if dim == 4] == [1, 1]
    assert [shape[0] for shape, dim in widths if dim == 2] == [2]
    monkeypatch.setattr(features, "forks_supported", lambda model: False)
    apart = reply_features(load_causal_lm(str(tiny_model_dir)).model, lm.tokenizer, convs, replies, **kw)
    assert set(forked) == set(apart)
    for name in forked:
        torch.testing.assert_close(forked[name], apart[name], rtol=0, atol=1e-5)

