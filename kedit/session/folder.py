"""A session folder on disk: its files, its locks, and every change made to them (no torch).

    sessions/<name>/
        session.json     settings for the next commits (``settings.py``)
        journal.jsonl    header + one line per commit/undo (``journal.py``), created on first load
        queue.json       facts waiting for the next commit (``queue.py``)
        deltas/NNNN.safetensors   rank-E factors of each commit (``store.py``)
        .journal.lock, .folder.lock   who is changing the session right now (``lock.py``)

Every change goes through ``SessionFolder``: under the folder lock it reads the files as they
are now, changes them and writes them back atomically (read-modify-write), so two processes never
overwrite each other's changes. The ``Session``, the ``add``/``queue``/``settings`` commands and the
TUI all change a session here and nowhere else. Readers (``log``, ``query``, ``replay``,
``export``) read without a lock and never delete or rewrite a file; what a crash leaves behind
(a delta file no journal line names, temp files) is removed by the next commit, undo or repair
while it holds both locks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kedit.errors import CorruptJournalError, SessionError, UsageError
from kedit.facts import Fact
from kedit.paths import default_model_cache, sessions_dir
from kedit.session import lock
from kedit.session.atomic import atomic_write_json
from kedit.session.journal import JOURNAL_NAME, Journal, read_journal
from kedit.session.queue import QueueState, check_against, check_batch, read_queue, reconcile, write_queue
from kedit.session.settings import SETTINGS_NAME, Settings, read_settings, settings_from_header

QUEUE_NAME = "queue.json"
DELTAS_DIR = "deltas"
_LOCK_FILES = (lock.JOURNAL_LOCK, lock.FOLDER_LOCK)


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A bare name goes to ``sessions/<name>/``; anything with a slash (or an existing folder) is a path."""
    s = str(path_or_name)
    if not s.strip():
        raise UsageError("empty session name")
    p = Path(s).expanduser()
    if os.sep in s or "/" in s or s in (".", "..") or p.is_absolute():
        out = p.resolve()
    elif p.is_dir() and (p / SETTINGS_NAME).exists():
        out = p.resolve()
    else:
        out = (sessions_dir() / s).resolve()
    if out.exists() and not out.is_dir():
        raise SessionError(f"{out} is a file, not a session folder", hint="give a session name or a folder")
    return out


def is_ours(name: str) -> bool:
    """A lock file, or the temp file of an atomic write of this folder's own files."""
    return name.startswith(_LOCK_FILES) or (name.startswith((f".{SETTINGS_NAME}.tmp", f".{QUEUE_NAME}.tmp")))


