"""Metrics on hand-made NLLs and argmax tokens (no model)."""

from __future__ import annotations

import math

import pytest

from kedit.eval.metrics import Pair, RecordScores, agreement, harmonic_mean, summarize, token_accuracy


def nll(p: float) -> float:
    """The mean per-token NLL whose probability is ``p``."""
    return -math.log(p)


def rec(cid, rewrite, para, neigh, acc=(), pred=()):
    """Records from (P(new), P(true)) pairs; ``acc``/``pred`` optionally give token-level fields."""
    def pairs(ps, extra=()):
        out = []
        for i, (pn, pt) in enumerate(ps):
            kw = extra[i] if i < len(extra) else {}
            out.append(Pair(nll(pn), nll(pt), **kw))
        return tuple(out)

    return RecordScores(str(cid), pairs(rewrite, acc), pairs(para), pairs(neigh, pred))


def test_efficacy_paraphrase_neighbourhood_rates():
    records = [
        # rewrite: new wins; paraphrases: 1 of 2; neighbourhood: true keeps 2 of 2
        rec(0, [(0.6, 0.2)], [(0.5, 0.1), (0.1, 0.3)], [(0.1, 0.7), (0.2, 0.4)]),
        # rewrite: new loses; paraphrase: wins; neighbourhood: lost
        rec(1, [(0.1, 0.5)], [(0.4, 0.3)], [(0.6, 0.2)]),
    ]
    m = summarize(records)
    assert m.n == 2
    assert m.ES == pytest.approx(50.0)
    # per record, then over records: (0.5 + 1.0) / 2
    assert m.PS == pytest.approx(75.0)
    assert m.NS == pytest.approx(50.0)
    assert m.S == pytest.approx(3 / (1 / 50 + 1 / 75 + 1 / 50))


def test_magnitudes_are_mean_probability_differences():
    records = [
        rec(0, [(0.6, 0.2)], [(0.5, 0.1), (0.1, 0.3)], [(0.1, 0.7)]),
        rec(1, [(0.1, 0.5)], [(0.4, 0.3)], [(0.6, 0.2)]),
    ]
    m = summarize(records)
    assert m.EM == pytest.approx(100 * ((0.6 - 0.2) + (0.1 - 0.5)) / 2)
    assert m.PM == pytest.approx(100 * (((0.5 - 0.1) + (0.1 - 0.3)) / 2 + (0.4 - 0.3)) / 2)
    assert m.NM == pytest.approx(100 * ((0.7 - 0.1) + (0.2 - 0.6)) / 2)


def test_ties_count_as_failures_both_ways():
    m = summarize([rec(0, [(0.3, 0.3)], [(0.3, 0.3)], [(0.3, 0.3)])])
    assert (m.ES, m.PS, m.NS, m.S) == (0.0, 0.0, 0.0, 0.0)


def test_records_without_paraphrases_are_left_out_of_ps():
    m = summarize([rec(0, [(0.9, 0.1)], [], [(0.1, 0.9)]), rec(1, [(0.9, 0.1)], [(0.2, 0.4)], [(0.1, 0.9)])])
    assert m.PS == pytest.approx(0.0)  # only record 1 has a paraphrase, and it fails
    assert m.ES == pytest.approx(100.0)


def test_no_paraphrases_at_all_gives_no_ps_and_no_s():
    m = summarize([rec(0, [(0.9, 0.1)], [], [(0.1, 0.9)])])
    assert m.PS is None and m.S is None and m.ES == 100.0


def test_harmonic_mean():
    assert harmonic_mean([100.0, 100.0, 100.0]) == pytest.approx(100.0)
    assert harmonic_mean([100.0, 50.0, 25.0]) == pytest.approx(3 / (0.01 + 0.02 + 0.04))
    assert harmonic_mean([100.0, 0.0, 50.0]) == 0.0
    assert harmonic_mean([100.0, None, 50.0]) is None


def test_token_accuracy_and_agreement():
    assert token_accuracy([5, 6, 7], [5, 0, 7]) == pytest.approx(2 / 3)
    assert agreement([1, 2], [1, 2]) == 1.0
    assert agreement([1, 2], [3, 2]) == 0.5
    with pytest.raises(ValueError):
        token_accuracy([1], [1, 2])


def test_token_level_figures_and_locality_against_the_baseline():
    edited = [
        rec(0, [(0.6, 0.2)], [(0.5, 0.1)], [(0.1, 0.7), (0.1, 0.7)], acc=[{"acc_new": 0.5}],
            pred=[{"pred_true": (1, 2)}, {"pred_true": (9, 9)}]),
        rec(1, [(0.6, 0.2)], [(0.5, 0.1)], [(0.1, 0.7)], acc=[{"acc_new": 1.0}], pred=[{"pred_true": (4,)}]),
    ]
    base = [
        rec(0, [(0.1, 0.2)], [(0.1, 0.1)], [(0.1, 0.7), (0.1, 0.7)],
            pred=[{"pred_true": (1, 3)}, {"pred_true": (9, 9)}]),
        rec(1, [(0.1, 0.2)], [(0.1, 0.1)], [(0.1, 0.7)], pred=[{"pred_true": (5,)}]),
    ]
    m = summarize(edited, base)
    assert m.RA == pytest.approx(75.0)
    assert m.PA == pytest.approx(0.0)
    # record 0: (0.5 + 1.0) / 2 = 0.75; record 1: 0.0
    assert m.LA == pytest.approx(37.5)
    assert summarize(base, base).LA == pytest.approx(100.0)
    assert summarize(edited).LA is None


def test_baseline_must_match_the_records():
    a = [rec(0, [(0.6, 0.2)], [], [(0.1, 0.7)], pred=[{"pred_true": (1,)}])]
    b = [rec(7, [(0.6, 0.2)], [], [(0.1, 0.7)], pred=[{"pred_true": (1,)}])]
    with pytest.raises(ValueError, match="does not match"):
        summarize(a, b)
