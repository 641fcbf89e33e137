"""Edit metrics as pure functions of per-prompt scores (no model, no torch).

Every prompt is scored twice under teacher forcing, once with the new object and once with the
true one; ``Pair`` keeps the two mean per-token NLLs (P = exp(−NLL), the geometric-mean token
probability, as ROME/MEMIT's evaluation does). Per record we average over its prompts, then over
records (ROME's ``summarize``), and report ×100:

* ES  efficacy: P(new) > P(true) on the rewrite prompt; EM = mean P(new) − P(true)
* PS  paraphrase (generalisation): the same on paraphrase prompts; PM likewise
* NS  neighbourhood (specificity): P(true) > P(new) on neighbourhood prompts; NM = P(true) − P(new)
* S   harmonic mean of ES, PS, NS
* token level (MEND/EasyEdit): RA, PA = fraction of the new object's tokens that are the argmax
  under teacher forcing on rewrite/paraphrase prompts; LA = fraction of the neighbourhood's
  argmax tokens (along its true object) unchanged from the unedited model.
* generation (``generation.py``, when answers were generated): GE, GP = share of greedy answers
  to rewrite/paraphrase prompts that contain the new object; GN = share of neighbourhood answers
  that contain the true object and not the new one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence


@dataclass(frozen=True)
class Pair:
    """One prompt scored with both objects."""

    nll_new: float  # mean per-token NLL of " " + new object
    nll_true: float  # mean per-token NLL of " " + true object
    acc_new: float = 0.0  # fraction of the new object's tokens that are the teacher-forced argmax
    pred_true: tuple[int, ...] = ()  # argmax token ids along the true object (for LA)
    gen_new: bool | None = None  # the greedy answer contains the new object (None: not generated)
    gen_true: bool | None = None  # ... contains the true object


@dataclass(frozen=True)
class RecordScores:
    case_id: str
    rewrite: tuple[Pair, ...]
    paraphrase: tuple[Pair, ...]
    neighborhood: tuple[Pair, ...]


def prob(nll: float) -> float:
    return math.exp(-nll)


def new_wins(p: Pair) -> bool:
    return p.nll_new < p.nll_true


def true_wins(p: Pair) -> bool:
    return p.nll_true < p.nll_new


def new_margin(p: Pair) -> float:
    return prob(p.nll_new) - prob(p.nll_true)


def true_margin(p: Pair) -> float:
    return prob(p.nll_true) - prob(p.nll_new)


def says_new(p: Pair) -> bool:
    return bool(p.gen_new)


def keeps_true(p: Pair) -> bool:
    return bool(p.gen_true) and not p.gen_new


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Fraction of positions where the predicted token is the target token."""
    if len(predicted) != len(target) or not target:
        raise ValueError(f"{len(predicted)} predictions for {len(target)} target tokens")
    return sum(int(a == b) for a, b in zip(predicted, target)) / len(target)


def agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Fraction of positions where two argmax sequences agree."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cannot compare argmax sequences of lengths {len(a)} and {len(b)}")
    return sum(int(x == y) for x, y in zip(a, b)) / len(a)


def mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def record_rate(records: Sequence[RecordScores], part: str, fn: Callable[[Pair], float]) -> float | None:
    """Mean over records (that have prompts of this part) of the mean of ``fn`` over its prompts."""
    per = [mean(float(fn(p)) for p in getattr(r, part)) for r in records]
    return mean(x for x in per if x is not None)


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    """Harmonic mean; 0 when any value is 0, None when any is missing."""
    if not values or any(v is None for v in values):
        return None
    if any(v <= 0 for v in values):  # type: ignore[operator]
        return 0.0
    return len(values) / sum(1.0 / v for v in values)  # type: ignore[operator]


@dataclass(frozen=True)
class Metrics:
    n: int
    ES: float | None
    PS: float | None
    NS: float | None
    S: float | None
    EM: float | None
    PM: float | None
    NM: float | None
    RA: float | None
    PA: float | None
    LA: float | None
    GE: float | None = None
    GP: float | None = None
    GN: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _x100(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def summarize(records: Sequence[RecordScores], baseline: Sequence[RecordScores] | None = None) -> Metrics:
    """All figures ×100 over ``records``; LA needs the same records, in order, scored unedited."""
    es = record_rate(records, "rewrite", new_wins)
    ps = record_rate(records, "paraphrase", new_wins)
    ns = record_rate(records, "neighborhood", true_wins)
    la = None
    if baseline is not None:
        per = []
        for r, b in zip(records, baseline, strict=True):
            if b.case_id != r.case_id or len(b.neighborhood) != len(r.neighborhood):
                raise ValueError(f"baseline record {b.case_id} does not match record {r.case_id}")
            per.append(mean(agreement(p.pred_true, q.pred_true) for p, q in zip(r.neighborhood, b.neighborhood)))
        la = mean(x for x in per if x is not None)
    return Metrics(
        n=len(records),
        ES=_x100(es), PS=_x100(ps), NS=_x100(ns),
        S=harmonic_mean([_x100(es), _x100(ps), _x100(ns)]),
        EM=_x100(record_rate(records, "rewrite", new_margin)),
        PM=_x100(record_rate(records, "paraphrase", new_margin)),
        NM=_x100(record_rate(records, "neighborhood", true_margin)),
        RA=_x100(record_rate(records, "rewrite", lambda p: p.acc_new)),
        PA=_x100(record_rate(records, "paraphrase", lambda p: p.acc_new)),
        LA=_x100(la),
        **_generation(records),
    )


def _generation(records: Sequence[RecordScores]) -> dict[str, float | None]:
    """GE, GP, GN (×100) when every prompt has a generated answer, else None."""
    if not records or any(p.gen_new is None for r in records for ps in (r.rewrite, r.paraphrase, r.neighborhood) for p in ps):
        return {"GE": None, "GP": None, "GN": None}
    return {"GE": _x100(record_rate(records, "rewrite", says_new)),
            "GP": _x100(record_rate(records, "paraphrase", says_new)),
            "GN": _x100(record_rate(records, "neighborhood", keeps_true))}


def figure(v: float | None, digits: int = 1) -> str:
    """A figure as tables and progress lines show it: ``digits`` decimals, "—" where none was measured."""
    return "—" if v is None else f"{v:.{digits}f}"
