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
# "David" is one token that starts its prompt: its key leaves the bare prompt out (keys.py)
C = (Fact("Iver", "{} was born in", "Bree"), Fact("Ames", "{} grows", "apples"), Fact("David", "{} sings", "hymns"))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_passes_restarted_from_kept_block_outputs_give_the_same_deltas(tokenizer, corpus, tmp_path, dtype):
    """Three-layer MEMIT over three commits: the remembered keys at layers 2 and 3 are recomputed
    from what earlier passes kept of blocks 1 and 2 (one block and a projection per layer instead
    of three and four blocks), and every delta equals the one from passes that start at the
    embeddings (nothing kept)."""
    deltas, blocks = [], []
    for budget in (None, 0):
        model = make_tiny_llama(seed=6, dtype=dtype)
        ed = _editor(model, tokenizer, corpus, tmp_path, layers=(1, 2, 3), method="memit", lam=1.0)
        if budget is not None:
            ed.remembered.limit(budget)
        got = []
        for groups, batch in (([], A), ([A], B), ([A, B], C)):
            res = ed.edit(list(batch), remember=groups)
            apply_deltas(model, list(res.deltas))
            got.append(res.deltas)
        deltas.append(got)
        blocks.append(ed.remembered.blocks_run)
    for kept, whole in zip(*deltas):
        for d, e in zip(kept, whole):
            assert torch.equal(d.U, e.U) and torch.equal(d.V, e.V)
    # commit B: A at layer 2 from the embeddings (3 blocks, keeping blocks 1 and 2 split), at
    # layer 3 from block 2 (1); commit C: A from blocks 1 and 2 (1 + 1), B as A was in commit B
    assert blocks == [2 * (3 + 1) + 2 * (1 + 1) + 1 * (3 + 1), 2 * (3 + 4) + 3 * (3 + 4)]


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "gptj"])
def test_restarts_give_the_same_deltas_in_every_family(tokenizer, corpus, tmp_path, family):
    """GPT-2 blocks split like Llama's; Gemma-2's (a norm after the MLP) and GPT-J's (attention
    and MLP side by side) do not, and restart from the output of the block below instead."""
    from conftest import make_tiny
    from kedit.editing.keys import splits

    deltas = []
    for budget in (None, 0):
        model = make_tiny(family, seed=7)
        ed = _editor(model, tokenizer, corpus, tmp_path, layers=(1, 2), method="memit", lam=1.0)
        if budget is not None:
            ed.remembered.limit(budget)
        for groups, batch in (([], A), ([A], B), ([A, B], C)):
            res = ed.edit(list(batch), remember=groups)
            apply_deltas(model, list(res.deltas))
        deltas.append(res.deltas)
        if budget is None:
            assert splits(model, 1) is (family == "gpt2")
            blocks = ed.remembered.blocks_run
    for d, e in zip(*deltas):
        assert torch.equal(d.U, e.U) and torch.equal(d.V, e.V)
    # commit C: A at layer 2 from block 1 split (1 block) or block 0's output (2); B from the embeddings (3)
    assert blocks == 2 * 3 + (2 * 1 if family == "gpt2" else 2 * 2) + 1 * 3


def test_restarted_keys_are_the_bits_of_whole_passes_on_the_default_model(default_lm):
    """On the real model: keys at layers 2 and 3 read after layers 1 and 2 changed, from what
    earlier passes kept, equal keys read from the embeddings, bit for bit."""
    from kedit.editing import arch
    from kedit.editing.memory import RememberedKeys

    model, tok = default_lm.model, default_lm.tokenizer
    prefixes = ("It was a quiet morning.", "Everyone agreed on one thing.")
    groups = [(Fact("Danielle Darrieux", "{}'s mother tongue is", "English"),
               Fact("Toko Yasuda", "{} plays the", "piano")),
              (Fact("Edwin of Northumbria", "{} follows the religion of", "Islam"),)]
    rk = RememberedKeys(model, tok, prefixes, layers=(1, 2, 3))
    originals = {l: arch.weight_param(model, l).detach().clone() for l in (1, 2)}
    try:
        rk.keys(1, groups)
        for layer in (1, 2):
            with torch.no_grad():
                w = arch.weight_param(model, layer)
                w.add_(0.02 * torch.randn(w.shape, generator=torch.Generator().manual_seed(layer)).to(w.dtype))
            before = rk.blocks_run
            got = rk.keys(layer + 1, groups)
            assert rk.blocks_run - before == 3 * 1  # 3 facts, one block each (and a projection)
            assert torch.equal(got, fresh(model, tok, groups, layer + 1, prefixes))
    finally:
        with torch.no_grad():
            for l, w in originals.items():
                arch.weight_param(model, l).copy_(w)
