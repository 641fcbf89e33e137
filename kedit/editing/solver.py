"""One closed-form solver for ROME, EMMET and MEMIT (docs/design.md §2).

With keys K (d_in, E), residuals R = V − W0K (d_out, E) and the key second moment C0 (d_in, d_in):

    MEMIT   Δ = R Kᵀ (λC0 + KKᵀ)⁻¹ = R (λI + KᵀC0⁻¹K)⁻¹ KᵀC0⁻¹      (push-through identity)
    EMMET   Δ = R (KᵀC0⁻¹K)⁻¹ KᵀC0⁻¹                                  (λ = 0: ŴK = V exactly)
    ROME    EMMET with E = 1: Δ = r (C0⁻¹k)ᵀ / (kᵀC0⁻¹k)

C0 is factored once per layer (Cholesky, float64); a batch then costs O(d_in²E + E³). Δ has
rank ≤ E and is returned as factors: Δ = U Vᵀ with U (d_out, E) and V (d_in, E).

Sequential editing: the keys Kp (d_in, P) of earlier edits can join the preservation term,
C = C0 + α·KpKpᵀ, so a new batch also keeps what W now says at those keys (the memory idea of
AlphaEdit, Fang et al. 2025). C⁻¹ is applied through the cached factor of C0 by Woodbury:

    C⁻¹K = C0⁻¹K − B (I/α + KpᵀB)⁻¹ BᵀK,    B = C0⁻¹Kp                 O(d_in²P + P³)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kedit.errors import SingularSolveError


@dataclass(frozen=True)
class Factor:
    """Cholesky factor of C0 for one layer: C0 = L Lᵀ (float64)."""

    L: torch.Tensor  # (d_in, d_in) lower-triangular
    jitter: float  # relative ridge that was needed for positive-definiteness (0 normally)


def factor_c0(c0: torch.Tensor) -> Factor:
    """Cholesky of C0 in float64, adding the smallest relative ridge that makes it succeed."""
    c0 = c0.double()
    d = c0.shape[0]
    assert c0.shape == (d, d), f"C0 must be square, got {tuple(c0.shape)}"
    scale = float(c0.diagonal().mean())
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        L, info = torch.linalg.cholesky_ex(c0 + jitter * scale * torch.eye(d, dtype=c0.dtype, device=c0.device))
        if int(info) == 0:
            return Factor(L=L, jitter=jitter)
    raise SingularSolveError("the key covariance C0 is not positive definite, even with a ridge")


def solve(
    K: torch.Tensor,  # (d_in, E)
    R: torch.Tensor,  # (d_out, E)
    factor: Factor,
    lam: float = 0.0,
    names: list[str] | None = None,
    memory: torch.Tensor | None = None,  # (d_in, P) keys of earlier edits to preserve
    alpha: float = 0.0,  # their weight: C = C0 + alpha·KpKpᵀ
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (U, V), float64, with Δ = U Vᵀ. ``lam`` = 0 is EMMET/ROME, > 0 is MEMIT."""
    d_in, E = K.shape
    assert R.shape[1] == E, f"R {tuple(R.shape)} and K {tuple(K.shape)} disagree on E"
    assert factor.L.shape == (d_in, d_in), f"C0 factor {tuple(factor.L.shape)} vs d_in {d_in}"
    K = K.double().to(factor.L.device)
    R = R.double().to(factor.L.device)
    if not (torch.isfinite(K).all() and torch.isfinite(R).all()):
        raise SingularSolveError("keys or values are not finite; the model was left untouched")

    A = torch.cholesky_solve(K, factor.L)  # (d_in, E)  C0⁻¹K
    if memory is not None and memory.shape[1] > 0 and alpha > 0:
        assert memory.shape[0] == d_in, f"memory keys {tuple(memory.shape)} vs d_in {d_in}"
        Kp = memory.double().to(factor.L.device)  # (d_in, P)
        B = torch.cholesky_solve(Kp, factor.L)  # (d_in, P)  C0⁻¹Kp
        S = Kp.T @ B  # (P, P)
        S = 0.5 * (S + S.T) + torch.eye(S.shape[0], dtype=S.dtype, device=S.device) / alpha
        Ls, info = torch.linalg.cholesky_ex(S)
        if int(info) != 0:
            raise SingularSolveError("the memory of earlier edits made the solve singular; the model was left untouched")
        A = A - B @ torch.cholesky_solve(B.T @ K, Ls)  # (d_in, E)  C⁻¹K
    D = K.T @ A  # (E, E)  KᵀC0⁻¹K, symmetric PSD
    D = 0.5 * (D + D.T)
    M = D + lam * torch.eye(E, dtype=D.dtype, device=D.device)  # (E, E)
    Lm, info = torch.linalg.cholesky_ex(M)
    cond = _condition(M)
    if int(info) != 0 or cond > 1e12:
        raise SingularSolveError(_singular_message(K, factor, cond, names), hint=_HINT)
    U = torch.cholesky_solve(R.T, Lm).T  # (d_out, E)  R M⁻¹
    if not (torch.isfinite(U).all() and torch.isfinite(A).all()):
        raise SingularSolveError("the solve produced non-finite values; the model was left untouched")
    return U, A


_HINT = "split the conflicting facts into separate batches, or use --method memit (a ridge term)"


def _condition(M: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(M)
    lo = float(ev.min())
    return float("inf") if lo <= 0 else float(ev.max()) / lo


def _singular_message(K: torch.Tensor, factor: Factor, cond: float, names: list[str] | None) -> str:
    """Name the facts whose keys coincide (the usual cause), in the C0-whitened metric."""
    W = torch.linalg.solve_triangular(factor.L, K, upper=False)  # (d_in, E)  whitened keys
    W = W / W.norm(dim=0, keepdim=True).clamp_min(1e-30)
    cos = W.T @ W  # (E, E)
    E = K.shape[1]
    pairs = [(i, j) for i in range(E) for j in range(i + 1, E) if float(cos[i, j]) > 1 - 1e-6]
    label = (lambda i: repr(names[i])) if names else (lambda i: f"#{i}")
    if pairs:
        i, j = pairs[0]
        more = f" (and {len(pairs) - 1} more pairs)" if len(pairs) > 1 else ""
        return f"facts {label(i)} and {label(j)} have the same key (same subject and prompt){more}; the model was left untouched"
    return (
        f"the batch's key system is singular (condition number {cond:.3g}, E={E}, d_in={K.shape[0]}); "
        "the model was left untouched"
    )
