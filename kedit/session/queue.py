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

from kedit.errors import ConflictingFactsError, KeditError, SessionError
from kedit.facts import Fact
from kedit.session.atomic import atomic_write


def check_against(queue: tuple[Fact, ...], fact: Fact) -> None:
    """Raise ``InvalidFactError``/``ConflictingFactsError`` if ``fact`` cannot join ``queue``."""
    check_batch(queue, [fact])


def check_batch(queue: tuple[Fact, ...], facts: list[Fact]) -> tuple[Fact, ...]:
    """The queue after adding ``facts`` (all validated first: all or nothing). Exact duplicates are kept once.

    One pass with a dictionary by (subject, prompt): linear in the queue and the facts, so a file
    of 50,000 facts is checked in a moment. A conflict names both facts and says where the first
    one is: in the queue, or earlier in the same batch.
    """
    first: dict[tuple[str, str], tuple[Fact, bool]] = {}  # (subject, prompt) -> (fact, queued already)
    for f in queue:
        first.setdefault((f.subject, f.prompt), (f, True))
    out, present = list(queue), set(queue)
    for f in facts:
        f.validate()
        a, queued = first.setdefault((f.subject, f.prompt), (f, False))
        if a.target != f.target:
            where = "the queued" if queued else "the earlier"
            raise ConflictingFactsError(
                f"{f.text!r} → {f.target!r} conflicts with {where} {a.text!r} → {a.target!r}",
                hint="keep one target per subject and prompt in a batch"
                + (" (remove or replace the queued fact)" if queued else " (the batch is added all or nothing)"),
            )
        if f not in present:
            out.append(f)
            present.add(f)
    return tuple(out)


@dataclass(frozen=True)
class QueueState:
    facts: tuple[Fact, ...]
    after: int  # seq of the last journal entry when the queue was written (0: none)


def read_queue(path: Path) -> QueueState:
    if not path.exists():
        return QueueState((), 0)
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(d, dict) or not isinstance(d.get("facts"), list):
            raise ValueError("expected an object with a list of facts")
        after = d.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool):
            raise ValueError(f"'after' is {after!r:.40}, not a whole number")
        facts = tuple(Fact.from_dict(f) for f in d["facts"])
        for f in facts:
            f.validate()
        return QueueState(facts, after)
    except (ValueError, RecursionError, KeditError) as exc:  # JSON, UTF-8, a wrong type, a fact that cannot be edited
        raise SessionError(f"{path} is not a valid queue file: {exc}", hint="fix or delete it") from None


def write_queue(path: Path, state: QueueState) -> None:
    """Atomically, one fact per line (json's indented writer is pure Python: 50,000 facts took seconds)."""
    facts = ",\n".join("    " + json.dumps(f.to_dict(), ensure_ascii=False) for f in state.facts)
    body = f'{{\n  "after": {int(state.after)},\n  "facts": [' + (f"\n{facts}\n  ]" if facts else "]") + "\n}\n"
    atomic_write(path, body.encode("utf-8"))


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
