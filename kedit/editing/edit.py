"""One edit, end to end: statistics → keys → values → solve, returning per-layer deltas.

``Editor`` holds what is reused across the batches of a session (the C0 Cholesky factors per
layer) and never keeps the model's weights changed: multi-layer MEMIT applies each layer's update
temporarily to compute the next layer's keys and restores everything before returning. The
caller applies the returned deltas (``delta.apply_deltas``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kedit.editing import arch, forward, solver, stats, tokens
from kedit.editing.corpus import DEFAULT_CORPUS, load_corpus
from kedit.editing.delta import Delta, updated_weight
from kedit.editing.hparams import HParams
from kedit.editing.keys import compute_keys
from kedit.editing.placement import input_device
from kedit.editing.values import optimize_values
from kedit.errors import EditCancelled
from kedit.facts import Fact, validate_batch

PHASES = ("statistics", "keys", "values", "solve")


@dataclass(frozen=True)
class Progress:
    phase: str  # one of PHASES
    done: int
    total: int
    loss: float | None = None
    detail: str = ""


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class EditResult:
    facts: tuple[Fact, ...]
    deltas: tuple[Delta, ...]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    value_steps: tuple[int, ...] = ()
    value_nll: tuple[float, ...] = ()
    converged: tuple[bool, ...] = ()


class Editor:
    """Computes edits for one model with fixed hyper-parameters and context prefixes."""

    def __init__(
        self,
        model,
        tok,
        hparams: HParams,
        prefixes: tuple[str, ...],
        model_fp: str,
        corpus: str = DEFAULT_CORPUS,
        cache_dir: Path | None = None,
    ) -> None:
        self.model, self.tok, self.hparams, self.prefixes = model, tok, hparams, prefixes
        self.model_fp, self.corpus_spec, self.cache_dir = model_fp, corpus, cache_dir
        self._factors: dict[int, solver.Factor] = {}
        self._corpus = None

    @property
    def corpus(self):
        if self._corpus is None:
            self._corpus = load_corpus(self.corpus_spec)
        return self._corpus

    def factors(self, progress: ProgressFn | None = None, should_stop=None) -> dict[int, solver.Factor]:
        """Cholesky factors of C0 for every edit layer (computed or read from cache once)."""
        missing = [l for l in self.hparams.layers if l not in self._factors]
        if missing:
            def prog(done: int, total: int) -> None:
                if progress:
                    progress(Progress("statistics", done, total, detail=f"{done:,}/{total:,} tokens"))

            c0s = stats.second_moments(
                self.model, self.tok, missing, self.corpus, self.hparams.stats_tokens, self.model_fp,
                self.cache_dir, seq_len=self.hparams.stats_seq_len, progress=prog, should_stop=should_stop,
            )
            for l, c0 in c0s.items():
                self._factors[l] = solver.factor_c0(c0.to(_solve_device(self.model)))
        return {l: self._factors[l] for l in self.hparams.layers}

    def edit(self, facts: list[Fact], progress: ProgressFn | None = None, should_stop=None,
             remember: tuple[Fact, ...] | list[Fact] = ()) -> EditResult:
        """Deltas for ``facts`` (not applied). ``remember``: the facts of earlier edits still in
        the model; with ``hparams.preserve`` > 0 the solve keeps what the weights now say at their
        keys (a remembered fact that this batch edits again is left out)."""
        facts = validate_batch(list(facts))
        hp = self.hparams
        again = {(f.subject, f.prompt) for f in facts}
        keep = [f for f in remember if (f.subject, f.prompt) not in again] if hp.preserve > 0 else []
        timings = {p: 0.0 for p in PHASES}
        t0 = time.perf_counter()
        factors = self.factors(progress, should_stop)
        timings["statistics"] = time.perf_counter() - t0
        # Only multi-layer MEMIT and multi-fact ROME change weights on the way (and restore them).
        changes_on_the_way = len(hp.layers) > 1 or (hp.method == "rome" and len(facts) > 1)
        originals = {l: arch.weight_param(self.model, l).detach().clone() for l in hp.layers} if changes_on_the_way else {}
        try:
            if hp.method == "rome" and len(facts) > 1:
                # ROME is a single-fact method: edit one fact after another, each seeing the last.
                parts = []
                for f in facts:
                    r = self._edit_batch([f], factors, timings, progress, should_stop, keep)
                    _apply_temporarily(self.model, r[0])
                    parts.append(r)
                deltas = tuple(
                    Delta(layer=d.layer, module=d.module,
                          U=torch.cat([p[0][i].U for p in parts], 1), V=torch.cat([p[0][i].V for p in parts], 1))
                    for i, d in enumerate(parts[0][0])
                )
                vr = [p[1] for p in parts]
                steps = tuple(s for v in vr for s in v.steps)
                nll = tuple(x for v in vr for x in v.nll)
                conv = tuple(c for v in vr for c in v.converged)
            else:
                deltas, v = self._edit_batch(facts, factors, timings, progress, should_stop, keep)
                steps, nll, conv = v.steps, v.nll, v.converged
        finally:
            with torch.no_grad():
                for l, w in originals.items():
                    arch.weight_param(self.model, l).copy_(w)
        return EditResult(tuple(facts), tuple(deltas), timings, steps, nll, conv)

    def _edit_batch(self, facts, factors, timings, progress, should_stop, remember):
        hp, model, tok = self.hparams, self.model, self.tok
        layers = sorted(hp.layers)
        z_layer = layers[-1]
        names = [f.label for f in facts]

        def check():
            if should_stop is not None and should_stop():
                raise EditCancelled("edit cancelled; no weight was changed")

        # values at the last edit layer
        t = time.perf_counter()

        def vprog(step: int, total: int, loss: float, n_done: int) -> None:
            if progress:
                progress(Progress("values", step, total, loss=loss, detail=f"{n_done}/{len(facts)} facts done"))

        vr = optimize_values(model, tok, facts, z_layer, self.prefixes, hp.values, vprog, should_stop)
        timings["values"] += time.perf_counter() - t
        z = vr.h_init + vr.delta  # (E, d_model)  what block z_layer should output

        deltas = []
        for i, layer in enumerate(layers):
            check()
            t = time.perf_counter()
            if progress:
                progress(Progress("keys", i, len(layers), detail=f"layer {layer}"))
            K = compute_keys(model, tok, facts, [layer], self.prefixes)[layer]  # (d_in, E)
            if len(layers) == 1:
                R = vr.delta.T  # (d_model, E): v = W0k + δ, so V − W0K = δ
            else:
                cur = _bare_block_outputs(model, tok, facts, z_layer)  # (E, d_model)
                R = (z - cur).T / (len(layers) - i)  # (d_model, E)  spread what remains
            # earlier edits' keys under the weights as they are now: a replay recomputes the same
            memory = compute_keys(model, tok, remember, [layer], self.prefixes)[layer] if remember else None  # (d_in, P)
            timings["keys"] += time.perf_counter() - t
            t = time.perf_counter()
            if progress:
                progress(Progress("solve", i, len(layers), detail=f"layer {layer}"))
            U, V = solver.solve(K, R, factors[layer], lam=hp.lam, names=names, memory=memory,
                                alpha=hp.preserve)  # (d_out, E), (d_in, E)
            d = Delta(layer=layer, module=arch.mlp_out_name(model, layer), U=U.float().cpu(), V=V.float().cpu())
            if i < len(layers) - 1:
                _apply_temporarily(model, [d])
            deltas.append(d)
            timings["solve"] += time.perf_counter() - t
        return deltas, vr


def _solve_device(model) -> torch.device:
    return input_device(model)


@torch.no_grad()
def _apply_temporarily(model, deltas: list[Delta]) -> None:
    for d in deltas:
        arch.weight_param(model, d.layer).copy_(updated_weight(model, d))


@torch.no_grad()
def _bare_block_outputs(model, tok, facts: list[Fact], layer: int) -> torch.Tensor:
    rows = [tokens.plain_row(tok, f.prompt, f.subject) for f in facts]
    device = input_device(model)
    input_ids, mask = tokens.collate(rows, tokens.pad_id(tok), device)
    h = forward.block_outputs(model, layer, input_ids, mask)  # (E, T, d_model)
    idx = torch.tensor([r.subject_index for r in rows], device=h.device)  # the block's device
    return h[torch.arange(len(rows), device=h.device), idx].float().cpu()
