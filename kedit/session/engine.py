"""The edited model: live weights, the edit engine and the remembered facts, wired once.

``EditStack`` is the one place where a commit's deltas are computed and applied: the session,
``replay`` (stored or recomputed) and ``eval`` (batch and sequential) all use it, so the order of
operations that makes a replay bit-identical — C0 measured on the *base* weights, the facts of
the commits applied so far remembered by the next edit, deltas applied by ``LiveWeights`` — has
one copy. ``EditEngine`` keeps one ``Editor`` per hyper-parameter setting (their C0 Cholesky
factors are reused batch after batch).
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from kedit.editing import Editor, EditResult, HParams
from kedit.editing.edit import ProgressFn
from kedit.facts import Fact
from kedit.paths import cache_dir
from kedit.session.weights import LiveWeights


def deterministic() -> None:
    """Same device and dtype → the same bits: ask torch for deterministic kernels."""
    torch.use_deterministic_algorithms(True, warn_only=True)


class EditEngine:
    def __init__(self, model, tok, weights: LiveWeights, prefixes: tuple[str, ...], model_fp: str, corpus: str) -> None:
        deterministic()
        self.model, self.tok, self.weights, self.prefixes, self.model_fp, self.corpus = (
            model, tok, weights, prefixes, model_fp, corpus)
        self._editors: dict[str, Editor] = {}
        self._ready: set[str] = set()  # editors whose C0 factors are loaded

    def adopt(self, editor: Editor) -> None:
        """Use ``editor`` (built elsewhere, e.g. by an evaluation) for its hyper-parameters."""
        self._editors[_key(editor.hparams)] = editor

    def editor(self, hp: HParams) -> Editor:
        key = _key(hp)
        if key not in self._editors:
            self._editors[key] = Editor(self.model, self.tok, hp, self.prefixes, self.model_fp, corpus=self.corpus,
                                        cache_dir=cache_dir())
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


class EditStack:
    """The base model with a stack of applied edits, each with the facts it made."""

    def __init__(self, model, tok, prefixes: tuple[str, ...], model_fp: str, corpus: str,
                 frozen: dict[int, str] | None = None) -> None:
        self.weights = LiveWeights(model, frozen)
        self.engine = EditEngine(model, tok, self.weights, prefixes, model_fp, corpus)
        self._facts: list[tuple[Fact, ...]] = []  # one tuple per applied edit, in order

    @classmethod
    def for_journal(cls, lm, header) -> "EditStack":
        """The stack of a session or a replay: the journal's prefixes, corpus and base fingerprint."""
        from kedit.editing.quant import base_layer_digests, quant_mode_of

        mode = quant_mode_of(lm.model)
        # The base fingerprint does not depend on --load, but C0 measured through quantised blocks
        # does: a quantised load keeps its own statistics.
        fp = header.model.fingerprint if mode == "none" else f"{header.model.fingerprint}-{mode}"
        return cls(lm.model, lm.tokenizer, header.prefixes, fp, header.corpus, base_layer_digests(lm))

    @classmethod
    def around(cls, editor: Editor) -> "EditStack":
        """The stack of an evaluation that built its own ``Editor``."""
        stack = cls(editor.model, editor.tok, editor.prefixes, editor.model_fp, editor.corpus_spec)
        stack.engine.adopt(editor)
        return stack

    @property
    def depth(self) -> int:
        return len(self._facts)

    @property
    def remembered(self) -> tuple[tuple[Fact, ...], ...]:
        """The facts of every applied edit, one tuple per edit, oldest first (what the next edit keeps;
        the editor caches their keys per edit, ``editing/memory.py``)."""
        return tuple(self._facts)

    def edit(self, facts, hp: HParams, progress: ProgressFn | None = None, should_stop=None) -> EditResult:
        """The deltas of ``facts`` on the current weights (not applied)."""
        return self.engine.edit(facts, hp, progress, should_stop, remember=self.remembered)

    def push(self, deltas, facts) -> None:
        """Apply one edit's deltas (all or nothing) and remember its facts."""
        self.weights.apply(list(deltas))
        self._facts.append(tuple(facts))

    def pop(self):
        """Take the last edit back exactly; returns its deltas."""
        deltas = self.weights.pop()
        self._facts.pop()
        return deltas

    def reset(self) -> None:
        self.weights.reset()
        self._facts.clear()

    def fingerprint(self) -> str:
        return self.weights.fingerprint()

    def base(self):
        """A context in which the model has its base weights."""
        return self.weights.base()


def _key(hp: HParams) -> str:
    return json.dumps(hp.to_dict(), sort_keys=True)


def plain(hp: HParams) -> dict:
    """``hp.to_dict()`` as it reads back from JSON (lists, not tuples)."""
    return json.loads(json.dumps(hp.to_dict()))
