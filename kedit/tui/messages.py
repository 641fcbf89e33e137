"""Messages that the app's thread workers post back to the UI thread.

Workers never touch widgets: they call ``App.post_message`` (thread-safe) with one of these, and
the app updates its panes in the handler. Tests watch them through ``run_test(message_hook=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message


@dataclass
class SessionReady(Message):
    """The session (and its model) finished loading."""

    session: Any  # kedit.session.Session


@dataclass
class SessionSynced(Message):
    """The session caught up with what other processes wrote (``changed``: there was something)."""

    changed: bool


@dataclass
class QueryAnswered(Message):
    """The model's answer to query number ``seq``."""

    seq: int
    result: Any  # kedit.session.QueryResult
    seconds: float


@dataclass
class CommitProgressed(Message):
    """One progress report of the running commit."""

    progress: Any  # kedit.editing.Progress


@dataclass
class CommitFinished(Message):
    """The queued facts became journal entries: one, or with the guard the parts it kept."""

    result: Any  # kedit.session.guard.Guarded: the commits kept and the facts held back
    seconds: float


@dataclass
class CommitCancelled(Message):
    """Esc stopped the commit before any weight changed (or, guarded, after some parts were committed:
    ``partly`` says which)."""

    partly: str | None = None


@dataclass
class UndoFinished(Message):
    """The last active commit was undone."""

    entry: Any  # kedit.session.UndoEntry


@dataclass
class ExportProgressed(Message):
    """One progress report of a running export."""

    progress: Any  # kedit.editing.Progress


@dataclass
class ExportFinished(Message):
    """The edited model was written as a Hugging Face checkpoint."""

    path: Path


@dataclass
class WorkFailed(Message):
    """A worker raised; ``action`` says which (``load``, ``query``, ``commit``, ...)."""

    action: str
    error: BaseException


@dataclass
class QueueChanged(Message):
    """A change of the session's queue (``add``/``replace``/``remove``/``load``/``clear``) ended."""

    kind: str
    label: str
    error: BaseException | None = None
