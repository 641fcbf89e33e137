"""Remembered facts' keys: computed once per commit and layer, equal (bit for bit) to recomputing
them, recomputed only when a projection below the layer changed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_tiny_llama
from kedit.editing import Editor, HParams, apply_deltas
from kedit.editing.keys import compute_keys
from kedit.editing.values import ValueConfig
from kedit.facts import Fact

A = (Fact("Ames", "{} lies by the river", "Bree"), Fact("Dunn", "{} grows", "rye"))
B = (Fact("Fenn", "The town of {} is near", "Ames"),)
C = (Fact("Iver", "{} was born in", "Bree"), Fact("Ames", "{} grows", "apples"))


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(" ".join(f"Paragraph {i} tells how the river {i % 7} flows past the town of Ames." for i in range(120)))
    return str(f)


def _editor(model, tok, corpus, tmp_path, layers=(1,), method="emmet", lam=0.0, **kw):
    hp = HParams(method=method, layers=layers, lam=lam, values=ValueConfig(steps=3, early_stop=False),
                 stats_tokens=1500, stats_seq_len=64, preserve=1.0, remember_by_commit=True, **kw)
    return Editor(model, tok, hp, ("A prefix.",), "tiny", corpus=corpus, cache_dir=tmp_path / "cache")


def fresh(model, tok, groups, layer, prefixes):
    """Recomputed now, one commit at a time (what a reopened session or a replay computes)."""
    return torch.cat([compute_keys(model, tok, list(g), [layer], prefixes)[layer] for g in groups], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_keys_equal_recomputed_ones(tokenizer, corpus, tmp_path, dtype):
    model = make_tiny_llama(seed=3, dtype=dtype)
    ed = _editor(model, tokenizer, corpus, tmp_path)
    for groups, batch in (([], A), ([A], B), ([A, B], C)):
        res = ed.edit(list(batch), remember=groups)
        apply_deltas(model, list(res.deltas))
    # every commit's keys were computed once, by its own edit: nothing was recomputed for the memory
    assert ed.remembered.computed == 0
    got = ed.remembered.keys(1, [A, B, C])
    assert torch.equal(got, fresh(model, tokenizer, [A, B, C], 1, ed.prefixes))
    assert ed.remembered.computed == 0
    # a fact edited again is left out of the memory; an undone commit is forgotten
    left = ed.remembered.keys(1, [A, B], leave_out={(A[0].subject, A[0].prompt)})
    assert torch.equal(left, fresh(model, tokenizer, [A, B], 1, ed.prefixes)[:, 1:])
    # a change below the layer makes them stale: recomputed, and equal to recomputing
    from kedit.editing import arch

    with torch.no_grad():
        arch.weight_param(model, 0).mul_(1.5)
    again = ed.remembered.keys(1, [A, B, C])
    assert ed.remembered.computed == len(A) + len(B) + len(C)
    assert torch.equal(again, fresh(model, tokenizer, [A, B, C], 1, ed.prefixes))
    assert not torch.equal(again, got)


def test_records_made_before_the_cache_recompute_every_key(tokenizer, corpus, tmp_path):
    """Without ``remember_by_commit`` (journals written before it) the memory is the old one pass
    over all remembered facts on every commit: the same deltas as the code that wrote them."""
    model = make_tiny_llama(seed=4)
    ed = _editor(model, tokenizer, corpus, tmp_path)
    old = Editor(model, tokenizer, dataclasses.replace(ed.hparams, remember_by_commit=False), ed.prefixes, "tiny",
                 corpus=corpus, cache_dir=tmp_path / "cache")
    apply_deltas(model, list(old.edit(list(A)).deltas))
    flat = old.edit(list(B), remember=list(A))  # the old call: a flat list of facts
    grouped = old.edit(list(B), remember=[A])
    assert torch.equal(flat.deltas[0].U, grouped.deltas[0].U) and old.remembered.computed == 0


def test_multi_layer_memit_recomputes_only_the_layers_above_a_change(tokenizer, corpus, tmp_path):
    model = make_tiny_llama(seed=5)
    ed = _editor(model, tokenizer, corpus, tmp_path, layers=(1, 2), method="memit", lam=1.0)
    apply_deltas(model, list(ed.edit(list(A)).deltas))
    before = ed.remembered.computed
    res = ed.edit(list(B), remember=[A])
    # layer 1's keys of A were kept from A's own edit; layer 2's depend on layer 1, which A changed
    assert ed.remembered.computed - before == len(A)
    apply_deltas(model, list(res.deltas))
    for layer in (1, 2):
        assert torch.equal(ed.remembered.keys(layer, [A]), fresh(model, tokenizer, [A], layer, ed.prefixes))
