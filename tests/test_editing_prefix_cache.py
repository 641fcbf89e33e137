"""Reusing the δ-independent prefix of every row (kedit/editing/prefix_cache.py), on tiny models.

The value optimisation runs only the positions δ can reach; these tests check that this is the
same computation as running whole rows, for every supported family, and that the safety nets
(self-check, sliding windows, memory budget) fall back to whole rows.
"""

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch

from conftest import FAMILIES, make_tiny, make_tiny_llama
from kedit.editing import arch, forward, prefix_cache, values
from kedit.editing.values import ValueConfig, optimize_values
from kedit.facts import Fact

FACTS = [
    Fact("Eiffel Tower", "The {} is located in the city of", "London"),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "English"),
]
PREFIXES = ("A short prefix.", "Another, longer context prefix here.")


def _ragged(R=4, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (R, T), generator=g)  # (R, T)
    lengths = torch.tensor([12, 10, 9, 11])
    start = torch.tensor([5, 3, 7, 0])  # one row with nothing to reuse
    mask = (torch.arange(T)[None] < lengths[:, None]).long()  # (R, T)
    return ids, mask, lengths, start


@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_pass_reproduces_the_full_forward(family):
    model = make_tiny(family).double()
    layer = 1
    ids, mask, lengths, start = _ragged()
    with torch.no_grad():
        full = arch.base_model(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (R, T, d)
        pre = prefix_cache.Prefill(model, layer, ids, mask, start, max_rows=3)  # two prefill chunks
        assert pre.reusing
        sel = torch.tensor([2, 0, 3, 1])
        x = pre.batch(sel)
        assert x.hidden.shape[1] == int((lengths - start)[sel].max())
        with forward.restart_above(model, layer) as inject:
            inject.hidden = x.hidden
            body = arch.base_model(model)
            out = body(input_ids=x.input_ids, attention_mask=x.attention_mask, position_ids=x.position_ids,
                       **prefix_cache.cache_kwargs(body, x.cache)).last_hidden_state
    for i, r in enumerate(sel.tolist()):
        n = int(lengths[r] - start[r])
        torch.testing.assert_close(out[i, :n], full[r, start[r] : lengths[r]], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.reference[i, :n], full[r, start[r] : lengths[r]], rtol=1e-5, atol=1e-6)
    # (Gemma keeps its norms in float32, so float64 runs agree to ~1e-7, not 1e-15.)
    # The logits are the model's own (Gemma-2 soft-caps them).
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(arch.logits(model, full), want, rtol=1e-5, atol=1e-6)


def _values(model, tokenizer, **cfg):
    return optimize_values(model, tokenizer, FACTS, 1, PREFIXES, ValueConfig(steps=5, lr=0.3, **cfg))


def test_reuse_gives_the_same_values_as_whole_rows(tokenizer):
    model = make_tiny_llama().double()
    reused = _values(model, tokenizer)
    whole = _values(model, tokenizer, reuse_prefix=False)
    assert reused.steps == whole.steps
    torch.testing.assert_close(reused.delta, whole.delta, rtol=1e-5, atol=1e-7)  # δ is float32
    assert reused.nll == pytest.approx(whole.nll, rel=1e-6)


def test_a_cache_that_disagrees_falls_back_to_whole_rows(tokenizer, monkeypatch, caplog):
    """Stands in for a transformers version that lays out its cache differently: the first step's
    self-check (δ = 0 must reproduce the prefill) catches it and whole rows are run instead."""
    model = make_tiny_llama().double()
    whole = _values(model, tokenizer, reuse_prefix=False)
    real_kv = prefix_cache._kv
    monkeypatch.setattr(prefix_cache, "_kv", lambda cache, layer: tuple(2 * t for t in real_kv(cache, layer)))
    with caplog.at_level(logging.WARNING, logger="kedit.editing.values"):
        fell_back = _values(model, tokenizer)
    assert "running whole rows" in caplog.text
    torch.testing.assert_close(fell_back.delta, whole.delta, rtol=1e-5, atol=1e-7)  # δ is float32
    assert fell_back.steps == whole.steps


def _rounding_per_row(model) -> list[float]:
    """The self-check's second opinion on every row of ``_ragged``: how far one rounding of block
    1's output moves the row's last hidden state from the prefill's."""
    ids, mask, _, start = _ragged()
    pre = prefix_cache.Prefill(model, 1, ids, mask, start, max_rows=8)
    x = pre.batch(torch.arange(4))
    with torch.no_grad(), forward.restart_above(model, 1) as inject:
        ctx = SimpleNamespace(pre=pre, inject=inject, body=arch.base_model(model))
        return [values._rounding_miss(ctx, r, x, r) for r in range(4)]


@pytest.mark.parametrize("dtype, low, high", [(torch.bfloat16, 1e-3, 0.05), (torch.float32, 1e-8, 1e-5)])
def test_one_rounding_moves_a_calm_model_by_about_its_precision(dtype, low, high):
    """On a model that does not amplify rounding, the second opinion is about the precision's own
    rounding (bf16: 2^-8; float32: 6e-8): far below the check's tolerance (0.1; 1e-3), so a miss
    of a wrong cache there is never taken for rounding."""
    got = _rounding_per_row(make_tiny_llama(dtype=dtype))
    assert all(low < g < high for g in got), got


def test_a_miss_that_one_rounding_explains_keeps_the_cache(tokenizer, monkeypatch, caplog):
    """A heavily edited model can amplify rounding so much that two bf16 passes of one row differ
    by 0.28 (the default model after 688 edits); a tiny model cannot be made to (its norms undo any
    scaling), so here the second opinion is given that size by hand. The same wrong cache as above
    is then kept, with a log line saying why; without the second opinion, or with its real figure
    (about 1e-16 in float64), whole rows run."""
    model = make_tiny_llama().double()
    whole = _values(model, tokenizer, reuse_prefix=False)
    real_kv = prefix_cache._kv
    monkeypatch.setattr(prefix_cache, "_kv", lambda cache, layer: tuple(2 * t for t in real_kv(cache, layer)))
    real_rounding = values._rounding_miss
    monkeypatch.setattr(values, "_rounding_miss", lambda *a: 10 * real_rounding(*a) + 10.0)
    with caplog.at_level(logging.INFO, logger="kedit.editing.values"):
        kept = _values(model, tokenizer)
    assert "the cache is kept" in caplog.text and "running whole rows" not in caplog.text
    assert not torch.allclose(kept.delta, whole.delta, rtol=1e-5, atol=1e-7)  # the wrong cache was used
    for setting, patched in ((dict(reuse_check_rounding=False), True), ({}, False)):
        if not patched:
            monkeypatch.setattr(values, "_rounding_miss", real_rounding)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kedit.editing.values"):
            fell_back = _values(model, tokenizer, **setting)
        assert "running whole rows" in caplog.text and "the cache is kept" not in caplog.text
        torch.testing.assert_close(fell_back.delta, whole.delta, rtol=1e-5, atol=1e-7)  # δ is float32


def test_sliding_window_shorter_than_the_rows_runs_whole_rows(tokenizer):
    model = make_tiny("mistral").double()
    ids, mask, _, start = _ragged()
    assert prefix_cache.Prefill(model, 1, ids, mask, start, max_rows=8).reusing
    model.config.sliding_window = 4  # the blocks now mask differently from one full 4D mask
    pre = prefix_cache.Prefill(model, 1, ids, mask, start, max_rows=8)
    assert not pre.reusing and pre.kv == []


def test_memory_budget_runs_whole_rows(tokenizer, monkeypatch):
    model = make_tiny_llama().double()
    whole = _values(model, tokenizer, reuse_prefix=False)
    ids, mask, _, start = _ragged()
    monkeypatch.setattr(prefix_cache, "KV_BUDGET_BYTES", 0)
    assert not prefix_cache.Prefill(model, 1, ids, mask, start, max_rows=8).reusing
    capped = _values(model, tokenizer)
    torch.testing.assert_close(capped.delta, whole.delta, rtol=1e-5, atol=1e-7)  # δ is float32


def test_values_agree_in_bfloat16(tokenizer):
    """In bf16 the two paths round differently; the optimised δ still agrees closely."""
    model = make_tiny_llama(dtype=torch.bfloat16)
    cfg = dict(early_stop=False)
    a, b = _values(model, tokenizer, **cfg), _values(model, tokenizer, reuse_prefix=False, **cfg)
    cos = torch.nn.functional.cosine_similarity(a.delta, b.delta, dim=-1)
    assert float(cos.min()) > 0.99, cos
    assert dataclasses.asdict(ValueConfig())["reuse_prefix"] is True


def test_records_from_before_prefix_reuse_recompute_on_whole_rows():
    """A journal entry written before ``reuse_prefix`` (or ``prefill_like_steps``, or
    ``reuse_check_rounding``) existed ran
    without it; a ``--recompute`` replay must run that arithmetic again to reproduce its weights
    bit for bit."""
    from kedit.editing import HParams, preset

    hp = preset("default", "emmet")
    d = hp.to_dict()
    assert d["values"]["reuse_prefix"] is True and d["values"]["prefill_like_steps"] is True
    assert d["values"]["reuse_check_rounding"] is True
    assert HParams.from_dict(d) == hp
    del d["values"]["reuse_check_rounding"]
    assert HParams.from_dict(d).values == dataclasses.replace(hp.values, reuse_check_rounding=False)
    del d["values"]["prefill_like_steps"]
    assert HParams.from_dict(d).values == dataclasses.replace(hp.values, prefill_like_steps=False,
                                                              reuse_check_rounding=False)
    del d["values"]["reuse_prefix"]
    assert HParams.from_dict(d).values.reuse_prefix is False


def test_the_prefill_runs_under_the_steps_attention_kernel(tokenizer, caplog):
    """On CPU the steps attend with the plain-math kernel. With the prefill under it too, the
    first step's self-check in bf16 sees the cached path reproduce the prefill bit for bit; under
    the default kernel it sees the two kernels' rounding, which a session's edits amplify (0.19 on
    the default model after 176 edits, over the 0.1 above which a commit runs whole rows)."""
    worst = {}
    for same in (True, False):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="kedit.editing.values"):
            optimize_values(make_tiny_llama(dtype=torch.bfloat16), tokenizer, FACTS, 1, PREFIXES,
                            ValueConfig(steps=1, early_stop=False, prefill_like_steps=same))
        found = [r.getMessage() for r in caplog.records if "worst relative difference" in r.getMessage()]
        assert len(found) == 1, found
        worst[same] = float(found[0].rsplit(" ", 1)[1])
    assert worst[True] == 0.0
    assert 0.0 < worst[False] < 0.1, worst  # rounding only: the default kernel still passes the check here


