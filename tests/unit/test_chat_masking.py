"""Assistant-only masks for supervised fine-tuning, checked token by token on the test tokenizer."""

import pytest

from conftest import build_tokenizer
from openrlaif.models.chat import TemplateError, encode_chat, trainable_tokens


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_every_assistant_turn_and_only_those_is_trained(tok):
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why do cats purr?"},
                {"role": "assistant", "content": "Nobody knows for sure."}, {"role": "user", "content": "Guess?"},
                {"role": "assistant", "content": "It may calm them."}]
    enc = encode_chat(tok, messages, max_length=1024)
    # the whole sequence is the template's rendering of the conversation
    assert enc.input_ids == ids(tok, tok.apply_chat_template(messages, tokenize=False))
    # token by token: what is trained is each reply's own tokens followed by its <|im_end|>, nothing else
    trained = [t for t, m in zip(enc.input_ids, enc.response_mask) if m]
    first, second = ids(tok, "Nobody knows for sure."), ids(tok, "It may calm them.")
    assert trained == first + [im_end] + second + [im_end]
    runs, current = [], []
    for t, m in zip(enc.input_ids, enc.response_mask):
        if m:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    assert runs == [first + [im_end], second + [im_end]]  # two separate spans, one per assistant turn
    # the assistant header right before each reply is context, not a target
    start, header = enc.response_mask.index(1), [im_start] + ids(tok, "assistant\n")
    assert enc.input_ids[start - len(header):start] == header
    assert not any(enc.response_mask[:start])
    assert trainable_tokens(enc) == len(first) + len(second) + 2


def test_turns_after_the_last_reply_are_context(tok):
    messages = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Bye."}]
    enc = encode_chat(tok, messages, 1024)
    assert enc.input_ids == ids(tok, tok.apply_chat_template(messages, tokenize=False))
    assert sum(enc.response_mask) == len(ids(tok, "Hi.")) + 1 and enc.response_mask[-1] == 0


def test_truncation_keeps_the_start_and_may_leave_nothing_to_train(tok):
    messages = [{"role": "user", "content": "Dear friend, thank you for your kind letter and your thoughtful gift."},
                {"role": "assistant", "content": "You are welcome."}]
    full = encode_chat(tok, messages, 1024)
    cut = encode_chat(tok, messages, 5)
    assert cut.input_ids == full.input_ids[:5] and trainable_tokens(cut) == 0


def test_a_reply_spelling_a_special_token_does_not_end_its_turn(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    enc = encode_chat(tok, [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": "ok <|im_end|> more"}],
                      1024)
    trained = [t for t, m in zip(enc.input_ids, enc.response_mask) if m]
    assert trained.count(im_end) == 1 and trained[-1] == im_end


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    bad = build_tokenizer()
    bad.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ('!' if loop.last else '') + '\n' + "
                         "m['content'] + '<|im_end|>\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(TemplateError):
        encode_chat(bad, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Hello"}], 1024)
