"""Ring 2: sessions, their journal, replay and export.

The light parts (journal, queue, facts files, the session folder with its settings and locks)
import no torch, so ``kedit log``, ``kedit add`` and ``kedit queue`` stay instant; ``Session`` and ``QueryResult`` load the editing engine on first
use (attribute access on this package).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kedit.session.guard import Guarded, HeldBack
from kedit.session.journal import (
    CommitEntry, FactScore, Journal, JournalEntry, JournalHeader, UndoEntry, read_journal,
)

if TYPE_CHECKING:
    from kedit.session.session import QueryResult, Session

__all__ = [
    "CommitEntry", "FactScore", "Guarded", "HeldBack", "Journal", "JournalEntry", "JournalHeader", "QueryResult",
    "Session", "UndoEntry", "read_journal",
]


def __getattr__(name: str):
    if name in ("Session", "QueryResult"):
        from kedit.session import session

        return getattr(session, name)
    raise AttributeError(f"module 'kedit.session' has no attribute {name!r}")
