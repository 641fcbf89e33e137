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
from kedit.editing.memory import Group, RememberedKeys
from kedit.editing.placement import input_device
from kedit.editing.values import optimize_values, rewrite_templates
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
    skipped: tuple[bool, ...] = ()  # value_norm: facts whose value was too large to write (kept as they were)


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
        self._projectors: dict[int, solver.Projector] = {}
        self._corpus = None
        self.remembered = RememberedKeys(model, tok, prefixes, layers=hparams.layers,
                                         first_token=hparams.first_token_prompts)

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
                c0 = c0.to(_solve_device(self.model))
                self._factors[l] = solver.factor_c0(c0, ridge=self.hparams.norm_penalty)
                if self.hparams.null_space > 0:
                    self._projectors[l] = solver.null_space(c0, self.hparams.null_space)
        return {l: self._factors[l] for l in self.hparams.layers}

    def edit(self, facts: list[Fact], progress: ProgressFn | None = None, should_stop=None,
             remember=()) -> EditResult:
        """Deltas for ``facts`` (not applied). ``remember``: the earlier edits still in the model,
        one tuple of facts per commit (a flat list of facts counts as one commit); with
        ``hparams.preserve`` > 0 the solve keeps what the weights now say at their keys (a
        remembered fact that this batch edits again is left out)."""
        facts = validate_batch(list(facts))
        hp = self.hparams
        again = {(f.subject, f.prompt) for f in facts}
        groups = _groups(remember) if hp.preserve > 0 else []
        if hp.remember_by_commit:
            keep = _Memory(self.remembered, groups, again)
        else:  # records made before: every remembered fact's key recomputed in one pass
            keep = [f for g in groups for f in g if (f.subject, f.prompt) not in again]
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
                    r = self._edit_batch([f], factors, timings, progress, should_stop, keep)[:2]
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
                skipped = ()
            else:
                deltas, v, skipped = self._edit_batch(facts, factors, timings, progress, should_stop, keep,
                                                      seed=hp.remember_by_commit)
                steps, nll, conv = v.steps, v.nll, v.converged
        finally:
            with torch.no_grad():
                for l, w in originals.items():
                    arch.weight_param(self.model, l).copy_(w)
        return EditResult(tuple(facts), tuple(deltas), timings, steps, nll, conv, skipped)

    def _edit_batch(self, facts, factors, timings, progress, should_stop, remember, seed=False):
        """Deltas of one batch. ``remember``: a ``_Memory`` or a flat list of facts (records made
        before the memory cache); ``seed``: keep this batch's keys for the commits after it."""
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

        vr = optimize_values(model, tok, facts, z_layer, self.prefixes, hp.values, vprog, should_stop,
                             first_token=hp.first_token_prompts)
        timings["values"] += time.perf_counter() - t
        delta, skipped = vr.delta, ()
        own_keys: dict[int, tuple[tuple, torch.Tensor]] = {}  # layer -> (stamp, K) of this batch
        if hp.value_norm > 0:
            t = time.perf_counter()
            own_keys[z_layer] = self._own_keys(facts, z_layer)
            W = arch.weight_view(model, z_layer)  # (d_out, d_in)
            v0 = (W.float() @ own_keys[z_layer][1].to(W.device)).T.cpu()  # (E, d_out)  W·k now
            delta, skipped = anchor_values(v0, delta, hp.value_norm)
            timings["keys"] += time.perf_counter() - t
        z = vr.h_init + delta  # (E, d_model)  what block z_layer should output

        deltas = []
        for i, layer in enumerate(layers):
            check()
            t = time.perf_counter()
            if progress:
                progress(Progress("keys", i, len(layers), detail=f"layer {layer}"))
            if layer not in own_keys or i > 0:
                own_keys[layer] = self._own_keys(facts, layer)
            K = own_keys[layer][1]  # (d_in, E)
            if len(layers) == 1:
                R = delta.T  # (d_model, E): v = W0k + δ, so V − W0K = δ
            else:
                cur = _reference_outputs(model, tok, facts, z_layer, self.prefixes, hp)  # (E, d_model)
                R = (z - cur).T / (len(layers) - i)  # (d_model, E)  spread what remains
            # earlier edits' keys under the weights as they are now: a replay computes the same
            if isinstance(remember, _Memory):
                memory = remember.keys(layer)  # (d_in, P) or None
            else:
                memory = (compute_keys(model, tok, remember, [layer], self.prefixes,
                                       first_token=hp.first_token_prompts)[layer] if remember else None)
            timings["keys"] += time.perf_counter() - t
            t = time.perf_counter()
            if progress:
                progress(Progress("solve", i, len(layers), detail=f"layer {layer}"))
            U, V = self.solve_layer(K, R, factors[layer], layer, names, memory)  # (d_out, E), (d_in, E)
            d = Delta(layer=layer, module=arch.mlp_out_name(model, layer), U=U.float().cpu(), V=V.float().cpu())
            if i < len(layers) - 1:
                _apply_temporarily(model, [d])
            deltas.append(d)
            timings["solve"] += time.perf_counter() - t
        if seed:
            for layer, (stamp, K) in own_keys.items():
                self.remembered.seed(layer, tuple(facts), K, stamp)
        return deltas, vr, skipped

    def _own_keys(self, facts: list[Fact], layer: int) -> tuple[tuple, torch.Tensor]:
        """The batch's keys at ``layer`` and the stamp they were computed under (memory.py)."""
        stamp = self.remembered.stamp(layer)
        keys = compute_keys(self.model, self.tok, facts, [layer], self.prefixes,
                            first_token=self.hparams.first_token_prompts)
        return stamp, keys[layer]  # (d_in, E)

    def solve_layer(self, K, R, factor, layer, names, memory):
        """Factors (U, V) of one layer's update Δ = U Vᵀ for keys K (d_in, E) and residuals R
        (d_out, E), with this editor's solver settings (``factor``: ``factors()[layer]``; ``memory``:
        the remembered keys, (d_in, P) or None)."""
        hp = self.hparams
        if hp.null_space > 0:  # AlphaEdit: μ = 1 is its least squares (MEMIT), 0 keeps ŴK = V (EMMET/ROME)
            return solver.solve(K, R, factor, lam=1.0 if hp.lam > 0 else 0.0, names=names, memory=memory,
                                alpha=hp.preserve, projector=self._projectors[layer], l2=hp.norm_penalty)
        return solver.solve(K, R, factor, lam=hp.lam, names=names, memory=memory, alpha=hp.preserve)


