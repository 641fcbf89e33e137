"""The session folder API (no model, no torch): queue changes are read-modify-write, a commit's
facts leave the queue exactly, a view that is out of date names facts rather than places."""

from __future__ import annotations

import json

import pytest

from kedit.errors import ConflictingFactsError, SessionError, UsageError
from kedit.facts import Fact
from kedit.session.folder import SessionFolder
from kedit.session.queue import QueueState, reconcile
from kedit.session.queue_view import SessionQueue
from kedit.session.settings import Settings

F = [Fact(f"Tower {i}", "The {} is located in the city of", f"City{i}") for i in range(5)]


@pytest.fixture
def folder(tmp_path):
    f = SessionFolder(tmp_path / "s")
    assert f.create(Settings(), F[:2])
    return f


def test_two_views_of_one_queue_never_overwrite_each_other(folder):
    mine, theirs = SessionQueue(folder), SessionQueue(folder)
    mine.add(F[2])
    theirs.add(F[3])  # theirs had not seen F[2]: it is kept all the same
    assert folder.read_queue().facts == tuple(F[:4])
    theirs.remove(0)  # the fact theirs shows at 0 ...
    mine.remove(1)  # ... and the fact mine shows at 1 (F[1]), wherever they are now
    assert folder.read_queue().facts == (F[2], F[3])
    theirs.refresh()
    theirs.remove(0)  # F[2] goes; mine still shows it at 0
    with pytest.raises(UsageError, match="no longer queued"):
        mine.replace(0, F[4])
    mine.refresh()
    mine.replace(0, F[4])
    assert folder.read_queue().facts == (F[4],)
    with pytest.raises(ConflictingFactsError):
        mine.add_many([F[0], Fact("Tower 4", "The {} is located in the city of", "Elsewhere")])
    assert folder.read_queue().facts == (F[4],)  # all or nothing

def test_a_commit_consumes_exactly_its_facts():
    queued = QueueState((F[0], F[1], F[2]), after=3)
    assert reconcile(queued, [(3, (F[0],))]) == queued  # an older commit: nothing to drop
    assert reconcile(queued, [(3, (F[0],)), (4, (F[0], F[2]))]) == QueueState((F[1],), 4)


def test_creating_refuses_foreign_folders_and_files_and_leaves_nothing_on_bad_input(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(SessionError, match="not a session"):
        SessionFolder(tmp_path / "foreign").create(Settings())
    (tmp_path / "file").write_text("x")
    with pytest.raises(SessionError, match="is a file"):
        SessionFolder(tmp_path / "file").create(Settings())
    with pytest.raises(UsageError):
        SessionFolder(tmp_path / "new").create(Settings(method="lora"))
    with pytest.raises(UsageError):
        SessionFolder(tmp_path / "new").create(Settings(), [Fact("X", "no placeholder", "Y")])
    assert not (tmp_path / "new").exists()


def test_a_session_another_process_is_creating_is_not_taken_for_a_foreign_folder(tmp_path, monkeypatch):
    # The other process renames settings.json into place between this one's two looks at the
    # folder: asked first whether it is a session (not yet), then what it holds (settings.json).
    first = SessionFolder(tmp_path / "s")
    first.path.mkdir()
    real_exists = SessionFolder.exists
    calls = []

    def exists_while_another_creates(self):
        calls.append(1)
        was = real_exists(self)
        if len(calls) == 1:
            (self.path / "settings.json").write_text(json.dumps(Settings().to_dict()))
        return was

    monkeypatch.setattr(SessionFolder, "exists", exists_while_another_creates)
    first.refuse_foreign()  # no error: the folder is becoming a session, not someone else's


def test_readers_write_nothing(folder):
    (folder.path / "queue.json").write_text(json.dumps({"after": 0, "facts": [F[0].to_dict()]}))
    before = sorted(folder.path.iterdir())
    assert folder.read_queue().facts == (F[0],) and folder.read_settings() == Settings()
    assert sorted(folder.path.iterdir()) == before
