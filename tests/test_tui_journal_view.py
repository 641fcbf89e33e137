"""How the edit log reads journal entries (no model needed)."""

from __future__ import annotations

from kedit.facts import Fact
from kedit.session.journal import CommitEntry, FactScore, UndoEntry
from kedit.tui import journal_view as jv


def commit(seq=1):
    return CommitEntry(
        seq=seq, time="2026-11-22T04:00:00Z",
        facts=(Fact("Eiffel Tower", "The {} is in", "London"), Fact("Colosseum", "The {} is in", "Berlin")),
        method="memit", layers=(4, 5), hparams={"lam": 15000.0},
        timings={"statistics": 0.0, "values": 3.5, "keys": 0.25, "solve": 0.05, "apply": 0.2, "total": 4.1},
        delta_file="deltas/0001.safetensors", delta_sha256="0" * 64, fingerprint="f" * 64,
        efficacy=(FactScore(prob=0.8, argmax=True, prob_before=0.01), FactScore(prob=0.2, argmax=False, prob_before=0.02)),
        value_steps=(9, 25),
    )


def test_commit_row_shows_facts_method_layers_time_and_per_fact_efficacy():
    row = jv.view(commit(), undone=set())
    assert row == jv.Row("#1", "commit", "Eiffel Tower → London (+1)", "memit", "4,5", "4.1s", "✓✗ 1/2")
    assert jv.view(commit(), undone={1}).kind == "commit (undone)"


def test_undo_row_and_details():
    undo = UndoEntry(seq=2, time="2026-11-22T04:01:00Z", undoes=1, fingerprint="e" * 64)
    assert jv.view(undo, set()) == jv.Row("#2", "undo", "takes back #1", "", "", "", "")
    assert jv.undone_ids([commit(), undo]) == {1}
    assert "took back commit #1" in jv.details(undo).plain


def test_commit_details_list_every_fact_with_its_probabilities():
    text = jv.details(commit()).plain
    assert "method memit · layers 4,5 · 2 fact(s) · 4.1s" in text
    assert "1. The Eiffel Tower is in → London   1.0% → 80.0% ✓  (9 steps)" in text
    assert "2. The Colosseum is in → Berlin   2.0% → 20.0% ✗  (25 steps)" in text
    assert "total" not in text.split("phases:")[1].splitlines()[0]  # phases only, not the wall time
    assert jv.as_dict(commit())["kind"] == "commit"