def test_fact_groups_bound_the_rows_of_a_pass():
    from kedit.editing.values import fact_groups

    assert fact_groups([7, 7, 7], 14) == [[0, 1], [2]]
    assert fact_groups([3, 20, 3, 3], 8) == [[0], [1], [2, 3]]  # a fact larger than the bound goes alone
    assert fact_groups([], 8) == []


def test_groups_of_facts_give_the_same_values_as_one_batch(tokenizer):
    """A batch of thousands is optimised a few hundred rows at a time; each fact's δ is the same."""
    model = make_tiny_llama().double()
    facts = FACTS + [Fact("Colosseum", "The {} stands in", "Berlin")]
    seen = []
    cfg = ValueConfig(steps=5, lr=0.3)
    one = optimize_values(model, tokenizer, facts, 1, PREFIXES, cfg)
    grouped = optimize_values(model, tokenizer, facts, 1, PREFIXES, dataclasses.replace(cfg, max_rows=8),  # 4 rows a fact
                              progress=lambda step, total, loss, done: seen.append(done))
    assert grouped.steps == one.steps and grouped.converged == one.converged
    torch.testing.assert_close(grouped.delta, one.delta, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grouped.h_init, one.h_init)
    assert seen == sorted(seen) and seen[-1] == len(facts)  # facts done counts across groups


