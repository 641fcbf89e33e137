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
MEMIT recomputes the layers above a projection that changed, and not from the embeddings: what
a pass over a commit's rows reached is kept (``_Rows``, ``keys.Kept``) and the next pass starts
there. The lowest edited block never changes but for its projection, so it is kept for good as
the stream before its MLP and its projection's input, from which its output under any weights is
one product; a block kept the same way at layer ℓ serves the pass at ℓ + 1 after ℓ is written.
For layers 1..3 a pass is then one block and a projection instead of three and four blocks.
Where a block's output is not that sum (``keys.splits``), the output of the block below is kept
instead (two blocks a pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kedit.editing import arch
from kedit.editing.keys import Chunk, Kept, chunks_of, read_keys, splits
from kedit.editing.placement import written_weight
from kedit.facts import Fact

Group = tuple[Fact, ...]  # the facts of one commit, in the commit's order

KEEP_BUDGET_BYTES = 4 * 2**30  # what passes keep for restarts (host memory); beyond it, passes start at the embeddings


@dataclass
class _Rows:
    """One commit's rows and what passes kept of them: restart block -> (stamp, kept)."""

    chunks: list[Chunk]
    kept: dict[int, tuple[tuple, Kept]] = field(default_factory=dict)


class RememberedKeys:
    def __init__(self, model, tok, prefixes: tuple[str, ...], layers: tuple[int, ...] = (),
                 budget: int = KEEP_BUDGET_BYTES, first_token: bool = False) -> None:
        """``layers``: the layers the session edits (what is worth keeping for a restart);
        ``first_token``: the key rule of ``keys.read_keys``."""
        self.model, self.tok, self.prefixes, self.budget = model, tok, prefixes, budget
        self.first_token = first_token
        self.base, self.top = (min(layers), max(layers)) if layers else (0, None)
        self._cache: dict[tuple[int, Group], tuple[tuple, torch.Tensor]] = {}
        self._rows: dict[Group, _Rows] = {}
        self._splits: dict[int, bool] = {}
        self.computed = 0  # facts whose keys were computed here (not found in the cache)
        self.blocks_run = 0  # blocks their passes ran, summed over facts (from the embeddings: layer + 1)

    def limit(self, budget: int) -> None:
        """Keep at most ``budget`` bytes for restarts from now on (0: every pass starts at the embeddings)."""
        self.budget = budget
        if self.kept_bytes > budget:
            self._rows.clear()

    @property
    def kept_bytes(self) -> int:
        """Host memory held for restarts."""
        return self._kept_bytes(())

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
        """(d_in, E_g) keys of one commit at ``layer``, from the highest restart point still valid."""
        rows = self._rows.get(g) or _Rows(chunks_of(self.model, self.tok, list(g), self.prefixes))
        rows.kept = {b: e for b, e in rows.kept.items() if b < layer and e[0] == self._valid_under(e[1])}
        start = max(rows.kept, default=-1)  # restart above this block (-1: at the embeddings)
        worth = self._worth_keeping(layer)
        keep = tuple((b, split) for b, split in worth.items()
                     if start < b and (b <= layer if split else b < layer))  # blocks this pass reaches
        K, kept = read_keys(self.model, rows.chunks, len(g), [layer],
                            start=rows.kept[start][1] if start >= 0 else None, keep=keep,
                            first_token=self.first_token)
        self.blocks_run += len(g) * (layer - start)
        rows.kept.update({b: (self._valid_under(k), k) for b, k in kept.items()})
        self._store(g, rows, worth)
        return K[layer]

    def _store(self, g: Group, rows: _Rows, worth: dict[int, bool]) -> None:
        """Keep ``rows`` with the restart points worth keeping, within the budget."""
        rows.kept = {b: e for b, e in rows.kept.items() if b in worth}
        room = self.budget - self._kept_bytes(g)
        while rows.kept and sum(e[1].nbytes for e in rows.kept.values()) > room:
            del rows.kept[max(rows.kept)]  # the lowest block serves every later commit: it goes last
        self._rows[g] = rows

    def _worth_keeping(self, layer: int) -> dict[int, bool]:
        """Restart points after a pass at ``layer``, block -> split: the lowest edited block for
        good, and ``layer``'s own for the pass above it (unless it is the top edited layer)."""
        out: dict[int, bool] = {}
        for l in (self.base, layer) if layer != self.top else (self.base,):
            if self._split(l):
                out[l] = True
            elif l >= 1:
                out[l - 1] = False
        return out

    def _split(self, block: int) -> bool:
        if block not in self._splits:
            self._splits[block] = splits(self.model, block)
        return self._splits[block]

    def _valid_under(self, kept: Kept) -> tuple:
        """The stamp under which ``kept`` holds: a split block does not depend on its own projection."""
        return self.stamp(kept.block if kept.split else kept.block + 1)

    def _kept_bytes(self, leave: Group) -> int:
        return sum(e[1].nbytes for g, r in self._rows.items() if g != leave for e in r.kept.values())
