"""Keys of remembered facts: computed once per commit and layer, reused while they cannot change.

A commit that remembers the session's earlier commits needs their keys at each edit layer ℓ
(``solver.solve``'s memory term). The key is the input of ℓ's MLP output projection, so it
depends on every block below ℓ and on ℓ's attention and MLP input side — never on the projection
ℓ itself, the only tensor of that block kedit edits. So as long as no edited projection *below*
ℓ changed, an earlier commit's keys at ℓ are what they were when they were computed.

``RememberedKeys`` keeps, per (layer, commit's facts), the keys and a stamp of the projections
below the layer (each weight's identity and in-place version counter: every write kedit makes
is an in-place ``copy_``, which bumps it). A stale stamp means "recompute". Keys are always
computed for one commit's facts at a time, in the same chunks of rows the commit itself used for
its own keys, so a cached key, a key seeded from the commit and a recomputed one are the same
bits: a session that was reopened (empty cache) and a replay that ran through (full cache) agree.

Single-layer sessions therefore compute each fact's key once, at its own commit. Multi-layer
MEMIT recomputes the layers above a projection that changed, and not from the embeddings: the
output of the block below the lowest edited layer never changes, and the output of the block
below layer ℓ does not change when ℓ is written, so both are kept (``_Rows``) and the next pass
starts there — for layers 1..3 two blocks per layer instead of three and four.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kedit.editing import arch
from kedit.editing.keys import Chunk, Outputs, chunks_of, read_keys
from kedit.editing.placement import written_weight
from kedit.facts import Fact

Group = tuple[Fact, ...]  # the facts of one commit, in the commit's order

KEEP_BUDGET_BYTES = 4 * 2**30  # block outputs kept for restarts (host memory); beyond it, passes start at the embeddings


@dataclass
class _Rows:
    """One commit's rows and the block outputs kept for them: block -> (stamp, outputs)."""

    chunks: list[Chunk]
    outputs: dict[int, tuple[tuple, Outputs]] = field(default_factory=dict)


class RememberedKeys:
    def __init__(self, model, tok, prefixes: tuple[str, ...], base: int = 0,
                 budget: int = KEEP_BUDGET_BYTES) -> None:
        """``base``: the lowest layer the session edits (the output of the block below it is kept)."""
        self.model, self.tok, self.prefixes, self.base, self.budget = model, tok, prefixes, base, budget
        self._cache: dict[tuple[int, Group], tuple[tuple, torch.Tensor]] = {}
        self._rows: dict[Group, _Rows] = {}
        self.computed = 0  # facts whose keys were computed here (not found in the cache)
        self.blocks_run = 0  # blocks run for them, per fact (from the embeddings: layer + 1)

    def limit(self, budget: int) -> None:
        """Keep at most ``budget`` bytes of block outputs from now on (0: every pass starts at the embeddings)."""
        self.budget = budget
        if self._kept_bytes(()) > budget:
            self._rows.clear()

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
        self._rows = {g: r for g, r in self._rows.items() if (layer, g) in wanted}
        cols = []
        for g in groups:
            g = tuple(g)
            keep = [i for i, f in enumerate(g) if (f.subject, f.prompt) not in leave_out]
            if not keep:
                continue
            got = self._cache.get((layer, g))
            if got is None or got[0] != stamp:
                got = (stamp, self._recompute(layer, g))  # (d_in, E_g)
                self._cache[(layer, g)] = got
                self.computed += len(g)
            K = got[1]
            cols.append(K if len(keep) == len(g) else K[:, keep])
        return torch.cat(cols, dim=1) if cols else None

    def _recompute(self, layer: int, g: Group) -> torch.Tensor:
        """(d_in, E_g) keys of one commit at ``layer``, from the highest kept block output that is
        still valid; keeps the outputs of the block below ``base`` and of the block below ``layer``."""
        rows = self._rows.get(g) or _Rows(chunks_of(self.model, self.tok, list(g), self.prefixes))
        rows.outputs = {b: o for b, o in rows.outputs.items() if o[0] == self.stamp(b + 1) and b < layer}
        start = max(rows.outputs, default=-1)
        keep = tuple(sorted({b for b in (self.base - 1, layer - 1) if start < b < layer}))
        K, kept = read_keys(self.model, rows.chunks, len(g), [layer],
                            start=rows.outputs[start][1] if start >= 0 else None, keep=keep)
        self.blocks_run += len(g) * (layer - start)
        rows.outputs.update({b: (self.stamp(b + 1), o) for b, o in kept.items()})
        rows.outputs = {b: o for b, o in rows.outputs.items() if b in (self.base - 1, layer - 1)}
        if self._kept_bytes(g) + sum(o[1].nbytes for o in rows.outputs.values()) <= self.budget:
            self._rows[g] = rows
        return K[layer]

    def _kept_bytes(self, leave: Group) -> int:
        return sum(o[1].nbytes for g, r in self._rows.items() if g != leave for o in r.outputs.values())
