"""Deltas: the low-rank weight change of one layer, and the one way kedit applies it.

A ``Delta`` holds Δ = U Vᵀ as float32 factors (U: d_out×E, V: d_in×E). Applying it is always

    W ← cast(float32(W) + U Vᵀ)      (in W's own layout and dtype)

and nothing else, so a session, a replay from stored deltas and a recomputed replay all produce
bit-identical tensors on the same device and dtype.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from kedit.editing import arch
from kedit.errors import SingularSolveError


@dataclass(frozen=True)
class Delta:
    layer: int
    module: str  # e.g. "model.layers.4.mlp.down_proj"
    U: torch.Tensor  # (d_out, E) float32
    V: torch.Tensor  # (d_in, E) float32

    def __post_init__(self) -> None:
        assert self.U.dim() == 2 and self.V.dim() == 2, f"U {tuple(self.U.shape)} V {tuple(self.V.shape)}"
        assert self.U.shape[1] == self.V.shape[1], f"rank mismatch: U {tuple(self.U.shape)} V {tuple(self.V.shape)}"

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def dense(self) -> torch.Tensor:
        """Δ as (d_out, d_in) float32."""
        return self.U @ self.V.T

    def norm(self) -> float:
        return float(self.dense().norm())


def updated_weight(model, delta: Delta) -> torch.Tensor:
    """The new stored weight (own layout, own dtype) without touching the model."""
    w = arch.weight_param(model, delta.layer)
    U = delta.U.to(device=w.device, dtype=torch.float32)
    V = delta.V.to(device=w.device, dtype=torch.float32)
    d_out, d_in = arch.dims(model, delta.layer)
    assert U.shape[0] == d_out and V.shape[0] == d_in, (
        f"delta for {delta.module} has U {tuple(U.shape)}, V {tuple(V.shape)}; weight is ({d_out}, {d_in})"
    )
    dense = U @ V.T  # (d_out, d_in)
    if arch.arch_of(model).transposed:
        dense = dense.T  # (d_in, d_out)
    new = (w.detach().float() + dense).to(w.dtype)
    if not torch.isfinite(new).all():
        raise SingularSolveError(f"the update of {delta.module} is not finite; the model was left untouched")
    return new


@torch.no_grad()
def apply_deltas(model, deltas: list[Delta]) -> None:
    """Apply every delta in place; all new weights are computed (and checked) before any write."""
    news = [(arch.weight_param(model, d.layer), updated_weight(model, d)) for d in deltas]
    for w, new in news:
        w.copy_(new)


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (dtype-exact; bf16 is hashed through its int16 view)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h = hashlib.sha256()
    h.update(str(tuple(t.shape)).encode())
    h.update(str(t.dtype).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def fingerprint(model, layers: list[int], known: dict[int, str] | None = None) -> str:
    """One digest over the editable projections of ``layers`` (order-independent of the list).
    ``known`` gives the digest of layers whose tensor the model does not hold as such (quantised)."""
    known = known or {}
    h = hashlib.sha256()
    for l in sorted(set(layers)):
        h.update(f"{l}:".encode())
        h.update((known[l] if l in known else tensor_digest(arch.read_weight(model, l))).encode())
    return h.hexdigest()[:32]
