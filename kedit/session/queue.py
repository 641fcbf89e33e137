"""The fact queue: facts waiting for the next commit, persisted in ``queue.json``.

Every change validates at once (``Fact.validate`` and conflicts against the queue) and rewrites
the file atomically (``SessionFolder.change_queue`` does it under the session's folder lock). The
file records the journal entry it was written after (``after``): the facts of a commit later than
``after`` were consumed by it (``reconcile``), so a crash between a commit's journal line and the
queue's rewrite loses and duplicates nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kedit.errors import ConflictingFactsError, SessionError
from kedit.facts import Fact, find_conflicts
from kedit.session.atomic import atomic_write_json


def check_against(queue: tuple[Fact, ...], fact: Fact) -> None:
    """Raise ``InvalidFactError``/``ConflictingFactsError`` if ``fact`` cannot join ``queue``."""
    fact.validate()
    for a, b in find_conflicts(list(queue) + [fact]):
        raise ConflictingFactsError(
            f"{b.text!r} → {b.target!r} conflicts with the queued {a.text!r} → {a.target!r}",
            hint="keep one target per subject and prompt in a batch (remove or replace the queued fact)",
        )


def check_batch(queue: tuple[Fact, ...], facts: list[Fact]) -> tuple[Fact, ...]:
    """The queue after adding ``facts`` (all validated first: all or nothing). Exact duplicates are kept once."""
    out = list(queue)
    for f in facts:
        check_against(tuple(out), f)
        if f not in out:
            out.append(f)
    return tuple(out)


@dataclass(frozen=True)
class QueueState:
    facts: tuple[Fact, ...]
    after: int  # seq of the last journal entry when the queue was written (0: none)


def read_queue(path: Path) -> QueueState:
    if not path.exists():
        return QueueState((), 0)
    try:
        d = json.loads(path.read_text("utf-8"))
        return QueueState(tuple(Fact.from_dict(f) for f in d["facts"]), int(d.get("after", 0)))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SessionError(f"{path} is not a valid queue file: {exc}", hint="fix or delete it") from None


def write_queue(path: Path, state: QueueState) -> None:
    atomic_write_json(path, {"after": state.after, "facts": [f.to_dict() for f in state.facts]})


def reconcile(state: QueueState, commits: list[tuple[int, tuple[Fact, ...]]]) -> QueueState:
    """The queue without the facts that commits later than ``state.after`` consumed.

    A commit removes exactly the facts it edited (a fact added meanwhile stays); if it died
    between its journal line and the queue's rewrite, the next reader sees the same queue.
    """
    later = [(seq, facts) for seq, facts in commits if seq > state.after]
    if not later:
        return state
    done = {f for _, facts in later for f in facts}
    return QueueState(tuple(f for f in state.facts if f not in done), max(seq for seq, _ in later))
