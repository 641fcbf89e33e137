"""The closed-form solver against the published definitions, in float64 with numbers."""

import pytest
import torch

from kedit.editing import solver
from kedit.errors import SingularSolveError


def _problem(d_in=48, d_out=24, E=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * d_in, d_in, generator=g, dtype=torch.float64)
    C0 = X.T @ X / X.shape[0] + 0.01 * torch.eye(d_in, dtype=torch.float64)  # (d_in, d_in) SPD
    K = torch.randn(d_in, E, generator=g, dtype=torch.float64)  # (d_in, E)
    W0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)  # (d_out, d_in)
    V = torch.randn(d_out, E, generator=g, dtype=torch.float64)  # (d_out, E)
    return C0, K, W0, V


def test_emmet_satisfies_every_constraint():
    C0, K, W0, V = _problem(E=8)
    U, Vf = solver.solve(K, V - W0 @ K, solver.factor_c0(C0), lam=0.0)
    W = W0 + U @ Vf.T  # (d_out, d_in)
    rel = ((W @ K - V).norm(dim=0) / V.norm(dim=0)).max()
    assert rel < 1e-4, f"max relative error of Ŵk_i = v_i is {rel:.2e}"
    assert U.shape == (24, 8) and Vf.shape == (48, 8)


def test_emmet_is_the_minimum_preservation_change():
    """Among updates with ŴK = V, EMMET's has the smallest ‖Δ C0^½‖ (the PM objective)."""
    C0, K, W0, V = _problem(E=4)
    U, Vf = solver.solve(K, V - W0 @ K, solver.factor_c0(C0))
    delta = U @ Vf.T
    L = torch.linalg.cholesky(C0)
    base = float((delta @ L).norm())
    # Any other feasible update differs by N with N K = 0.
    g = torch.Generator().manual_seed(1)
    P = torch.eye(48, dtype=torch.float64) - K @ torch.linalg.pinv(K)  # projector onto K's complement
    for _ in range(5):
        N = torch.randn(24, 48, generator=g, dtype=torch.float64) @ P
        assert float(((delta + 0.1 * N) @ L).norm()) > base


