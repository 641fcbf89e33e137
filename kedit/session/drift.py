"""Model health across a session: how far each commit moved the held-out perplexity.

Every commit records the held-out NLL after it and the base model's (``editing.health``). The
drift of an active commit is measured against the base model (``since_base``) and against the
commit before it (``step``: what this commit alone did, perplexity ratio − 1). A commit whose
step exceeds the session's ``drift_threshold`` (a fraction, 0.02 by default) is flagged, and the
user is told that ``undo`` takes it back. Entries written before the health check have no
figures and are never flagged. No torch here: ``kedit log`` reads it without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.02


def perplexity_change(nll: float, before: float) -> float:
    """Held-out perplexity at mean NLL ``nll`` relative to that at ``before``, minus 1 (0.05: 5% higher)."""
    return math.exp(nll - before) - 1


def is_flagged(step: float | None, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether a commit that moved held-out perplexity by ``step`` (a fraction) is flagged."""
    return step is not None and step > threshold


@dataclass(frozen=True)
class Drift:
    since_base: float | None  # held-out perplexity after the commit / base − 1
    step: float | None  # the same against the state before the commit
    flagged: bool

    def describe(self) -> str:
        if self.since_base is None:
            return "held-out perplexity not measured"
        text = f"held-out perplexity {self.since_base:+.1%} since the base model"
        if self.step is not None:
            text += f" ({self.step:+.1%} this commit)"
        return text


def step_after(active: list, nll: float | None, base: float | None) -> float | None:
    """The step of a commit with held-out NLL ``nll`` made on top of the ``active`` commits (oldest
    first): against the last one's NLL, or the base model's when there is none. None when either
    was not measured."""
    before = active[-1].heldout_nll if active else base
    return perplexity_change(nll, before) if nll is not None and before is not None else None


def drifts(entries, threshold: float = DEFAULT_THRESHOLD) -> dict[int, Drift]:
    """Drift of every commit among ``entries`` (journal order), keyed by its seq."""
    out: dict[int, Drift] = {}
    stack: list = []  # active commits
    for e in entries:
        if getattr(e, "kind", "") == "undo":
            if stack:
                stack.pop()
            continue
        nll, base = getattr(e, "heldout_nll", None), getattr(e, "heldout_base", None)
        if nll is None or base is None:
            out[e.seq] = Drift(None, None, False)
        else:
            step = step_after(stack, nll, base)
            out[e.seq] = Drift(perplexity_change(nll, base), step, is_flagged(step, threshold))
        stack.append(e)
    return out


def undo_hint(session_name: str) -> str:
    return f"'kedit undo {session_name}' takes it back"
