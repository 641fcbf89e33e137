"""Keys of remembered facts: computed once per commit and layer, reused while they cannot change.

A commit that remembers the session's earlier commits needs their keys at each edit layer ℓ
(``solver.solve``'s memory term). The key is the input of ℓ's MLP output projection, so it
depends on every block below ℓ and on ℓ's attention and MLP input side — never on the projection
ℓ itself, the only tensor of that block kedit edits. So as long as no edited projection *below*
ℓ changed, an earlier commit's keys at ℓ are what they were when they were computed.

``RememberedKeys`` keeps, per (layer, commit's facts), the keys and a stamp of the projections
below the layer (each weight's identity and in-place version counter: every write kedit makes
is an in-place ``copy_``, which bumps it). A stale stamp means "recompute". Keys are always
computed for one commit's facts at a time, in the same call the commit itself made for its own
keys, so a cached key, a key seeded from the commit and a recomputed one are the same bits:
a session that was reopened (empty cache) and a replay that ran through (full cache) agree.

Single-layer sessions therefore compute each fact's key once, at its own commit; multi-layer
MEMIT recomputes only the layers above a projection that changed.
"""

from __future__ import annotations

import torch

from kedit.editing import arch
from kedit.editing.keys import compute_keys
from kedit.editing.placement import written_weight
from kedit.facts import Fact

Group = tuple[Fact, ...]  # the facts of one commit, in the commit's order


class RememberedKeys:
    def __init__(self, model, tok, prefixes: tuple[str, ...]) -> None:
        self.model, self.tok, self.prefixes = model, tok, prefixes
        self._cache: dict[tuple[int, Group], tuple[tuple, torch.Tensor]] = {}
        self.computed = 0  # facts whose keys were computed here (not found in the cache)

    def stamp(self, layer: int) -> tuple:
        """What the keys at ``layer`` depend on among the tensors kedit writes. An offloaded
        projection that was never loaded stamps as None (reading it would pull it into memory)."""
        ws = [written_weight(arch.mlp_out_module(self.model, j)) for j in range(layer)]
        return tuple(None if w is None else (id(w), w._version) for w in ws)

    def seed(self, layer: int, group: Group, keys: torch.Tensor, stamp: tuple) -> None:
        """Keys a commit computed for its own facts (``compute_keys(group, [layer])`` under ``stamp``)."""
        self._cache[(layer, tuple(group))] = (stamp, keys)

    def keys(self, layer: int, groups: list[Group], leave_out: set[tuple[str, str]] = frozenset()) -> torch.Tensor | None:
        """(d_in, P) keys of the groups' facts at ``layer``, in order, without the facts whose
        (subject, prompt) is in ``leave_out``; None when no fact is left."""
        stamp = self.stamp(layer)
        wanted = {(layer, tuple(g)) for g in groups}
        self._cache = {k: v for k, v in self._cache.items() if k[0] != layer or k in wanted}  # forget undone commits
        cols = []
        for g in groups:
            g = tuple(g)
            keep = [i for i, f in enumerate(g) if (f.subject, f.prompt) not in leave_out]
            if not keep:
                continue
            got = self._cache.get((layer, g))
            if got is None or got[0] != stamp:
                got = (stamp, compute_keys(self.model, self.tok, list(g), [layer], self.prefixes)[layer])  # (d_in, E_g)
                self._cache[(layer, g)] = got
                self.computed += len(g)
            K = got[1]
            cols.append(K if len(keep) == len(g) else K[:, keep])
        return torch.cat(cols, dim=1) if cols else None
