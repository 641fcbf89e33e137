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
