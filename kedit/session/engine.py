"""Computing one commit's deltas on the live weights, the same way in a session and in a replay.

``EditEngine`` keeps one ``Editor`` per hyper-parameter setting (their C0 Cholesky factors are
reused batch after batch) and makes sure C0 is always measured on the *base* weights: a layer's
statistics first needed after earlier commits would otherwise depend on them, and a recomputed
replay could not be bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from kedit.editing import Editor, EditResult, HParams
from kedit.editing.edit import ProgressFn
from kedit.paths import cache_dir
from kedit.session.weights import LiveWeights


def deterministic() -> None:
    """Same device and dtype → the same bits: ask torch for deterministic kernels."""
    torch.use_deterministic_algorithms(True, warn_only=True)


class EditEngine:
    def __init__(self, lm, weights: LiveWeights, prefixes: tuple[str, ...], model_fp: str, corpus: str) -> None:
        from kedit.editing.quant import quant_mode_of

        deterministic()
        mode = quant_mode_of(lm.model)
        # The base fingerprint does not depend on --load, but C0 measured through quantised blocks
        # does: a quantised load keeps its own statistics.
        self.model_fp = model_fp if mode == "none" else f"{model_fp}-{mode}"
        self.lm, self.weights, self.prefixes, self.corpus = lm, weights, prefixes, corpus
        self._editors: dict[str, Editor] = {}
        self._ready: set[str] = set()  # editors whose C0 factors are loaded

    def editor(self, hp: HParams) -> Editor:
        key = _key(hp)
        if key not in self._editors:
            self._editors[key] = Editor(
                self.lm.model, self.lm.tokenizer, hp, self.prefixes, self.model_fp, corpus=self.corpus, cache_dir=cache_dir()
            )
        return self._editors[key]

    def edit(self, facts, hp: HParams, progress: ProgressFn | None = None, should_stop=None, remember=()) -> EditResult:
        """``remember``: the commits active before this one, one tuple of facts each (``hp.preserve``)."""
        ed = self.editor(hp)
        t = time.perf_counter()
        if _key(hp) not in self._ready:
            with self.weights.base():
                ed.factors(progress, should_stop)  # C0 of the base model (cached on disk after the first time)
            self._ready.add(_key(hp))
        stats_seconds = time.perf_counter() - t
        result = ed.edit(list(facts), progress, should_stop, remember=tuple(remember))
        timings = dict(result.timings)
        timings["statistics"] = timings.get("statistics", 0.0) + stats_seconds
        return dataclasses.replace(result, timings=timings)


def _key(hp: HParams) -> str:
    return json.dumps(hp.to_dict(), sort_keys=True)


def plain(hp: HParams) -> dict:
    """``hp.to_dict()`` as it reads back from JSON (lists, not tuples)."""
    return json.loads(json.dumps(hp.to_dict()))
