"""The commit guard's splitting rule (``session.guard``), on scripted attempts (no model)."""

from __future__ import annotations

from kedit.session.guard import Flagged, HeldBack, split_until_clean


def script(bad: set[str], step: float = 0.05):
    """An attempt flagged whenever its group holds a bad item; records every group tried."""
    tried: list[list[str]] = []

    def attempt(group):
        tried.append(list(group))
        return Flagged(step) if bad & set(group) else tuple(group)

    return attempt, tried


def test_a_clean_batch_is_one_attempt():
    attempt, tried = script(set())
    got = split_until_clean(list("abcd"), attempt)
    assert got.kept == (tuple("abcd"),) and got.held_back == () and got.taken_back == 0 and tried == [list("abcd")]


def test_one_bad_fact_among_sixteen_is_found_by_halving():
    items = [f"f{i}" for i in range(16)]
    attempt, tried = script({"f11"}, 0.07)
    got = split_until_clean(items, attempt)
    assert got.held_back == (HeldBack("f11", 0.07),)
    # every other fact is kept, in order, in the halves that were clean
    assert [x for g in got.kept for x in g] == [x for x in items if x != "f11"]
    assert got.kept == (tuple(items[:8]), tuple(items[8:10]), ("f10",), tuple(items[12:16]))
    assert got.taken_back == 5 and len(tried) == 1 + 2 * 4  # flagged at 16, 8, 4, 2 and 1; two halves per split


def test_every_fact_bad_holds_back_all_and_keeps_nothing():
    attempt, _ = script(set("abc"))
    got = split_until_clean(list("abc"), attempt)
    assert got.kept == () and [h.item for h in got.held_back] == list("abc") and got.taken_back == 5


def test_nothing_to_commit_tries_nothing():
    attempt, tried = script(set())
    assert split_until_clean([], attempt).kept == () and tried == []
