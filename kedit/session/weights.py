"""The live weights of a session: applying commits in order and taking them back exactly.

``LiveWeights`` keeps a copy of the *base* tensor of every projection a commit has touched.
Undoing the last commit restores those base tensors and re-applies the remaining commits'
deltas in order, so the weights are bit-identical to never having made the undone commit
(``apply_deltas`` is the one deterministic way kedit writes a weight). ``base()`` lends the base
tensors for a moment (C0 statistics, "what did the model say before" queries).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from kedit.editing import arch
from kedit.editing.delta import Delta, apply_deltas, fingerprint
from kedit.errors import UsageError


class LiveWeights:
    def __init__(self, model, frozen: dict[int, str] | None = None) -> None:
        """``frozen``: digests of the projections a quantised load holds packed (``quant.base_layer_digests``);
        they are never edited and count with their full-precision digests in every fingerprint."""
        self.model = model
        self.frozen = dict(frozen or {})
        self._base: dict[int, torch.Tensor] = {}  # layer -> untouched weight (own layout/dtype/device)
        self._applied: list[tuple[Delta, ...]] = []  # one tuple per active commit, in order

    @property
    def touched_layers(self) -> list[int]:
        return sorted(self._base)

    @property
    def depth(self) -> int:
        return len(self._applied)

    def fingerprint(self) -> str:
        """Digest of every editable projection (what journal entries record)."""
        return fingerprint(self.model, list(range(arch.num_layers(self.model))), self.frozen)

    @torch.no_grad()
    def apply(self, deltas: list[Delta] | tuple[Delta, ...]) -> None:
        """Apply one commit's deltas (all or nothing) on top of the current weights."""
        quantised = sorted({d.layer for d in deltas} & set(self.frozen))
        if quantised:
            raise UsageError(f"layer(s) {quantised} are loaded quantised here and cannot take a delta",
                             hint="load the model in full precision (--load none), or keep those layers in full precision")
        new_layers = [d.layer for d in deltas if d.layer not in self._base]
        saved = {l: arch.weight_param(self.model, l).detach().clone() for l in new_layers}
        apply_deltas(self.model, list(deltas))  # checks every new weight before writing any
        self._base.update(saved)
        self._applied.append(tuple(deltas))

    @torch.no_grad()
    def pop(self) -> tuple[Delta, ...]:
        """Take back the last commit: base tensors of its layers, then the earlier commits again."""
        if not self._applied:
            raise IndexError("no applied commit to take back")
        last = self._applied.pop()
        layers = {d.layer for d in last}
        for l in layers:
            arch.weight_param(self.model, l).copy_(self._base[l])
        for deltas in self._applied:
            again = [d for d in deltas if d.layer in layers]
            if again:
                apply_deltas(self.model, again)
        return last

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the base weights (every commit taken back)."""
        for l, w in self._base.items():
            arch.weight_param(self.model, l).copy_(w)
        self._applied.clear()

    @contextmanager
    def base(self) -> Iterator[None]:
        """Temporarily the base weights; the edited tensors are put back exactly afterwards."""
        if not self._base:
            yield
            return
        with torch.no_grad():
            current = {l: arch.weight_param(self.model, l).detach().clone() for l in self._base}
            for l, w in self._base.items():
                arch.weight_param(self.model, l).copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for l, w in current.items():
                    arch.weight_param(self.model, l).copy_(w)
