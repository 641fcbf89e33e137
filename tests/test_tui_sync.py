"""The TUI and other processes on one session: it queues facts while its model is still loading,
shows facts and commits made by other processes (a real ``kedit add``, a real ``kedit commit``),
catches its weights up before its own next commit, and never writes an entry number twice."""

from __future__ import annotations

import json
import os
import threading

import pytest

from session_procs import copy_session, env, fact_args, forker, kedit, template  # noqa: F401 (fixtures)
from tui_support import RecordingApp, type_into, wait_until


@pytest.fixture
def cache(env, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE_DIR", env[1]["KEDIT_CACHE_DIR"])


async def test_facts_queue_while_the_model_loads(template, tmp_path, cache, monkeypatch):
    from kedit.session import Session

    s = copy_session(template, tmp_path / "s")
    loaded = threading.Event()
    real = Session.open_or_create.__func__

    def slow_open(cls, *args, **kwargs):
        loaded.wait(60)  # the model "loads" until the test lets it
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Session, "open_or_create", classmethod(slow_open))
    app = RecordingApp(target=str(s))
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.loading_session and app.session is None
        await type_into(pilot, "#subject", "Colosseum")
        await type_into(pilot, "#prompt", "The {} stands in")
        await type_into(pilot, "#target", "Berlin")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.queue.facts) == 1, what="the fact queued during loading")
        assert json.loads((s / "queue.json").read_text())["facts"][0]["target"] == "Berlin"
        loaded.set()
        await wait_until(pilot, lambda: app.session is not None, timeout=120, what="the session")
        assert [f.target for f in app.session.queue] == ["Berlin"]


async def test_the_tui_follows_other_processes_and_catches_up_before_committing(template, tmp_path, env, cache, forker):
    from kedit.session import Session

    _, e = env
    s = copy_session(template, tmp_path / "s")
    session = Session.open(s)
    app = RecordingApp(session=session)
    async with app.run_test(size=(100, 30)) as pilot:
        assert kedit("add", s, *fact_args(1), env=e).returncode == 0  # another terminal
        await wait_until(pilot, lambda: app.queue_pane.border_subtitle == "1 queued", timeout=20,
                         what="the fact added by another process")

        other = forker.run("commit", s)  # another process commits it while the TUI is open
        assert other.wait() == 0, other.text()
        await wait_until(pilot, lambda: len(app.log_pane.entries) == 2, timeout=20, what="the other commit")
        journal = json.loads(kedit("log", s, "--json", env=e).stdout)
        assert app.session.fingerprint() == journal["fingerprint"]  # the TUI's weights caught up
        assert app.queue_pane.border_subtitle == "empty"

        assert kedit("add", s, *fact_args(2), env=e).returncode == 0
        await wait_until(pilot, lambda: len(app.session.queue) == 1, timeout=20, what="the second fact")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(app.log_pane.entries) == 3 and not app.committing, timeout=120,
                         what="the TUI's commit")
    log = json.loads(kedit("log", s, "--json", env=e).stdout)
    assert [x["seq"] for x in log["entries"]] == [1, 2, 3] and log["queue"] == []
    assert [f["subject"] for f in log["entries"][2]["facts"]] == ["Tower 2"]
