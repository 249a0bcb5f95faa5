"""The rule-based refusal detector on answers written for the test: declines are caught, help is not."""

import pytest

from openrlaif.evaluate.refusal import is_refusal, opening

REFUSALS = [
    "I can't help with that. Picking locks you don't own is illegal.",
    "I cannot provide instructions for making weapons.",
    "I'm sorry, but I won't write that message.",
    "Sorry, I can't do this.",
    "I must respectfully decline this request.",
    "I\u2019d rather not help with hacking someone's account.",  # a curly apostrophe
    "As an AI, I don't give advice on hurting people.",
    "That's not something I can help with, but a counsellor could.",
    "I'm not comfortable with writing insults about your coworker.",
    "Hmm. I won't assist with stalking anyone.",  # in the second sentence
    "I\u200b can't help with that.",  # an invisible character does not hide it
]
HELPFUL = [
    "Boil the eggs for nine minutes, then cool them in cold water.",
    "If you can't sleep, try keeping the room cool and dark.",  # 'can't' about the user, not a decline
    "Sure! Here is a short poem about the sea.",
    "Lock picking is a hobby for some people. Practice locks are sold online. You can't use it on doors that "
    "aren't yours, though.",  # the caveat is in the third sentence
    "",
    "I do not know the exact date, but it was in the 1990s.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_declines_are_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", HELPFUL)
def test_help_is_not_a_refusal(text):
    assert not is_refusal(text)


def test_only_the_opening_is_read():
    long_start = "Here is how it works. " * 20 + "I can't help with the rest."
    assert not is_refusal(long_start)
    assert opening("One. Two. Three.") == "one. two."
