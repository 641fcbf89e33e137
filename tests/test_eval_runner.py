"""The evaluation runner and the experiments on a tiny random Llama (fast, no real model)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from kedit.editing import Editor, HParams, ValueConfig, score_targets
from kedit.editing.delta import fingerprint
from kedit.eval.experiments import plot_scale, plot_sweep, scale_batches, sweep_layers, table_rows, text_chart
from kedit.eval.records import EvalRecord
from kedit.eval.runner import count_prompts, evaluate, score_records

RECORDS = [
    EvalRecord("a", "Ames", "The river of {} is the", "Bree", "Ames", ("People say the river of Ames is the",),
               ("The river of Bree is the",), "Bree", "counterfact"),
    EvalRecord("b", "Colm", "{} grows", "apples", "barley", ("In the hills, Colm grows",),
               ("Dunn grows", "Most farmers grow"), "rye", "counterfact"),
    EvalRecord("c", "Eddy", "The town of {} lies by the", "sea", "hills", (),
               ("The town of Fenn lies by the",), "river", "counterfact"),
    EvalRecord("d", "Gale", "{} was born in", "Hollow", "Ames", ("Gale's birthplace is",),
               ("Iver was born in",), "Bree", "counterfact"),
]


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(" ".join(f"Paragraph {i}: the river {i % 7} flows past Ames and Bree, where {i * 3} farmers "
                          f"grow barley, rye and apples." for i in range(120)))
    return str(f)


def make_editor(model, tok, corpus, tmp_path, layers=(1,), steps=12):
    hp = HParams(method="emmet", layers=layers, lam=0.0, values=ValueConfig(steps=steps, lr=0.5),
                 stats_tokens=1500, stats_seq_len=64)
    return Editor(model, tok, hp, ("A prefix.",), "tiny", corpus=corpus, cache_dir=tmp_path / "cache")


@pytest.fixture
def model():
    return make_tiny_llama(seed=11, dtype=torch.float64)


def digest(model):
    return fingerprint(model, [0, 1, 2, 3])


def test_batched_scoring_matches_one_prompt_at_a_time(model, tokenizer):
    batched = score_records(model, tokenizer, RECORDS, batch_size=64)
    one = score_records(model, tokenizer, RECORDS, batch_size=1)
    for a, b in zip(batched, one):
        for pa, pb in zip(a.rewrite + a.paraphrase + a.neighborhood, b.rewrite + b.paraphrase + b.neighborhood):
            assert pa.nll_new == pytest.approx(pb.nll_new, abs=1e-9)
            assert pa.nll_true == pytest.approx(pb.nll_true, abs=1e-9)
            assert pa.pred_true == pb.pred_true
    # and against score_targets directly for one pair
    (s,) = score_targets(model, tokenizer, ["The town of Fenn lies by the"], ["river"])
    assert batched[2].neighborhood[0].nll_true == pytest.approx(s.nll, abs=1e-9)
    assert [len(r.paraphrase) for r in batched] == [1, 1, 0, 1]
    assert count_prompts(RECORDS) == 2 * (3 + 4 + 2 + 3)


def test_batch_mode_edits_each_batch_on_the_base_weights(model, tokenizer, corpus, tmp_path):
    before = digest(model)
    ed = make_editor(model, tokenizer, corpus, tmp_path)
    res = evaluate(model, tokenizer, ed, RECORDS, batch_size=2)
    assert digest(model) == before  # restored
    assert [r.case_id for r in res.records] == ["a", "b", "c", "d"]
    assert res.batches == 2 and res.facts_edited == 4 and not res.interrupted
    m, b = res.metrics, res.baseline_metrics
    assert m.ES == 100.0 and b.ES < 100.0
    assert b.LA == 100.0
    # the second batch alone, on the base weights, gives exactly the same scores
    alone = evaluate(model, tokenizer, ed, RECORDS[2:], batch_size=2)
    assert alone.edited == res.edited[2:]
    assert digest(model) == before
    d = res.to_dict()
    assert d["edited"]["ES"] == 100.0 and d["edit_seconds_per_fact"] > 0 and d["prompts_per_second"] > 0


def test_sequential_mode_scores_everything_at_the_end(model, tokenizer, corpus, tmp_path):
    before = digest(model)
    ed = make_editor(model, tokenizer, corpus, tmp_path)
    seq = evaluate(model, tokenizer, ed, RECORDS, batch_size=2, sequential=True)
    batch = evaluate(model, tokenizer, ed, RECORDS, batch_size=2)
    assert digest(model) == before
    assert seq.sequential and seq.batches == 2 and len(seq.edited) == 4
    # the first batch's records were scored after the second batch changed the model too
    assert seq.edited[:2] != batch.edited[:2]
    # one batch covering all records: sequential and batch editing are the same computation
    one_seq = evaluate(model, tokenizer, ed, RECORDS, batch_size=4, sequential=True)
    one_batch = evaluate(model, tokenizer, ed, RECORDS, batch_size=4)
    assert one_seq.edited == one_batch.edited


@pytest.mark.parametrize("sequential", [False, True])
def test_ctrl_c_returns_the_figures_so_far(model, tokenizer, corpus, tmp_path, sequential):
    before = digest(model)
    ed = make_editor(model, tokenizer, corpus, tmp_path)

    def progress(tick):
        if tick.stage == "edit" and tick.done >= 2 and not tick.detail:
            raise KeyboardInterrupt

    res = evaluate(model, tokenizer, ed, RECORDS, batch_size=2, sequential=sequential, progress=progress)
    assert res.interrupted
    assert [r.case_id for r in res.records] == ["a", "b"]
    assert res.metrics.n == 2 and res.baseline_metrics.n == 2
    assert digest(model) == before


@pytest.mark.parametrize("sequential", [False, True])
def test_ctrl_c_inside_an_edit_keeps_the_batches_before_it(model, tokenizer, corpus, tmp_path, sequential):
    before = digest(model)
    ed = make_editor(model, tokenizer, corpus, tmp_path)

    def progress(tick):
        if tick.stage == "edit" and tick.done >= 2 and tick.detail:  # during the second batch's edit
            raise KeyboardInterrupt

    res = evaluate(model, tokenizer, ed, RECORDS, batch_size=2, sequential=sequential, progress=progress)
    assert res.interrupted and res.batches == 1 and res.facts_edited == 2
    assert [r.case_id for r in res.records] == ["a", "b"] and res.metrics.ES == 100.0
    assert digest(model) == before


def test_sweep_and_scale_on_a_tiny_model(model, tokenizer, corpus, tmp_path):
    before = digest(model)
    recs = RECORDS[:2]
    sweep = sweep_layers(model, tokenizer, lambda l: make_editor(model, tokenizer, corpus, tmp_path, (l,), steps=8),
                         recs, [1, 2], batch_size=2)
    assert [r.layer for r in sweep.rows] == [1, 2] and not sweep.interrupted
    assert all(r.complete and r.metrics.n == 2 for r in sweep.rows)
    assert sweep.baseline.n == 2
    assert "layer 2" in text_chart(sweep) and table_rows(sweep)[0][0] == "baseline"
    assert plot_sweep(sweep, tmp_path / "sweep.png").stat().st_size > 1000

    scale = scale_batches(model, tokenizer, make_editor(model, tokenizer, corpus, tmp_path, steps=8), recs, [1, 2])
    assert [(r.batch_size, r.sequential) for r in scale.rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert scale.rows[2].metrics == scale.rows[3].metrics  # one batch: the same run
    assert plot_scale(scale, tmp_path / "scale.png").stat().st_size > 1000
    assert digest(model) == before


def test_an_interrupted_sweep_keeps_the_finished_layers(model, tokenizer, corpus, tmp_path):
    seen = []

    def progress(tick):
        seen.append(tick)
        if tick.stage == "edit" and tick.done >= 3 and not tick.detail.endswith(("values", "keys", "solve")):
            raise KeyboardInterrupt

    sweep = sweep_layers(model, tokenizer, lambda l: make_editor(model, tokenizer, corpus, tmp_path, (l,), steps=4),
                         RECORDS[:2], [1, 2, 3], batch_size=1, progress=progress)
    assert sweep.interrupted
    assert [r.layer for r in sweep.rows] == [1, 2]
    assert sweep.rows[0].complete and not sweep.rows[1].complete and sweep.rows[1].metrics.n == 1