def test_a_model_that_returns_no_cache_runs_whole_rows(tokenizer):
    """A decoder whose forward pass hands back no key/value cache (some kernels and training
    setups do) is noticed by the prefill, which runs whole rows: same δ as without reuse."""
    model = make_tiny_llama().double()

    def drop_cache(module, args, out):
        for name in ("cache", "past_key_values"):  # the field's name changed in transformers 5.24
            if name in out:
                out[name] = None
        return out

    handle = arch.base_model(model).register_forward_hook(drop_cache)
    try:
        ids, mask, _, start = _ragged()
        pre = prefix_cache.Prefill(model, 1, ids, mask, start, max_rows=8)
        assert not pre.reusing and pre.kv == []
        got = _values(model, tokenizer).delta
    finally:
        handle.remove()
    whole = _values(make_tiny_llama().double(), tokenizer, reuse_prefix=False)
    torch.testing.assert_close(got, whole.delta, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_in_training_mode_gives_the_same_values(tokenizer):
    """Gradient checkpointing while training: transformers < 5.24 returns no cache there (whole
    rows), later versions fill it (prefix reuse). Either way δ equals the whole-row δ."""
    model = make_tiny_llama().double()
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()  # renamed in transformers 5
    model.train()
    whole = _values(make_tiny_llama().double(), tokenizer, reuse_prefix=False)
    torch.testing.assert_close(_values(model, tokenizer).delta, whole.delta, rtol=1e-5, atol=1e-7)


def test_attention_kernels_without_4d_masks_run_whole_rows():
    """Flash attention takes no explicit mask; such a model (a GPU setting) runs whole rows."""
    model = make_tiny_llama().double()
    ids, mask, _, start = _ragged()
    model.config._attn_implementation = "flash_attention_2"  # only read here; nothing runs with it
    try:
        assert not prefix_cache._reusable(model, ids.shape[1])
    finally:
        model.config._attn_implementation = "sdpa"
    assert prefix_cache._reusable(model, ids.shape[1])
