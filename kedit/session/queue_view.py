"""The queue of one session as one process sees it: the facts last read, and every change made
through ``SessionFolder`` (read-modify-write under the folder lock), so a fact another process
queued meanwhile is never overwritten. Needs no model: the TUI queues facts while the model is
still loading, and ``Session`` keeps its queue in one of these.
"""

from __future__ import annotations

from kedit.facts import Fact
from kedit.session.folder import SessionFolder
from kedit.session.queue import QueueState, check_against, read_queue
from kedit.session.settings import Settings


class SessionQueue:
    def __init__(self, folder: SessionFolder, create_with: Settings | None = None, wait: float | None = None) -> None:
        """``create_with``: settings for creating the session when the first fact is queued and
        the folder does not exist yet. ``wait``: seconds to wait for another process's lock."""
        self.folder = folder
        self.create_with = create_with
        self.wait = wait
        self._state = folder.read_queue() if folder.exists() else QueueState((), 0)

    @property
    def facts(self) -> tuple[Fact, ...]:
        return self._state.facts

    def refresh(self, journal=None) -> bool:
        """Re-read the queue file; True when it changed."""
        new = self.folder.read_queue(journal) if self.folder.exists() else QueueState((), 0)
        changed = new.facts != self._state.facts
        self._state = new
        return changed

    def check(self, fact: Fact) -> None:
        """Raise ``InvalidFactError``/``ConflictingFactsError`` if ``fact`` cannot join the queue."""
        check_against(self.facts, fact)

    def add(self, fact: Fact) -> None:
        self.add_many([fact])

    def add_many(self, facts) -> int:
        """Add every fact or none (each is validated against the queue and the others first);
        returns how many were new."""
        facts = list(facts)
        if not self.folder.exists() and self.create_with is not None:
            if self.folder.create(self.create_with, facts, wait=self.wait):
                self._state = read_queue(self.folder.queue_file)
                return len(self._state.facts)
        self._state, added = self.folder.add_facts(facts, self.wait)
        return added

    def remove(self, index: int) -> Fact:
        """Remove the fact shown at ``index`` (the fact itself, wherever the file has it now)."""
        fact = self.folder.remove_fact(self._shown(index), self.wait)
        self.refresh()
        return fact

    def replace(self, index: int, fact: Fact) -> None:
        self.folder.replace_fact(self._shown(index), fact, self.wait)
        self.refresh()

    def _shown(self, index: int) -> Fact:
        n = len(self.facts)
        if not -n <= index < n:
            from kedit.errors import UsageError

            raise UsageError(f"no queued fact number {index} (the queue holds {n})")
        return self.facts[index]

    def clear_queue(self) -> None:
        self.folder.clear_queue(self.wait)
        self.refresh()

    def set_state(self, state: QueueState) -> None:
        self._state = state