def test_rome_equals_emmet_with_one_fact():
    C0, K, W0, V = _problem(E=1)
    k, r = K[:, 0], (V - W0 @ K)[:, 0]
    c_inv_k = torch.linalg.solve(C0, k)
    rome = torch.outer(r, c_inv_k) / (k @ c_inv_k)  # r (C0⁻¹k)ᵀ / (kᵀC0⁻¹k)
    U, Vf = solver.solve(K, V - W0 @ K, solver.factor_c0(C0))
    torch.testing.assert_close(U @ Vf.T, rome, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lam", [0.5, 15_000.0])
def test_memit_equals_direct_formula(lam):
    C0, K, W0, V = _problem(E=10)
    R = V - W0 @ K
    direct = R @ K.T @ torch.linalg.inv(lam * C0 + K @ K.T)  # R Kᵀ (λC0 + KKᵀ)⁻¹
    U, Vf = solver.solve(K, R, solver.factor_c0(C0), lam=lam)
    torch.testing.assert_close(U @ Vf.T, direct, rtol=1e-8, atol=1e-10)
    assert U.shape[1] == 10, "Δ is stored with rank E factors"


def test_shared_keys_are_reported_by_name():
    C0, K, W0, V = _problem(E=3)
    K[:, 2] = K[:, 0]
    with pytest.raises(SingularSolveError) as err:
        solver.solve(K, V - W0 @ K, solver.factor_c0(C0), names=["a → x", "b → y", "a → z"])
    assert "'a → x'" in str(err.value) and "'a → z'" in str(err.value)
    # The ridge of MEMIT makes the same batch solvable.
    U, Vf = solver.solve(K, V - W0 @ K, solver.factor_c0(C0), lam=1.0)
    assert torch.isfinite(U).all()


def test_non_finite_inputs_are_refused():
    C0, K, W0, V = _problem(E=2)
    R = V - W0 @ K
    R[0, 0] = float("nan")
    with pytest.raises(SingularSolveError, match="not finite"):
        solver.solve(K, R, solver.factor_c0(C0))


def test_factor_adds_ridge_only_when_needed():
    C0, *_ = _problem()
    assert solver.factor_c0(C0).jitter == 0.0
    low_rank = torch.ones(5, 5, dtype=torch.float64)  # rank 1: needs a ridge
    f = solver.factor_c0(low_rank)
    assert f.jitter > 0 and torch.isfinite(f.L).all()


@pytest.mark.parametrize("lam", [0.0, 50.0])
def test_memory_of_earlier_edits_is_the_augmented_preservation_term(lam):
    """With earlier keys Kp and weight α the solve is the plain one on C = C0 + α·KpKpᵀ (computed
    by Woodbury from C0's factor); EMMET still meets every constraint, and Δ moves the earlier keys'
    outputs less than without the memory."""
    C0, K, W0, V = _problem(E=5)
    g = torch.Generator().manual_seed(3)
    Kp = torch.randn(48, 12, generator=g, dtype=torch.float64)  # (d_in, P)
    R = V - W0 @ K
    alpha = 2.0
    U, Vf = solver.solve(K, R, solver.factor_c0(C0), lam=lam, memory=Kp, alpha=alpha)
    Ud, Vd = solver.solve(K, R, solver.factor_c0(C0 + alpha * Kp @ Kp.T), lam=lam)
    torch.testing.assert_close(U @ Vf.T, Ud @ Vd.T, rtol=1e-8, atol=1e-10)
    U0, V0 = solver.solve(K, R, solver.factor_c0(C0), lam=lam)
    moved = float((U @ Vf.T @ Kp).norm())
    moved_without = float((U0 @ V0.T @ Kp).norm())
    assert moved < 0.5 * moved_without, (moved, moved_without)
    if lam == 0:
        rel = (((W0 + U @ Vf.T) @ K - V).norm(dim=0) / V.norm(dim=0)).max()
        assert rel < 1e-8
    # no memory, or a zero weight, is the plain solve
    for mem, a in ((Kp[:, :0], alpha), (Kp, 0.0)):
        Uz, Vz = solver.solve(K, R, solver.factor_c0(C0), lam=lam, memory=mem, alpha=a)
        torch.testing.assert_close(Uz @ Vz.T, U0 @ V0.T)



def test_sequential_commits_with_an_exact_memory_are_the_joint_solve():
    """Commits that each keep every earlier key's output (α → ∞) add up to the one EMMET update
    that writes all facts at once: the least ‖ΔC0^½‖ of any update meeting every constraint, whose
    damage on C0 is tr(R (KᵀC0⁻¹K)⁻¹ Rᵀ). So a remembering session pays what writing all its facts
    together costs, and that cost grows as the keys fill the layer's input space."""
    C0, K, W0, V = _problem(E=12)
    R = V - W0 @ K  # (d_out, 12): what each fact needs written on the base weights
    fac = solver.factor_c0(C0)
    W = W0.clone()
    for start in (0, 4, 8):  # three commits of 4; each writes its facts' residual on the current W
        Kb = K[:, start : start + 4]
        U, Vf = solver.solve(Kb, V[:, start : start + 4] - W @ Kb, fac, memory=K[:, :start] if start else None,
                             alpha=1e9)
        W = W + U @ Vf.T
    Uj, Vj = solver.solve(K, R, fac)
    torch.testing.assert_close(W - W0, Uj @ Vj.T, rtol=1e-6, atol=1e-6)
    damage = float(torch.trace((W - W0) @ C0 @ (W - W0).T))
    bound = float(torch.trace(R @ torch.linalg.inv(K.T @ torch.linalg.solve(C0, K)) @ R.T))
    assert damage == pytest.approx(bound, rel=1e-6)

# -- lifelong options ---------------------------------------------------------------------------


def _spectral_problem(d_in=40, d_out=16, E=5, big=8, seed=0):
    """C0 with `big` large eigenvalues (1..2) and the rest small (1e-4..1e-3): a clear null space."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    ev = torch.cat([1 + torch.rand(big, generator=g, dtype=torch.float64),
                    1e-4 + 9e-4 * torch.rand(d_in - big, generator=g, dtype=torch.float64)])
    C0 = Q @ torch.diag(ev) @ Q.T  # (d_in, d_in)
    K = torch.randn(d_in, E, generator=g, dtype=torch.float64)  # (d_in, E)
    Kp = torch.randn(d_in, 7, generator=g, dtype=torch.float64)  # (d_in, P) earlier edits' keys
    R = torch.randn(d_out, E, generator=g, dtype=torch.float64)  # (d_out, E)
    return C0, K, Kp, R, Q[:, :big]


@pytest.mark.parametrize("memory", [False, True])
def test_alphaedit_least_squares_is_the_published_update(memory):
    """MEMIT with the projection is AlphaEdit's Δ = R Kᵀ P ((KKᵀ + αKpKpᵀ) P + L2·I)⁻¹, which its
    code computes as the transpose of solve(P(KKᵀ + KpKpᵀ) + L2·I, P K Rᵀ)."""
    C0, K, Kp, R, _ = _spectral_problem()
    alpha, l2, thr = (1.0 if memory else 0.0), 10.0, 1e-2
    proj = solver.null_space(C0, thr)
    P = proj.U @ proj.U.T  # (d_in, d_in)
    A = K @ K.T + (alpha * Kp @ Kp.T if memory else 0)
    I = torch.eye(40, dtype=torch.float64)
    paper = R @ K.T @ P @ torch.linalg.inv(A @ P + l2 * I)
    code = torch.linalg.solve(P @ A + l2 * I, P @ K @ R.T).T
    U, V = solver.solve(K, R, solver.factor_c0(C0), lam=1.0, memory=Kp if memory else None, alpha=alpha,
                        projector=proj, l2=l2)
    torch.testing.assert_close(U @ V.T, paper, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(paper, code, rtol=1e-8, atol=1e-12)
    # P holds exactly the eigenvectors of C0 below the threshold
    ev = torch.linalg.eigvalsh(C0)
    assert proj.U.shape[1] == int((ev < thr).sum()) == 32
    torch.testing.assert_close(P @ P, P)


def test_projected_update_keeps_preserved_keys_and_meets_the_edit():
    """EMMET with the projection: ŴK = V exactly, and keys in C0's principal subspace (what the
    statistics' text produces) give the same output as before: ‖Δ·K0‖ ≈ 0."""
    C0, K, Kp, R, principal = _spectral_problem()
    proj = solver.null_space(C0, 1e-2)
    U, V = solver.solve(K, R, solver.factor_c0(C0), lam=0.0, memory=Kp, alpha=1.0, projector=proj, l2=10.0)
    delta = U @ V.T  # (d_out, d_in)
    torch.testing.assert_close(delta @ K, R, rtol=1e-8, atol=1e-10)
    g = torch.Generator().manual_seed(5)
    K0 = principal @ torch.randn(8, 50, generator=g, dtype=torch.float64)  # (d_in, 50) keys the corpus produces
    assert float((delta @ K0).norm()) < 1e-10 * float(delta.norm() * K0.norm())
    # keys drawn from C0 itself: E‖Δk‖² = tr(Δ C0 Δᵀ) ≤ threshold·‖Δ‖²_F with the projection
    assert float(torch.trace(delta @ C0 @ delta.T)) <= 1e-2 * float(delta.norm()) ** 2
    # without it the principal keys move (plain EMMET only minimises their mean change)
    U0, V0 = solver.solve(K, R, solver.factor_c0(C0), lam=0.0)
    plain = U0 @ V0.T
    assert float((plain @ K0).norm()) > 1e-6 * float(plain.norm() * K0.norm())


def test_null_space_with_nothing_below_the_threshold_is_refused():
    C0, *_ = _spectral_problem()
    with pytest.raises(SingularSolveError, match="eigenvalue below"):
        solver.null_space(C0, 1e-6)


@pytest.mark.parametrize("lam", [0.0, 50.0])
def test_norm_penalty_is_a_ridge_on_c0_and_shrinks_the_update(lam):
    """ENCORE: ν‖Δ‖²_F in the objective makes C0 → C0 + ν·I. MEMIT then equals
    R Kᵀ (λ(C0 + νI) + KKᵀ)⁻¹; EMMET still meets every constraint; ‖Δ‖_F falls as ν grows."""
    C0, K, W0, V = _problem(E=6)
    R = V - W0 @ K
    I = torch.eye(48, dtype=torch.float64)
    norms = []
    for nu in (0.0, 0.05, 0.5, 5.0):
        U, Vf = solver.solve(K, R, solver.factor_c0(C0, ridge=nu), lam=lam)
        delta = U @ Vf.T
        if lam:
            torch.testing.assert_close(delta, R @ K.T @ torch.linalg.inv(lam * (C0 + nu * I) + K @ K.T),
                                       rtol=1e-8, atol=1e-10)
        else:
            torch.testing.assert_close(delta @ K, R, rtol=1e-8, atol=1e-9)
        norms.append(float(delta.norm()))
    assert all(a > b for a, b in zip(norms, norms[1:])), norms


def test_norm_anchored_values():
    """NAS: v* = v0 + δ is rescaled to the anchor norm; a v* over twice the anchor is skipped (δ' = 0)."""
    from kedit.editing.edit import anchor_values

    g = torch.Generator().manual_seed(0)
    v0 = torch.randn(4, 16, generator=g)  # (E, d)
    delta = torch.randn(4, 16, generator=g)
    delta[3] *= 100  # far too large
    out, skipped = anchor_values(v0, delta, norm=5.0)
    assert skipped == (False, False, False, True)
    torch.testing.assert_close((v0 + out)[:3].norm(dim=-1), torch.full((3,), 5.0))
    cos = torch.nn.functional.cosine_similarity(v0 + out, v0 + delta, dim=-1)[:3]
    torch.testing.assert_close(cos, torch.ones(3))  # same direction
    assert torch.equal(out[3], torch.zeros(16))


def test_lifelong_fields_default_off_for_old_records():
    from kedit.editing import HParams
    from kedit.errors import UsageError

    old = {"method": "emmet", "layers": [1], "lam": 0.0, "values": {"lr": 0.5}, "n_prefixes": 5, "prefix_len": 10,
           "stats_tokens": 1000, "stats_seq_len": 64, "preserve": 1.0}
    hp = HParams.from_dict(old)
    assert (hp.norm_penalty, hp.null_space, hp.value_norm, hp.remember_by_commit) == (0.0, 0.0, 0.0, False)
    assert (hp.values.min_prob, hp.values.margin, hp.values.patience, hp.values.step_norm) == (0.0, 0.0, 1, 0.0)
    with pytest.raises(UsageError, match="norm_penalty"):
        HParams(method="memit", layers=(1,), lam=1.0, null_space=2e-2)


def test_settings_reach_the_value_optimisation_and_bad_ones_are_named():
    from kedit.editing import preset
    from kedit.editing.hparams import with_settings
    from kedit.errors import UsageError

    hp = with_settings(preset("default"), ["values.step_norm=0.1", "norm_penalty=0.01"])
    assert (hp.values.step_norm, hp.norm_penalty) == (0.1, 0.01)
    with pytest.raises(UsageError, match=r"values\.step_norm must be ≥ 0"):
        with_settings(hp, ["values.step_norm=-1"])
    with pytest.raises(UsageError, match="unknown setting 'values.stepnorm'"):
        with_settings(hp, ["values.stepnorm=1"])


def test_normalised_value_steps_are_the_default_models_alone():
    from kedit.editing import preset

    assert preset("default").values.step_norm == 0.1 == preset("HuggingFaceTB/SmolLM2-135M", "rome").values.step_norm
    # measured on the default model only: other models keep Adam's steps
    assert preset("some-org/unknown-7b", num_layers=32).values.step_norm == 0.0
    assert preset("meta-llama/Meta-Llama-3-8B").values.step_norm == 0.0


def test_the_default_models_memit_is_its_emmet_spread_over_layers_1_to_3_with_a_small_ridge():
    """The default model's MEMIT preset is the long-session setting measured in docs/results.md:
    EMMET's value steps and memory, layers 1–3, each layer's share written exactly, and a small ridge
    on each layer's C0 (norm_penalty 0.001). Models without a preset keep MEMIT as published (a
    ridge on C0), as before."""
    import dataclasses

    from kedit.editing import preset

    emmet, memit = preset("default", "emmet"), preset("default", "memit")
    assert (memit.method, memit.layers, memit.lam, memit.norm_penalty) == ("memit", (1, 2, 3), 0.0, 1e-3)
    assert dataclasses.replace(memit, method="emmet", layers=emmet.layers, norm_penalty=0.0) == emmet
    other = preset("some-org/unknown-7b", "memit", num_layers=32)
    assert (other.layers, other.lam, other.values.step_norm) == ((3, 4, 5), 15_000.0, 0.0)
    assert (other.preserve, other.remember_by_commit) == (0.0, False)  # as before: no memory term
