"""Ring 1 on tiny random-init models: tokens, keys, values, statistics, deltas, adapters."""

import dataclasses
import math

import pytest
import torch

from conftest import FAMILIES, load_benchmark, make_tiny, make_tiny_llama
from kedit.editing import arch, tokens
from kedit.editing.delta import Delta, apply_deltas, fingerprint
from kedit.editing.edit import Editor
from kedit.editing.hparams import HParams
from kedit.editing.keys import compute_keys
from kedit.editing.values import ValueConfig, optimize_values
from kedit.errors import SingularSolveError, UnsupportedArchitectureError
from kedit.facts import Fact

FACTS = [
    Fact("Eiffel Tower", "The {} is located in the city of", "London"),
    Fact("Colosseum", "The {} stands in", "Berlin"),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "English"),
]


class BosTokenizer:
    """The SmolLM2 tokenizer made to add a BOS, as Llama-3's does (only ``__call__`` differs)."""

    def __init__(self, tok):
        self.tok = tok
        self.pad_token_id, self.eos_token_id = tok.pad_token_id, tok.eos_token_id

    def __call__(self, text, add_special_tokens=True, **kw):
        enc = self.tok(text, add_special_tokens=False, **kw)
        if add_special_tokens:
            enc["input_ids"] = [self.tok.bos_token_id] + list(enc["input_ids"])
        return enc

    def decode(self, *a, **kw):
        return self.tok.decode(*a, **kw)


@pytest.mark.parametrize("with_bos", [False, True])
def test_subject_last_token_index(tokenizer, with_bos):
    tok = BosTokenizer(tokenizer) if with_bos else tokenizer
    for f in FACTS:
        row = tokens.plain_row(tok, f.prompt, f.subject)
        assert (row.input_ids[0] == tokenizer.bos_token_id) == with_bos
        upto = tokenizer.decode(row.input_ids[: row.subject_index + 1], skip_special_tokens=True)
        assert upto.endswith(f.subject), f"{upto!r} should end with the subject {f.subject!r}"
        after = tokenizer.decode(row.input_ids[row.subject_index + 1 :])
        assert not after.startswith(f.subject[-1]), "index stops before the subject's last token"


def test_rewrite_row_teacher_forces_the_target(tokenizer):
    f = FACTS[0]
    row = tokens.rewrite_row(tokenizer, f.prompt, f.subject, f.target)
    assert tokenizer.decode(list(row.target_ids)) == " London"
    # position p predicts token p+1: the last prompt token predicts the first target token
    for pos, tid in zip(row.target_positions, row.target_ids):
        if pos + 1 < len(row.input_ids):
            assert row.input_ids[pos + 1] == tid


