"""Scoring batches: shortest first, at most batch_size rows, padded size within the token budget."""

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