class _Memory:
    """The remembered commits of one edit, as the solve asks for them layer by layer."""

    def __init__(self, cache: RememberedKeys, groups: list[Group], leave_out: set) -> None:
        self.cache, self.groups, self.leave_out = cache, groups, leave_out

    def keys(self, layer: int) -> torch.Tensor | None:
        return self.cache.keys(layer, self.groups, self.leave_out) if self.groups else None

    def __bool__(self) -> bool:
        return bool(self.groups)


def _groups(remember) -> list[Group]:
    """One tuple of facts per remembered commit (a flat list of facts is one commit)."""
    items = list(remember)
    if items and isinstance(items[0], Fact):
        return [tuple(items)]
    return [tuple(g) for g in items if len(g)]


def anchor_values(v0: torch.Tensor, delta: torch.Tensor, norm: float) -> tuple[torch.Tensor, tuple[bool, ...]]:
    """NAS: the target value v* = v0 + δ rescaled to ``norm``, i.e. δ' = norm·v*/‖v*‖ − v0; a fact
    with ‖v*‖ > 2·norm is skipped (δ' = 0: its output stays as it is). v0, δ: (E, d)."""
    v = v0 + delta  # (E, d)
    n = v.norm(dim=-1, keepdim=True)  # (E, 1)
    skip = n[:, 0] > 2 * norm
    out = norm * v / n.clamp_min(1e-12) - v0  # (E, d)
    out[skip] = 0.0
    return out, tuple(bool(x) for x in skip)


def _solve_device(model) -> torch.device:
    return input_device(model)


@torch.no_grad()
def _apply_temporarily(model, deltas: list[Delta]) -> None:
    for d in deltas:
        arch.weight_param(model, d.layer).copy_(updated_weight(model, d))


@torch.no_grad()
def _reference_outputs(model, tok, facts: list[Fact], layer: int, prefixes: tuple[str, ...],
                       hp: HParams) -> torch.Tensor:
    """(E, d_model) block ``layer``'s output at the subject of each fact's reference prompt, the
    one its δ was fitted from (``values.rewrite_templates``)."""
    refs = [rewrite_templates(tok, f, prefixes, False, hp.first_token_prompts)[0] for f in facts]
    rows = [tokens.plain_row(tok, t, f.subject) for t, f in zip(refs, facts)]
    device = input_device(model)
    input_ids, mask = tokens.collate(rows, tokens.pad_id(tok), device)
    h = forward.block_outputs(model, layer, input_ids, mask)  # (E, T, d_model)
    idx = torch.tensor([r.subject_index for r in rows], device=h.device)  # the block's device
    return h[torch.arange(len(rows), device=h.device), idx].float().cpu()
