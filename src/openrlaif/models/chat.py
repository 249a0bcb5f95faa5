"""Conversations as supervised training sequences: the chat template's tokens with a mask on what the
assistant wrote (each assistant turn's content and the token that ends it), so a fine-tune learns the
replies and never the prompts, system text or template markup."""

from __future__ import annotations

from openrlaif.models.logprobs import Encoded


class TemplateError(ValueError):
    """The chat template renders a conversation's first turns differently when more turns follow, so the
    assistant's tokens cannot be found by rendering its prefixes."""


def encode_chat(tokenizer, messages: list[dict[str, str]], max_length: int) -> Encoded:
    """``messages`` rendered by the tokenizer's chat template, cut to ``max_length`` tokens, with
    ``response_mask`` 1 on every assistant turn's tokens (its content and its end-of-turn token) and 0 on
    everything else (system and user turns, the template's headers, anything after the end-of-turn).

    Each assistant turn is found by rendering the conversation up to it (with the generation prompt) and
    through it: the tokens between the two are the turn. Special-token strings inside a message are read
    as the characters they are, so a reply that spells '<|im_end|>' does not end its own turn."""
    from openrlaif.core.text import neutralize_special_tokens
    from openrlaif.models.loading import end_of_turn_id

    eot = end_of_turn_id(tokenizer)
    safe = [{**m, "content": neutralize_special_tokens(m["content"], tokenizer)} for m in messages]

    def rendered(turns: list[dict], generation_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=generation_prompt, tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids

    ids: list[int] = []
    mask: list[int] = []
    for i, message in enumerate(safe):
        if message["role"] != "assistant":
            continue
        before = rendered(safe[:i], True)  # up to where the assistant starts writing turn i
        through = rendered(safe[: i + 1], False)
        if before[: len(ids)] != ids or through[: len(before)] != before:
            raise TemplateError(f"the chat template renders turn {i} differently once later turns follow; "
                                "assistant tokens cannot be located")
        ids += before[len(ids):]
        mask += [0] * (len(ids) - len(mask))
        turn = through[len(before):]
        end = turn.index(eot) + 1 if eot in turn else len(turn)
        ids += turn
        mask += [1] * end + [0] * (len(turn) - end)
    whole = rendered(safe, False)
    if whole[: len(ids)] == ids:  # turns after the last assistant reply are context only
        mask += [0] * (len(whole) - len(ids))
        ids = whole
    return Encoded(ids[:max_length], mask[:max_length])


def trainable_tokens(encoded: Encoded) -> int:
    """How many tokens of a sequence a fine-tune learns from (after truncation)."""
    return sum(encoded.response_mask)
