"""Several kedit processes on one session at once, for real: parallel ``kedit add`` processes
(one of them creating the session), two committers, an ``add`` during a long commit, and the
lock's holder named in the refusal. See ``test_session_crash.py`` for the forked CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from kedit.errors import SessionBusyError
from kedit.session.folder import SessionFolder
from session_procs import PY, copy_session, env, fact_args, forker, kedit, template  # noqa: F401 (fixtures)


def test_twenty_parallel_adds_all_survive_and_create_the_session_once(tmp_path, env, template):
    _, e = env
    model = SessionFolder(template).read_settings().model
    s = tmp_path / "new"
    procs = [subprocess.Popen([PY, "-m", "kedit", "add", str(s), *fact_args(i), "--model", model], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=e) for i in range(20)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0] * 20, [err for code, err in results if code]
    assert sum("created session" in err for _, err in results) == 1
    queue = json.loads(kedit("queue", s, "--json", env=e).stdout)["queue"]
    assert sorted(f["subject"] for f in queue) == sorted(f"Tower {i}" for i in range(20))


def test_a_second_committer_is_refused_naming_the_holder_or_waits(tmp_path, env, template, forker):
    _, e = env
    s = copy_session(template, tmp_path / "s")
    assert kedit("add", s, *fact_args(1), env=e).returncode == 0
    go = tmp_path / "go"
    first = forker.run("commit", s, "--json", point="editing", env={"KEDIT_TEST_RESUME": str(go)})
    first.wait_for("kedit-test: paused at editing")  # the first commit is computing its edit

    second = forker.run("commit", s)
    assert second.wait() == 5
    err = second.text()
    assert f"pid {first.pid}" in err and "kedit commit" in err and "committing since" in err and "--wait" in err, err
    assert "Traceback" not in err and err.count("\n") <= 3

    # an add during the commit survives it; a committer that waits commits it next
    added = kedit("add", s, *fact_args(2), env=e)
    assert added.returncode == 0, added.stderr
    waiting = forker.run("commit", s, "--wait", "120", "--json")
    time.sleep(0.5)
    assert waiting.status is None and "commit" not in waiting.text()
    go.touch()
    assert first.wait() == 0, first.text()
    assert waiting.wait() == 0, waiting.text()
    log = json.loads(kedit("log", s, "--json", env=e).stdout)
    assert [e_["seq"] for e_ in log["entries"]] == [1, 2, 3]
    assert [[f["subject"] for f in e_["facts"]] for e_ in log["entries"][1:]] == [["Tower 1"], ["Tower 2"]]
    assert log["queue"] == []


def test_a_busy_session_is_named_in_process_too(tmp_path, template):
    """The lock is per operation and per process: inside one process another thread waits its turn."""
    import threading

    s = SessionFolder(copy_session(template, tmp_path / "s"))
    started, release = threading.Event(), threading.Event()

    def hold():
        with s.journal_lock("committing"):
            started.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    started.wait(10)
    try:
        with pytest.raises(SessionBusyError, match=rf"pid {os.getpid()} .*committing since"):
            with s.journal_lock("undoing"):
                pass
        s.add_facts([])  # the folder lock is another lock: queue changes go on during a commit
    finally:
        release.set()
        t.join()
    with s.journal_lock("undoing", wait=1):
        pass


def test_a_query_and_a_commit_starting_a_new_session_at_once_share_one_journal(tmp_path, env, template, forker):
    """Both load the model of a session 'kedit add' created; one writes the journal header, the other opens it."""
    import dataclasses

    from kedit.session.settings import Settings

    _, e = env
    st = SessionFolder(template).read_settings()
    fresh = SessionFolder(tmp_path / "fresh")
    fresh.create(dataclasses.replace(Settings(), model=st.model, corpus=st.corpus, hparams=st.hparams, dtype="float32",
                                     device="cpu"), [])
    assert kedit("add", fresh.path, *fact_args(3), env=e).returncode == 0
    query = forker.run("query", fresh.path, "The Tower 3 is located in the city of", "--json")
    commit = forker.run("commit", fresh.path, "--json")
    assert query.wait() == 0, query.text()
    assert commit.wait() == 0, commit.text()
    log = json.loads(kedit("log", fresh.path, "--json", env=e).stdout)
    assert [x["seq"] for x in log["entries"]] == [1] and log["queue"] == []
