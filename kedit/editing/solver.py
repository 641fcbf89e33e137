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

Lifelong options (``HParams`` fields; all off by default, so earlier records solve as before):

* Norm penalty ν (ENCORE): ν‖Δ‖²_F joins the objective, i.e. C0 becomes C0 + ν·I
  (``factor_c0(c0, ridge=ν)``). ENCORE's C = 15000·C0 + 20·I is MEMIT λ = 15000 with ν = 20/15000.
* Null-space projection (AlphaEdit): P = UUᵀ, U the eigenvectors of C0 whose eigenvalue is below
  a threshold (``null_space``). C0 leaves the solve; with the earlier keys Kp (weight α) and
  AlphaEdit's ridge L2 (= ν here) the update is

      MEMIT (least squares)   Δ = R Kᵀ P ((KKᵀ + αKpKpᵀ) P + L2·I)⁻¹     (AlphaEdit, eq. 9)
      EMMET/ROME (equality)   Δ = R (KᵀZK)⁻¹ KᵀZ,   ŴK = V exactly

  with Z = P (αKpKpᵀP + L2·I)⁻¹ (symmetric). Both are the routine below with Z in place of C⁻¹:
  Δ = R (μI + KᵀZK)⁻¹ KᵀZ, μ = 1 for the least-squares form (push-through identity) and μ = 0
  for the equality-constrained one. Every row of Δ lies in P's range, so ΔK0 = 0 for keys K0 in
  C0's principal subspace: what the model computes on ordinary text does not move. ZK is applied
  by Woodbury in O(d_in²(E+P) + P³):

      Z K = P (K − α Kp (L2·I + α KpᵀPKp)⁻¹ KpᵀPK) / L2
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


@dataclass(frozen=True)
class Projector:
    """AlphaEdit's null-space projector P = U Uᵀ of one layer (float64)."""

    U: torch.Tensor  # (d_in, r) orthonormal eigenvectors of C0 with eigenvalue < threshold
    threshold: float

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """P X for X (d_in, n)."""
        return self.U @ (self.U.T @ X)


def null_space(c0: torch.Tensor, threshold: float) -> Projector:
    """Eigenvectors of the (uncentred) C0 whose eigenvalue is below ``threshold`` (AlphaEdit: 2e-2)."""
    c0 = c0.double()
    ev, vecs = torch.linalg.eigh(0.5 * (c0 + c0.T))  # ascending
    U = vecs[:, ev < threshold].contiguous()  # (d_in, r)
    if U.shape[1] == 0:
        raise SingularSolveError(
            f"no direction of the key statistics has an eigenvalue below {threshold:g}: the null-space projection "
            f"would forbid every update (smallest eigenvalue {float(ev[0]):.3g})",
            hint="raise the null_space threshold, or set it to 0 to turn the projection off",
        )
    return Projector(U=U, threshold=threshold)


def factor_c0(c0: torch.Tensor, ridge: float = 0.0) -> Factor:
    """Cholesky of C0 + ridge·I in float64 (``ridge``: the norm penalty ν), adding the smallest
    relative jitter that makes it succeed."""
    c0 = c0.double()
    d = c0.shape[0]
    assert c0.shape == (d, d), f"C0 must be square, got {tuple(c0.shape)}"
    if ridge:
        c0 = c0 + ridge * torch.eye(d, dtype=c0.dtype, device=c0.device)
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
    projector: Projector | None = None,  # AlphaEdit: Z = P(αKpKpᵀP + l2·I)⁻¹ replaces C⁻¹
    l2: float = 0.0,  # AlphaEdit's ridge (with ``projector``)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (U, V), float64, with Δ = U Vᵀ. ``lam`` = 0 is EMMET/ROME, > 0 is MEMIT; with a
    ``projector``, ``lam`` is μ of the module docstring (1: AlphaEdit's least squares, 0: equality)."""
    d_in, E = K.shape
    assert R.shape[1] == E, f"R {tuple(R.shape)} and K {tuple(K.shape)} disagree on E"
    assert factor.L.shape == (d_in, d_in), f"C0 factor {tuple(factor.L.shape)} vs d_in {d_in}"
    K = K.double().to(factor.L.device)
    R = R.double().to(factor.L.device)
    if not (torch.isfinite(K).all() and torch.isfinite(R).all()):
        raise SingularSolveError("keys or values are not finite; the model was left untouched")

    Kp = None
    if memory is not None and memory.shape[1] > 0 and alpha > 0:
        assert memory.shape[0] == d_in, f"memory keys {tuple(memory.shape)} vs d_in {d_in}"
        Kp = memory.double().to(factor.L.device)  # (d_in, P)
    if projector is not None:
        A = _projected(K, Kp, alpha, projector, l2)  # (d_in, E)  ZK
    else:
        A = _preserved(K, Kp, alpha, factor)  # (d_in, E)  C⁻¹K
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


def _preserved(K: torch.Tensor, Kp: torch.Tensor | None, alpha: float, factor: Factor) -> torch.Tensor:
    """C⁻¹K with C = C0 + α·KpKpᵀ (Woodbury on C0's factor)."""
    A = torch.cholesky_solve(K, factor.L)  # (d_in, E)  C0⁻¹K
    if Kp is None:
        return A
    B = torch.cholesky_solve(Kp, factor.L)  # (d_in, P)  C0⁻¹Kp
    S = Kp.T @ B  # (P, P)
    S = 0.5 * (S + S.T) + torch.eye(S.shape[0], dtype=S.dtype, device=S.device) / alpha
    Ls, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        raise SingularSolveError("the memory of earlier edits made the solve singular; the model was left untouched")
    return A - B @ torch.cholesky_solve(B.T @ K, Ls)  # (d_in, E)  C⁻¹K


def _projected(K: torch.Tensor, Kp: torch.Tensor | None, alpha: float, proj: Projector, l2: float) -> torch.Tensor:
    """Z K with Z = P(α·KpKpᵀP + l2·I)⁻¹ (AlphaEdit), by Woodbury."""
    if not l2 > 0:
        raise SingularSolveError("the null-space projection needs a positive norm penalty (AlphaEdit's L2)")
    U = proj.U.to(K.device)
    PK = U @ (U.T @ K)  # (d_in, E)
    if Kp is None:
        return PK / l2
    PKp = U @ (U.T @ Kp)  # (d_in, P)
    S = alpha * (Kp.T @ PKp)  # (P, P)  α KpᵀPKp
    S = 0.5 * (S + S.T) + l2 * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    Ls, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        raise SingularSolveError("the memory of earlier edits made the solve singular; the model was left untouched")
    return (PK - alpha * PKp @ torch.cholesky_solve(PKp.T @ K, Ls)) / l2  # (d_in, E)


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
