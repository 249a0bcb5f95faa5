"""Scoring batches: shortest first, at most batch_size rows, padded size within the token budget."""

import pytest

from openrlaif.models.logprobs import length_batches


def test_short_rows_fill_the_row_limit():
    assert length_batches([10, 30, 20, 40, 50], batch_size=2, max_tokens=10_000) == [[0, 2], [1, 3], [4]]


def test_long_rows_go_a_few_at_a_time():
    # lengths by index: 0:100 1:900 2:120 3:500 4:110 5:480; budget 1000 padded tokens
    # sorted: 100, 110, 120 (3 x 120 = 360 fits), 480 (4 x 480 > 1000: new), 500 (2 x 500 = 1000 fits), 900 alone
    assert length_batches([100, 900, 120, 500, 110, 480], batch_size=8, max_tokens=1000) == [[0, 4, 2], [5, 3], [1]]


def test_a_row_longer_than_the_budget_is_a_batch_of_its_own():
    assert length_batches([5000, 10, 10], batch_size=4, max_tokens=100) == [[1, 2], [0]]


def test_every_index_once_and_each_batch_within_limits():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 900) for _ in range(300)]
    batches = length_batches(lengths, batch_size=16, max_tokens=4096)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 4096
    assert [lengths[b[0]] for b in batches] == sorted(lengths[b[0]] for b in batches)
    assert length_batches([], 4, 100) == []



def test_prefix_chunks_bound_count_and_tokens():
    """The shared-prefix path's chunks (length_batches on prefixes sorted by length): count and padded tokens."""
    p = [(1,) * n for n in (2, 3, 3, 5, 9, 4)]
    lengths = sorted(len(x) for x in p)  # the path sorts its prefixes: 2, 3, 3, 4, 5, 9
    # padded tokens: 3 x 3 = 9 > 8 -> [2, 3]; [3, 4] (2 x 4 = 8); [5] (2 x 9 > 8); 9 over the budget alone
    assert [[lengths[i] for i in c] for c in length_batches(lengths, 10, 8)] == [[2, 3], [3, 4], [5], [9]]
    # at most 2 prefixes a chunk, whatever the tokens
    assert [[lengths[i] for i in c] for c in length_batches(lengths, 2, 100)] == [[2, 3], [3, 4], [5, 9]]
    assert sum(length_batches(lengths, 3, 7), []) == list(range(len(p)))  # every prefix once, in order


def test_fork_batches_by_hand():
    """Replies to one prompt share a forked row; lone sequences go to plain batches (``length_batches``, widest
    batch first); without forks every sequence is plain."""
    from openrlaif.models.logprobs import Encoded, fork_batches

    def seq(prompt, reply):
        return Encoded(prompt + reply, [0] * len(prompt) + [1] * len(reply))

    seqs = [seq([1, 2], [3]), seq([1, 2], [4, 5]), seq([9], [3]), seq([1, 2], [6]), seq([7, 7, 7], [8])]
    # prompt [1, 2]: 0 and 3 (3 tokens) then 1 (4) join one row; 2 and 4 are alone
    assert fork_batches(seqs, [0, 1, 2, 3, 4], 8, True) == [([[0, 3, 1]], True), ([[2], [4]], False)]
    # two sequences a batch: the row takes 0 and 3, and 1 is left alone with 2 and 4 (lengths 4, 2, 4)
    assert fork_batches(seqs, [0, 1, 2, 3, 4], 2, True) == [([[0, 3]], True), ([[4]], False), ([[2], [1]], False)]
    assert fork_batches(seqs, [0, 1, 2, 3, 4], 2, False) == [([[4]], False), ([[3], [1]], False), ([[2], [0]], False)]
    # a batch's padded tokens: rows [1, 2 | 3 | 6 | 4, 5] (width 6) and [8 | 3 | 1, 2] (width 4) pad to 2 x 6
    more = seqs + [seq([8], [1, 2]), seq([8], [3])]
    assert fork_batches(more, [0, 1, 3, 5, 6], 8, True, max_tokens=11) == [([[0, 3, 1]], True), ([[6, 5]], True)]
    assert fork_batches(more, [0, 1, 3, 5, 6], 8, True, max_tokens=12) == [([[0, 3, 1], [6, 5]], True)]


def test_two_rows_of_one_conversation_stay_two_rows(monkeypatch):
    """Where the cost model cuts a conversation's replies into rows of two (each 10-token reply behind a 10-token
    prompt: a third would add 10 + 0.05 * (40^2 - 30^2) = 45 > 20 + 0.05 * 20^2 = 40 alone), a batch that holds
    both rows keeps them apart."""
    import openrlaif.models.logprobs as lp

    monkeypatch.setattr(lp, "FORK_ATTENTION_COST", 0.05)
    seqs = [lp.Encoded([1] * 10 + [2 + i] * 10, [0] * 10 + [1] * 10) for i in range(4)]
    assert lp.fork_batches(seqs, [0, 1, 2, 3], 8, True) == [([[0, 1], [2, 3]], True)]


def test_long_replies_behind_a_short_prompt_stay_apart():
    """A row's attention grows with its width squared (``row_cost``): two 600-token replies behind a 2-token prompt
    cost more in one row (1202 + 1.3e-3 * 1202^2 = 3080) than apart (2 x (602 + 1.3e-3 * 602^2) = 2146); two 1-token
    replies behind a 600-token prompt cost less (602 + 471 = 1073 vs 2 x (601 + 470) = 2141)."""
    from openrlaif.models.logprobs import Encoded, fork_pieces, row_cost

    assert row_cost(1202) == pytest.approx(1202 + 1.3e-3 * 1202**2)
    long_replies = [Encoded([1, 2] + [5 + i] * 600, [0, 0] + [1] * 600) for i in range(2)]
    assert fork_pieces(long_replies, [0, 1], 8) == [[0], [1]]
    long_prompt = [Encoded([1] * 600 + [5 + i], [0] * 600 + [1]) for i in range(2)]
    assert fork_pieces(long_prompt, [0, 1], 8) == [[0, 1]]