@dataclass(frozen=True)
class SessionFolder:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def settings_file(self) -> Path:
        return self.path / SETTINGS_NAME

    @property
    def journal_file(self) -> Path:
        return self.path / JOURNAL_NAME

    @property
    def queue_file(self) -> Path:
        return self.path / QUEUE_NAME

    @property
    def deltas_dir(self) -> Path:
        return self.path / DELTAS_DIR

    def exists(self) -> bool:
        return self.settings_file.exists() or self.journal_file.exists()

    def has_journal(self) -> bool:
        return self.journal_file.exists()

    # -- locks (lock.py) ------------------------------------------------------------------------

    def journal_lock(self, action: str, wait: float | None = None):
        """Held by commit, undo and repair for their whole run (default: refuse at once if taken)."""
        return lock.hold(self.path / lock.JOURNAL_LOCK, action, wait, 0.0)

    def folder_lock(self, action: str, wait: float | None = None):
        """Held for a change of the queue, the settings or the folder (default: wait a little)."""
        return lock.hold(self.path / lock.FOLDER_LOCK, action, wait, lock.FOLDER_PATIENCE)

    # -- reading (no lock; never writes) --------------------------------------------------------

    def read_settings(self) -> Settings:
        if self.settings_file.exists():
            return read_settings(self.settings_file)
        if self.journal_file.exists():
            return settings_from_header(self.read_journal().header)
        raise SessionError(f"no session at {self.path}", hint="create one with 'kedit add' or 'kedit tui'")

    def read_journal(self) -> Journal:
        """The journal as it is now. A line being appended by a writer at this very moment can
        look torn for a few microseconds: a bad read is retried briefly before it is reported."""
        for attempt in range(5):
            try:
                return read_journal(self.journal_file)
            except CorruptJournalError:
                if attempt == 4:
                    raise
                time.sleep(0.02)
        raise AssertionError("unreachable")

    def journal_or_none(self) -> Journal | None:
        return self.read_journal() if self.journal_file.exists() else None

    def read_queue(self, journal: Journal | None = None) -> QueueState:
        """The queue, without facts that a commit already consumed (see ``queue.reconcile``)."""
        state = read_queue(self.queue_file)
        j = journal if journal is not None else self.journal_or_none()
        if j is None:
            return state
        return reconcile(state, [(c.seq, c.facts) for c in j.commits()])

    def num_layers(self, model: str | None = None) -> int | None:
        """The model's layer count when it is known without loading it (journal header, config.json)."""
        if self.journal_file.exists():
            return self.read_journal().header.model.num_layers
        return config_num_layers(model) if model is not None else None

    # -- creating -------------------------------------------------------------------------------

    def create(self, settings: Settings, facts=(), wait: float | None = None) -> bool:
        """Create the session with ``settings`` and ``facts`` queued. Returns False (and creates
        nothing) when another process created it first; refuses a foreign non-empty folder."""
        settings = settings.check(config_num_layers(settings.model))
        queue = check_batch((), list(facts))  # everything is checked before anything is written
        self.refuse_foreign()
        self.path.mkdir(parents=True, exist_ok=True)
        with self.folder_lock("creating the session", wait):
            if self.exists():
                return False
            self.refuse_foreign()
            atomic_write_json(self.settings_file, settings.to_dict())
            if queue:
                write_queue(self.queue_file, QueueState(queue, 0))
        return True

    def refuse_foreign(self) -> None:
        from kedit.paths import check_new_place

        if self.path.exists() and not self.path.is_dir():
            raise SessionError(f"{self.path} is a file, not a session folder", hint="pick another name or path")
        check_new_place(self.path, "a session", SessionError)  # a kernel file system, under a file, not writable
        # list first, then ask whether it is a session: another process creating this session may
        # rename its settings file into place in between, and a session's files are its own
        names = [p.name for p in self.path.iterdir()] if self.path.is_dir() else []
        if any(not is_ours(n) for n in names) and not self.exists():
            raise SessionError(f"{self.path} is a non-empty folder that is not a session", hint="pick another name or path")

    # -- changing the settings ------------------------------------------------------------------

    def change_settings(self, change: Callable[[Settings], Settings], wait: float | None = None,
                        num_layers: int | None = None) -> Settings:
        """Read the settings, apply ``change``, check the result (against the model's layer count
        when known) and write it — or raise and write nothing."""
        with self.folder_lock("changing the settings", wait):
            current = self.read_settings()
            n = num_layers if num_layers is not None else self.num_layers(current.model)
            new = change(current).check(n)
            if new != current or not self.settings_file.exists():
                atomic_write_json(self.settings_file, new.to_dict())
            return new

    # -- changing the queue ---------------------------------------------------------------------

    def change_queue(self, change: Callable[[tuple[Fact, ...]], tuple[Fact, ...]], wait: float | None = None,
                     action: str = "changing the queue") -> QueueState:
        """Read-modify-write of ``queue.json`` under the folder lock: ``change`` gets the facts
        queued right now (another process's additions included) and returns the new ones."""
        if not self.exists():
            raise SessionError(f"no session at {self.path}", hint="create one with 'kedit add' or 'kedit tui'")
        with self.folder_lock(action, wait):
            journal = self.journal_or_none()
            now = self.read_queue(journal)
            facts = tuple(change(now.facts))
            state = QueueState(facts, journal.entries[-1].seq if journal is not None and journal.entries else 0)
            if state != read_queue(self.queue_file):
                write_queue(self.queue_file, state)
            return state

    def add_facts(self, facts, wait: float | None = None) -> tuple[QueueState, int]:
        """Queue every fact or none (each checked against the queue and the others first).
        Returns the queue and how many facts were new (an exact duplicate is queued once)."""
        facts = list(facts)
        before: list[int] = []

        def add(q):
            before.append(len(q))
            return check_batch(q, facts)

        state = self.change_queue(add, wait, "queuing facts")
        return state, len(state.facts) - before[0]

    def remove_fact(self, which: int | Fact, wait: float | None = None) -> Fact:
        """Remove a queued fact: number ``which`` (from 0; negative from the end) in the queue as
        it is now, or the fact ``which`` wherever it is now (a view that may be out of date names
        the fact, not its place)."""
        removed: list[Fact] = []

        def drop(q):
            i = _find(q, which)
            removed.append(q[i])
            return q[:i] + q[i + 1:]

        self.change_queue(drop, wait, "removing a queued fact")
        return removed[0]

    def replace_fact(self, which: int | Fact, fact: Fact, wait: float | None = None) -> None:
        """Replace a queued fact (found as in ``remove_fact``) by ``fact``."""
        def swap(q):
            i = _find(q, which)
            check_against(q[:i] + q[i + 1:], fact)
            return q[:i] + (fact,) + q[i + 1:]

        self.change_queue(swap, wait, "replacing a queued fact")

    def clear_queue(self, wait: float | None = None) -> int:
        """Empty the queue; returns how many facts it held."""
        n: list[int] = []
        self.change_queue(lambda q: (n.append(len(q)), ())[1], wait, "clearing the queue")
        return n[0]

    # -- crash leftovers ------------------------------------------------------------------------

    def remove_leftovers(self, journal: Journal) -> list[Path]:
        """Delete what an interrupted write left: delta files no journal line names and temp
        files. Only a writer holding both locks may call this (no other write is in flight)."""
        from kedit.session import store

        known = {c.delta_file for c in journal.commits()}
        gone = store.orphans(self.path, known) + sorted(self.path.glob(".*.tmp*"))
        gone += [p for p in self.path.glob(".*.lock.holder.*")]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone


def _find(queue, which: int | Fact) -> int:
    n = len(queue)
    if isinstance(which, Fact):
        if which not in queue:
            raise UsageError(f"{which.label!r} is no longer queued (another process changed the queue)")
        return queue.index(which)
    if not -n <= which < n:
        raise UsageError(f"no queued fact number {which + 1 if which >= 0 else which} (the queue holds {n})",
                         hint="'kedit queue SESSION' lists them")
    return which % n


def config_num_layers(model: str) -> int | None:
    """The layer count in a local model folder's config.json (the default model's once it is
    converted); None when it cannot be known without loading the model."""
    folder = default_model_cache() if model == "default" else Path(model).expanduser()
    try:
        cfg = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    cfg = cfg.get("text_config", cfg) if "num_hidden_layers" not in cfg and "n_layer" not in cfg else cfg
    n = cfg.get("num_hidden_layers", cfg.get("n_layer")) if isinstance(cfg, dict) else None
    return n if isinstance(n, int) and n > 0 else None
