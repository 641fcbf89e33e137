"""Kill -9 at every crash point of a commit, an undo and a queue change, for real.

Each CLI process is a real process (forked by ``crash_driver.py --serve``, which wraps the
function at the crash point to print a marker and wait — in that process only) and is killed
with SIGKILL when the marker appears. Afterwards ``kedit log`` and ``kedit replay --verify``
succeed, the session opens with weights that match its journal, and every queued fact is there
exactly once (or, once committed, gone), and the next writer cleans up what the crash left.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from kedit.facts import Fact
from session_procs import copy_session, env, fact_args, files_of, forker, kedit, template  # noqa: F401 (fixtures)

QUEUED = [Fact(f"Tower {i}", "The {} is located in the city of", f"City{i}") for i in (1, 2)]


@pytest.fixture
def session(template, tmp_path, env):
    """A copy of the template with two facts queued (added through the CLI code)."""
    from kedit.session.folder import SessionFolder

    s = copy_session(template, tmp_path / "s")
    SessionFolder(s).add_facts(QUEUED)
    return s


def crash(forker, point: str, *args) -> None:
    child = forker.run(*args, point=point)
    child.wait_for(f"kedit-test: paused at {point}")
    assert child.kill() == -signal.SIGKILL


def check_consistent(s, env, queued: list[Fact], entries: int) -> dict:
    """log and replay --verify succeed; the weights match the journal; the queue is ``queued``."""
    from kedit.session import Session

    _, e = env
    log = kedit("log", s, "--json", env=e)
    assert log.returncode == 0, log.stderr
    info = json.loads(log.stdout)
    assert len(info["entries"]) == entries
    assert [(f["subject"], f["target"]) for f in info["queue"]] == [(f.subject, f.target) for f in queued]
    old = os.environ.get("KEDIT_CACHE_DIR")
    os.environ["KEDIT_CACHE_DIR"] = e["KEDIT_CACHE_DIR"]
    try:
        from typer.testing import CliRunner

        from kedit.cli import app

        r = CliRunner().invoke(app, ["replay", str(s), "--verify", "--json"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.splitlines()[-1])["ok"]
        opened = Session.open(s)
        assert opened.fingerprint() == info["fingerprint"] and opened.queue == tuple(queued)
    finally:
        if old is None:
            os.environ.pop("KEDIT_CACHE_DIR")
        else:
            os.environ["KEDIT_CACHE_DIR"] = old
    return info


@pytest.mark.parametrize("point", ["delta-tmp", "delta-renamed"])
def test_commit_killed_before_its_journal_line(session, forker, env, point):
    journal = (session / "journal.jsonl").read_bytes()
    crash(forker, point, "commit", session)
    assert (session / "journal.jsonl").read_bytes() == journal  # the commit never happened
    leftovers = sorted(p.name for p in (session / "deltas").iterdir())
    if point == "delta-renamed":
        assert leftovers == ["0001.safetensors", "0002.safetensors"]  # an orphan: no journal line names it
    else:
        assert leftovers[1:] == ["0001.safetensors"] and leftovers[0].startswith(".0002.safetensors.tmp")
    before = files_of(session)
    check_consistent(session, env, QUEUED, entries=1)
    assert files_of(session) == before  # readers delete and rewrite nothing
    # the next commit cleans up under the locks and records the same facts as #2
    child = forker.run("commit", session, "--json")
    assert child.wait() == 0, child.text()
    assert sorted(p.name for p in (session / "deltas").iterdir()) == ["0001.safetensors", "0002.safetensors"]
    check_consistent(session, env, [], entries=2)


@pytest.mark.parametrize("point", ["journal-written", "queue-written", "query-copy-sync"])
def test_commit_killed_after_its_journal_line(session, forker, env, point):
    crash(forker, point, "commit", session)
    info = check_consistent(session, env, [], entries=2)  # the commit stands; its facts left the queue
    assert [f["subject"] for f in info["entries"][1]["facts"]] == [f.subject for f in QUEUED]
    # a fact queued now is the only one in the queue (the committed ones are not resurrected)
    r = kedit("add", session, *fact_args(7), env=env[1])
    assert r.returncode == 0, r.stderr
    assert [f["subject"] for f in json.loads(kedit("queue", session, "--json", env=env[1]).stdout)["queue"]] == ["Tower 7"]


def test_undo_killed_after_its_journal_line(session, forker, env):
    crash(forker, "journal-written", "undo", session)
    info = check_consistent(session, env, QUEUED, entries=2)
    assert info["active"] == [] and info["fingerprint"] == info["header"]["model"]["editable_fingerprint"]


@pytest.mark.parametrize("point", ["queue-tmp", "queue-written"])
def test_queue_change_killed(session, forker, env, point):
    crash(forker, point, "add", session, *fact_args(5))
    added = [Fact("Tower 5", "The {} is located in the city of", "City5")] if point == "queue-written" else []
    check_consistent(session, env, QUEUED + added, entries=1)
    # the next writer goes on from there; nothing is lost or duplicated
    r = kedit("add", session, *fact_args(5), env=env[1])
    assert r.returncode == 0, r.stderr
    child = forker.run("commit", session)
    assert child.wait() == 0, child.text()
    info = check_consistent(session, env, [], entries=2)
    assert [f["subject"] for f in info["entries"][1]["facts"]] == ["Tower 1", "Tower 2", "Tower 5"]
    assert not [p for p in session.iterdir() if ".tmp" in p.name]