def test_keys_average_bare_and_prefixed(tokenizer, tiny_llama):
    prefixes = ("Once upon a time.", "In 1999 the world.")
    K = compute_keys(tiny_llama, tokenizer, FACTS, [1, 2], prefixes)
    K_bare = compute_keys(tiny_llama, tokenizer, FACTS, [1], ())[1]
    assert K[1].shape == (128, 3) and K[2].shape == (128, 3)
    # recompute one key by hand: ½ bare + ½ mean over prefixed prompts
    got = []
    mod = arch.mlp_out_module(tiny_llama, 1)
    h = mod.register_forward_hook(lambda m, i, o: got.append(i[0][0]))
    for t in [FACTS[1].prompt] + [f"{p} {FACTS[1].prompt}" for p in prefixes]:
        row = tokens.plain_row(tokenizer, t, FACTS[1].subject)
        with torch.no_grad():
            tiny_llama(torch.tensor([row.input_ids]))
        got[-1] = got[-1][row.subject_index]
    h.remove()
    want = 0.5 * got[0] + 0.5 * torch.stack(got[1:]).mean(0)
    torch.testing.assert_close(K[1][:, 1], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(K_bare[:, 1], got[0], rtol=1e-5, atol=1e-6)


def test_a_subject_at_the_first_token_prompts_from_its_prefixed_prompts(tokenizer, tiny_llama):
    """A one-token subject that starts its prompt sits where every text's attention sink does
    (the tokenizer adds no BOS): its bare prompt is left out of the key, the other facts' keys
    keep their bits, and ``first_token=True`` (records written before) keeps the reference key."""
    first = Fact("David", "{} is affiliated with the religion", "Buddhism")
    assert tokens.plain_row(tokenizer, first.prompt, first.subject).subject_index == 0
    facts = [FACTS[0], first, FACTS[1]]
    prefixes = ("Once upon a time.", "In 1999 the world.")
    new = compute_keys(tiny_llama, tokenizer, facts, [1, 2], prefixes)
    old = compute_keys(tiny_llama, tokenizer, facts, [1, 2], prefixes, first_token=True)
    bare = compute_keys(tiny_llama, tokenizer, [first], [1, 2], ())
    for l in (1, 2):
        assert torch.equal(new[l][:, [0, 2]], old[l][:, [0, 2]])
        # with one prefix, the new rule's key is that prefixed prompt's
        mean = torch.stack([compute_keys(tiny_llama, tokenizer, [first], [l], (p,))[l] for p in prefixes]).mean(0)[:, 0]
        torch.testing.assert_close(new[l][:, 1], mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(old[l][:, 1], 0.5 * bare[l][:, 0] + 0.5 * mean, rtol=1e-5, atol=1e-5)
    # without prefixes the bare prompt is all there is
    assert torch.equal(compute_keys(tiny_llama, tokenizer, [first], [1], ())[1], bare[1])


def test_a_subject_at_the_first_token_is_fitted_on_its_prefixed_prompts(tokenizer, tiny_llama):
    """Its δ is fitted without the bare prompt, and its reference hidden state (δ's scale, and
    what MEMIT spreads over the layers) comes from the first prefixed prompt, the same in both places."""
    from kedit.editing.edit import _reference_outputs
    from kedit.editing.values import rewrite_templates

    first = Fact("David", "{} is affiliated with the religion", "Buddhism")
    prefixes = ("Once upon a time.", "In 1999 the world.")
    assert rewrite_templates(tokenizer, first, prefixes, chat=False) == [f"{p} {first.prompt}" for p in prefixes]
    assert rewrite_templates(tokenizer, first, prefixes, chat=False, first_token=True)[0] == first.prompt
    assert rewrite_templates(tokenizer, first, (), chat=False) == [first.prompt]  # nothing else to fit on
    assert rewrite_templates(tokenizer, FACTS[0], prefixes, chat=False)[0] == FACTS[0].prompt
    facts = [FACTS[0], first]
    h = {}
    for old in (False, True):
        hp = HParams(method="memit", layers=(1, 2), lam=0.0, first_token_prompts=old)
        h[old] = optimize_values(tiny_llama, tokenizer, facts, 2, prefixes, ValueConfig(steps=0),
                                 first_token=old).h_init  # (E, d_model)
        torch.testing.assert_close(_reference_outputs(tiny_llama, tokenizer, facts, 2, prefixes, hp), h[old],
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[False][0], h[True][0])  # a subject further in keeps its bare prompt
    assert not torch.allclose(h[False][1], h[True][1], rtol=1e-3, atol=1e-3)


def test_records_written_before_the_first_token_rule_keep_the_reference_key():
    from kedit.editing import HParams, preset

    hp = preset("default", "memit")
    assert hp.first_token_prompts is False and HParams.from_dict(hp.to_dict()) == hp
    d = hp.to_dict()
    del d["first_token_prompts"]
    assert HParams.from_dict(d) == dataclasses.replace(hp, first_token_prompts=True)


@pytest.mark.parametrize("step_norm", [0.0, 0.05])  # Adam, normalised steps
def test_batched_values_equal_one_fact_at_a_time(tokenizer, step_norm):
    model = make_tiny_llama(seed=3, dtype=torch.float64)
    cfg = ValueConfig(steps=6, lr=0.2, early_stop=True, step_norm=step_norm)
    prefixes = ("A short prefix.",)
    batch = optimize_values(model, tokenizer, FACTS, 1, prefixes, cfg)
    for i, f in enumerate(FACTS):
        alone = optimize_values(model, tokenizer, [f], 1, prefixes, cfg)
        # δ is float32; rows are padded differently in the two runs, so agreement is to float32 rounding
        torch.testing.assert_close(batch.delta[i], alone.delta[0], rtol=1e-5, atol=1e-6)
        assert batch.steps[i] == alone.steps[0]
    assert batch.delta.shape == (3, 64)
    assert all(float(n) > 0 for n in batch.delta.norm(dim=-1)), "every fact moved"


def test_values_respect_the_clamp(tokenizer):
    model = make_tiny_llama(seed=4)
    cfg = ValueConfig(steps=8, lr=5.0, clamp=0.1, early_stop=False, weight_decay=0.0)
    vr = optimize_values(model, tokenizer, FACTS, 1, (), cfg)
    ratio = vr.delta.norm(dim=-1) / vr.h_init.norm(dim=-1)
    assert float(ratio.max()) <= 0.1 + 1e-5


def test_normalised_steps_follow_the_gradient_with_a_fixed_length(tokenizer):
    # One step from δ = 0 (``steps`` counts the scored steps: the last one only scores). Adam's first step is −lr·g/(|g| + ε) ≈ −lr·sign(g): every coordinate moves
    # by lr. The normalised step is −a·‖h‖·g/‖g‖: the same signs, the length fixed by ‖h‖.
    model = make_tiny_llama(seed=3, dtype=torch.float64)
    one = ValueConfig(steps=2, early_stop=False, weight_decay=0.0)
    adam = optimize_values(model, tokenizer, FACTS, 1, (), dataclasses.replace(one, lr=0.01))
    ngd = optimize_values(model, tokenizer, FACTS, 1, (), dataclasses.replace(one, step_norm=0.05))
    torch.testing.assert_close(adam.delta.abs(), torch.full_like(adam.delta, 0.01), rtol=1e-3, atol=0)
    torch.testing.assert_close(ngd.delta.norm(dim=-1), 0.05 * ngd.h_init.norm(dim=-1), rtol=1e-5, atol=0)
    assert torch.equal(torch.sign(ngd.delta), torch.sign(adam.delta))
    # the normalised step is a direction of its own, not Adam's sign vector rescaled
    cos = torch.nn.functional.cosine_similarity(ngd.delta, adam.delta, dim=-1)
    assert float(cos.max()) < 0.99
    # and it descends: more steps lower every fact's target NLL
    more = optimize_values(model, tokenizer, FACTS, 1, (), dataclasses.replace(one, steps=5, step_norm=0.05))
    start = optimize_values(model, tokenizer, FACTS, 1, (), dataclasses.replace(one, steps=1, step_norm=0.05))
    assert all(a < b for a, b in zip(more.nll, start.nll))


def test_value_optimisation_leaves_the_model_as_it_was(tokenizer):
    model = make_tiny_llama(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks_before = list(arch.blocks(model))
    optimize_values(model, tokenizer, FACTS[:1], 2, (), ValueConfig(steps=2))
    assert list(arch.blocks(model)) == blocks_before, "blocks are restored after the restart trick"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


@pytest.fixture
def text_corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(
        " ".join(
            f"Paragraph {i} tells how the river {i % 7} flows past the town of Ames and the hills of Bree, "
            f"where {i * 3} farmers grow barley, rye and apples every year." for i in range(120)
        )
    )
    return str(f)


def _editor(model, tok, corpus, tmp_path, method="emmet", layers=(1,), lam=0.0, steps=12):
    hp = HParams(method=method, layers=layers, lam=lam, values=ValueConfig(steps=steps, lr=0.5),
                 stats_tokens=1500, stats_seq_len=64)
    return Editor(model, tok, hp, ("A prefix.",), "tiny", corpus=corpus, cache_dir=tmp_path / "cache")


def test_edit_constraints_hold_on_the_model(tokenizer, text_corpus, tmp_path):
    model = make_tiny_llama(seed=6, dtype=torch.float64)
    ed = _editor(model, tokenizer, text_corpus, tmp_path)
    w0 = arch.weight_view(model, 1).detach().clone()
    res = ed.edit(FACTS)
    assert torch.equal(arch.weight_view(model, 1), w0), "Editor.edit never changes the weights"
    (d,) = res.deltas
    assert d.rank == 3 and d.module == "model.layers.1.mlp.down_proj"
    K = compute_keys(model, tokenizer, FACTS, [1], ed.prefixes)[1].double()  # (d_in, E)
    apply_deltas(model, [d])
    W = arch.weight_view(model, 1).detach()
    # the weights changed by the returned low-rank delta U Vᵀ (applied in float32: ~1e-7 rounding)
    torch.testing.assert_close(W - w0, d.U.double() @ d.V.double().T, rtol=1e-4, atol=1e-6)
    R = (W - w0) @ K  # (d_out, E): what the edit added at the keys
    # ŴK = W0K + δ for every fact (the value the optimisation asked for)
    res2 = optimize_values(make_tiny_llama(seed=6, dtype=torch.float64), tokenizer, FACTS, 1, ed.prefixes, ed.hparams.values)
    rel = ((R - res2.delta.T.double()).norm(dim=0) / res2.delta.T.double().norm(dim=0)).max()
    assert rel < 1e-4, f"Ŵk_i = v_i violated: relative error {rel:.2e}"


def test_edits_are_deterministic(tokenizer, text_corpus, tmp_path):
    model = make_tiny_llama(seed=7)
    a = _editor(model, tokenizer, text_corpus, tmp_path).edit(FACTS)
    b = _editor(model, tokenizer, text_corpus, tmp_path).edit(FACTS)  # C0 now from the disk cache
    for x, y in zip(a.deltas, b.deltas):
        assert torch.equal(x.U, y.U) and torch.equal(x.V, y.V)


def test_same_key_in_one_emmet_batch_is_refused_and_weights_untouched(tokenizer, text_corpus, tmp_path):
    """Keys only see text up to the subject: these two facts share a key, so EMMET is singular."""
    model = make_tiny_llama(seed=8)
    facts = [Fact("Eiffel Tower", "The {} is located in", "Rome"), Fact("Eiffel Tower", "The {} was built by", "Gustave")]
    before = fingerprint(model, [1])
    with pytest.raises(SingularSolveError) as err:
        _editor(model, tokenizer, text_corpus, tmp_path, steps=2).edit(facts)
    assert "The Eiffel Tower is located in → Rome" in str(err.value)
    assert "The Eiffel Tower was built by → Gustave" in str(err.value)
    assert fingerprint(model, [1]) == before
    # MEMIT's ridge handles the same batch
    res = _editor(model, tokenizer, text_corpus, tmp_path, method="memit", lam=1.0, steps=2).edit(facts)
    assert all(torch.isfinite(d.U).all() for d in res.deltas)


def test_multi_layer_memit_spreads_the_residual(tokenizer, text_corpus, tmp_path):
    model = make_tiny_llama(seed=9, dtype=torch.float64)
    ed = _editor(model, tokenizer, text_corpus, tmp_path, method="memit", layers=(1, 2), lam=0.01, steps=10)
    res = ed.edit(FACTS)
    assert [d.layer for d in res.deltas] == [1, 2]
    assert all(d.rank == 3 for d in res.deltas)
    norms = [d.norm() for d in res.deltas]
    assert all(n > 0 for n in norms)
    # With the residual split over two layers, the first layer takes about half of it.
    w = [arch.weight_param(model, l).detach().clone() for l in (1, 2)]
    apply_deltas(model, list(res.deltas))
    assert not torch.equal(arch.weight_param(model, 1), w[0]) and not torch.equal(arch.weight_param(model, 2), w[1])


def test_rome_edits_facts_one_after_another(tokenizer, text_corpus, tmp_path):
    model = make_tiny_llama(seed=10)
    res = _editor(model, tokenizer, text_corpus, tmp_path, method="rome", steps=3).edit(FACTS[:2])
    assert res.deltas[0].rank == 2 and len(res.value_steps) == 2


def test_apply_refuses_non_finite_and_changes_nothing(tiny_llama):
    d_out, d_in = arch.dims(tiny_llama, 0)
    good = Delta(0, "model.layers.0.mlp.down_proj", torch.ones(d_out, 1), torch.ones(d_in, 1))
    bad = Delta(1, "model.layers.1.mlp.down_proj", torch.full((d_out, 1), float("inf")), torch.ones(d_in, 1))
    before = fingerprint(tiny_llama, [0, 1])
    with pytest.raises(SingularSolveError, match="not finite"):
        apply_deltas(tiny_llama, [good, bad])
    assert fingerprint(tiny_llama, [0, 1]) == before, "no delta is applied when one is bad"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_edits(family, tokenizer, text_corpus, tmp_path):
    torch.manual_seed(0)
    model = make_tiny(family).double()
    d_out, d_in = arch.dims(model, 1)
    assert (d_out, d_in) == (32, model.config.to_dict().get("n_inner") or 4 * 32 if family in ("gpt2", "gptj") else 64)
    ed = _editor(model, tokenizer, text_corpus, tmp_path, steps=4)
    res = ed.edit(FACTS[:2])
    K = compute_keys(model, tokenizer, FACTS[:2], [1], ed.prefixes)[1].double()
    w0 = arch.weight_view(model, 1).detach().clone()
    apply_deltas(model, list(res.deltas))
    got = (arch.weight_view(model, 1).detach() - w0) @ K  # (d_out, E)
    want = res.deltas[0].dense().double() @ K
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    vr = optimize_values(model, tokenizer, FACTS[:2], 1, ed.prefixes, dataclasses.replace(ed.hparams.values, steps=0))
    assert vr.delta.abs().sum() == 0  # zero steps, zero shift: the restart trick works for this family


def test_unknown_architecture_is_named(tiny_llama):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UnsupportedArchitectureError) as err:
        arch.weight_view(bert, 0)
    assert "'bert'" in str(err.value) and "llama" in err.value.hint and "gpt2" in err.value.hint
    with pytest.raises(UnsupportedArchitectureError, match="layer 9 does not exist"):
        arch.weight_view(tiny_llama, 9)


def test_the_commit_cost_benchmark_measures_what_the_commit_writes(tokenizer, text_corpus, tmp_path):
    """benchmarks/bench_commit_cost.py: tr(ΔC0Δᵀ) of an EMMET commit is tr(R (KᵀC0⁻¹K)⁻¹ Rᵀ), R = δᵀ,
    and the weights are as they were afterwards."""
    bench = load_benchmark("bench_commit_cost")
    model = make_tiny_llama(seed=6, dtype=torch.float64)
    ed = _editor(model, tokenizer, text_corpus, tmp_path)
    w0 = arch.weight_view(model, 1).detach().clone()
    cost = bench.commit_cost(model, tokenizer, ed, FACTS)
    assert torch.equal(arch.weight_view(model, 1), w0)
    L = ed.factors()[1].L.double()
    K = compute_keys(model, tokenizer, FACTS, [1], ed.prefixes)[1].double()  # (d_in, E)
    vr = optimize_values(make_tiny_llama(seed=6, dtype=torch.float64), tokenizer, FACTS, 1, ed.prefixes, ed.hparams.values)
    R = vr.delta.T.double()  # (d_out, E)
    D = K.T @ torch.cholesky_solve(K, L)  # (E, E)  KᵀC0⁻¹K
    want = float(torch.trace(R @ torch.linalg.solve(D, R.T)))
    assert cost["corpus_shift"] == pytest.approx(want, rel=1e-3)
    assert cost["steps"] == pytest.approx(sum(vr.steps) / len(vr.steps))
    assert math.isfinite(cost["heldout"]) and cost["update_norm"] > 0 and cost["delta_rel"] > 0


def test_the_lifelong_solver_benchmark_replays_sequential_commits():
    """benchmarks/bench_lifelong_solver.py: commits that keep every earlier key exactly (α → ∞) do
    not move the earlier facts' outputs, and where the commits' keys do not overlap (KᵀC0⁻¹K = I)
    they reach exactly the bound it prints, r²·tr((KᵀC0⁻¹K)⁻¹); commits that remember nothing move
    the earlier outputs; damage is measured on the reference statistics."""
    from types import SimpleNamespace

    from kedit.editing import solver

    bench = load_benchmark("bench_lifelong_solver")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 24, generator=g, dtype=torch.float64)
    c0 = X.T @ X / 96 + 0.01 * torch.eye(24, dtype=torch.float64)  # (d_in, d_in)
    deltas = torch.randn(16, 12, generator=g, dtype=torch.float64)
    deltas = 3.0 * deltas / deltas.norm(dim=0, keepdim=True)  # (d_out, N), each of norm 3
    fac = solver.factor_c0(c0)

    def run(K, alpha):
        return bench.replay(K, deltas, lambda Kb, Rb, mem: solver.solve(Kb, Rb, fac, memory=mem, alpha=alpha),
                            c0, 2 * c0, batch=4, checkpoints=[4, 12])

    Q, _ = torch.linalg.qr(torch.randn(24, 12, generator=g, dtype=torch.float64))
    apart = torch.linalg.cholesky(c0) @ Q  # (d_in, N) with KᵀC0⁻¹K = I
    exact = run(apart, 1e9)
    assert [c.edits for c in exact] == [4, 12]
    assert exact[-1].bound == pytest.approx(9.0 * 12)
    assert exact[-1].solver_damage == pytest.approx(exact[-1].bound, rel=1e-6)
    assert exact[-1].damage == pytest.approx(2 * exact[-1].solver_damage)

    K = torch.randn(24, 12, generator=g, dtype=torch.float64)  # overlapping keys
    exact, forgetful = run(K, 1e9), run(K, 0.0)
    assert exact[-1].drift < 1e-6 and forgetful[-1].drift > 0.1
    assert exact[0].bound < exact[-1].bound  # more facts in the same key space cost more

    twin = torch.cat([K[:, :3], K[:, 1:2] * 2.0], dim=1)  # key 3 is key 1, longer
    assert bench.closest_pairs(twin, 1)[0][1:] == (1, 3)
    assert bench.closest_pairs(twin, 1)[0][0] == pytest.approx(1.0)
    rec = lambda s, p: SimpleNamespace(fact=Fact(s, p, "x"))  # noqa: E731
    kept = bench.distinct_facts([rec("Paris", "{} is in"), rec("Rome", "{} is in"), rec("Paris", "{} is in")])
    assert [f.subject for f in kept] == ["Paris", "Rome"]
