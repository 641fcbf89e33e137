"""The commit guard: keep a batch's harmless facts, hold back the ones that damage the model.

A commit whose held-out perplexity step is flagged (``drift.is_flagged``) is taken back before it
is written, and its facts are tried again in two halves, in order, each half guarded the same
way, down to single facts. A fact flagged on its own is held back (it stays in the queue); every
other fact is committed. A batch with one harmful fact among 16 therefore costs at most eight
extra attempts (one per halving, two at each level), and a batch without one costs nothing.

``split_until_clean`` is the rule, with the attempt given as a function: the session's commit
(``Session.commit_queue``) and the lifelong experiment (``eval.lifelong``) share it. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")  # a fact, or anything that carries one
E = TypeVar("E")  # what an attempt that was kept returns


@dataclass(frozen=True)
class Flagged:
    """An attempt that was taken back: it moved held-out perplexity by ``step`` (a fraction)."""

    step: float


@dataclass(frozen=True)
class HeldBack(Generic[T]):
    item: T
    step: float  # the held-out perplexity change its commit alone caused


@dataclass(frozen=True)
class Guarded(Generic[T, E]):
    kept: tuple[E, ...]  # the attempts that were kept, in order
    held_back: tuple[HeldBack[T], ...]
    taken_back: int  # attempts that were flagged and taken back


def split_until_clean(items: Sequence[T], attempt: Callable[[list[T]], E | Flagged]) -> Guarded[T, E]:
    """Attempt ``items`` as one group; a flagged group is split in halves (first half first)."""
    todo = [list(items)] if items else []
    kept: list[E] = []
    held: list[HeldBack[T]] = []
    taken_back = 0
    while todo:
        group = todo.pop(0)
        got = attempt(group)
        if not isinstance(got, Flagged):
            kept.append(got)
            continue
        taken_back += 1
        if len(group) == 1:
            held.append(HeldBack(group[0], got.step))
        else:
            half = len(group) // 2
            todo[:0] = [group[:half], group[half:]]
    return Guarded(tuple(kept), tuple(held), taken_back)
