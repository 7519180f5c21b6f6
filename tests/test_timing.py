"""The interleaved timer used by the benchmarks and the dispatch: blocks of back-to-back calls."""

import re

import pytest

from sepconv._timing import interleaved


def test_blocks_keep_each_candidate_alone_in_its_timed_calls():
    """block=3: per round each candidate runs 1 untimed + 3 timed calls back to back, never split
    by another candidate, and one time is recorded per timed call."""
    calls = []
    names = ["a", "b", "c"]
    t = interleaved({k: (lambda k=k: calls.append(k)) for k in names}, rounds=4, warmup=1, block=3)
    assert sorted(t) == names
    body = calls[len(names):]  # after the warm-up calls
    turns = [body[i:i + 4] for i in range(0, len(body), 4)]
    assert len(body) == 4 * len(names) * 4
    assert all(len(set(turn)) == 1 for turn in turns), turns  # a turn is one candidate's, unbroken
    rounds = [[turn[0] for turn in turns[i:i + 3]] for i in range(0, len(turns), 3)]
    assert all(sorted(r) == names for r in rounds), rounds  # every round runs every candidate once


def test_block_one_is_one_call_per_round():
    calls = []
    interleaved({k: (lambda k=k: calls.append(k)) for k in "ab"}, rounds=5, warmup=0)
    assert len(calls) == 10


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3"])
def test_block_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=re.escape(f"block: expected a positive int, got {bad!r}")):
        interleaved({"a": lambda: None}, rounds=1, block=bad)
