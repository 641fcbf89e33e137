"""Damaged, hand-edited and incomplete session folders through the real command line: nothing a
reading command or ``repair`` does loses a commit, every problem is one line naming the file and
line (or commit), and the folder stays byte-identical where nothing should change.

Built on a copy of the shipped example (``sessions/example``: two commits on the default model).
Only the first test loads the model (``kedit query``)."""

from __future__ import annotations

import json
import shutil

import pytest

from cli_support import copy_example, kedit, kedit_here, one_error_line, snapshot

QUERY = "The Eiffel Tower is located in the city of"


@pytest.fixture
def example(tmp_path):
    return copy_example(tmp_path / "s")


@pytest.mark.model
def test_a_last_line_without_newline_survives_repair_and_a_query(example):
    """The issue's reproduction: ``truncate -s -1`` the journal, ``repair --yes``, ``query``: nothing lost."""
    journal = example / "journal.jsonl"
    journal.write_bytes(journal.read_bytes()[:-1])
    before = snapshot(example)
    p = kedit("repair", example, "--yes")
    assert p.returncode == 0 and "intact" in p.stderr, p.stderr
    assert snapshot(example) == before
    # an interrupted commit's leftovers: a reading command never deletes them (the next commit does)
    shutil.copy(example / "deltas" / "0002.safetensors", example / "deltas" / "0003.safetensors")
    (example / "deltas" / ".0003.safetensors.tmp99").write_bytes(b"partial")
    before = snapshot(example)
    p = kedit("query", example, QUERY, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["base_continuation"] is not None  # both commits were applied
    assert snapshot(example) == before


def test_a_hand_edited_commit_is_named_before_any_model_loads(example):
    """Berlin → Madrid and its recorded probability: ``replay --verify`` and ``log`` name line 3."""
    journal = example / "journal.jsonl"
    lines = journal.read_text("utf-8").splitlines()
    d = json.loads(lines[2])
    d["facts"][0]["target"] = "Madrid"
    d["efficacy"][0]["prob"] = 0.9
    lines[2] = json.dumps(d)
    journal.write_text("\n".join(lines) + "\n", "utf-8")
    before = snapshot(example)
    for args in (["replay", journal, "--verify"], ["log", example], ["repair", example, "--yes"]):
        p = kedit(*args)
        assert p.returncode == 5, p.stderr
        line = one_error_line(p.stderr)
        assert "journal.jsonl:3: the line was changed after it was written" in line and "torn" not in line
    assert snapshot(example) == before


def damage(journal, how: str) -> None:
    lines = journal.read_bytes().split(b"\n")
    if how == "bad sequence number":
        d = json.loads(lines[2])
        d["seq"] = 7
        lines[2] = json.dumps(d).encode()
    elif how == "no header":
        lines = lines[1:]
    elif how == "damaged middle line":
        lines[1] = lines[1][: len(lines[1]) // 2]
    elif how == "no lines":
        lines = [b""]
    elif how == "facts: ['oops']":
        d = json.loads(lines[1])
        d["facts"] = ["oops"]
        lines[1] = json.dumps(d).encode()
    journal.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("how, where", [
    ("bad sequence number", "journal.jsonl:3"),
    ("no header", "journal.jsonl:1"),
    ("damaged middle line", "journal.jsonl:2: not a valid journal line"),
    ("no lines", "journal.jsonl is empty"),
    ("facts: ['oops']", "journal.jsonl:2"),
])
def test_repair_names_the_real_problem_and_changes_nothing(example, capsys, how, where):
    damage(example / "journal.jsonl", how)
    before = snapshot(example)
    for args in (["repair", example], ["repair", example, "--yes"], ["log", example]):
        r = kedit_here(capsys, *args)
        assert r.returncode == 5, r
        line = one_error_line(r.stderr)
        assert where in line and "torn" not in line, line
    assert snapshot(example) == before


def test_a_torn_line_is_named_and_dropped_only_when_confirmed(example, capsys):
    journal = example / "journal.jsonl"
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"seq": 3, "time": "2026-')
    before = snapshot(example)
    r = kedit_here(capsys, "log", example)
    assert r.returncode == 5 and "journal.jsonl:4: the last line is torn" in one_error_line(r.stderr)
    r = kedit_here(capsys, "repair", example)
    assert r.returncode == 2 and "would drop the torn last line 4" in one_error_line(r.stderr)
    assert snapshot(example) == before
    r = kedit_here(capsys, "repair", example, "--yes")
    assert r.returncode == 0 and "dropped the torn last line 4" in r.stderr
    assert journal.read_bytes() == good


def test_one_blank_line_at_the_end_is_not_torn(example, capsys):
    journal = example / "journal.jsonl"
    journal.write_bytes(journal.read_bytes() + b"\n")
    before = snapshot(example)
    assert kedit_here(capsys, "log", example).returncode == 0
    r = kedit_here(capsys, "repair", example)
    assert r.returncode == 0 and "intact" in r.stderr and "torn" not in r.stderr
    assert snapshot(example) == before


def test_a_missing_or_changed_delta_file_is_reported_without_a_model(example, capsys):
    (example / "deltas" / "0001.safetensors").unlink()
    before = snapshot(example)
    for args in (["log", example], ["repair", example, "--yes"]):
        r = kedit_here(capsys, *args)
        assert r.returncode == 5
        assert "commit #1: its delta file deltas/0001.safetensors is missing" in one_error_line(r.stderr)
    r = kedit_here(capsys, "log", example, "--json")
    assert r.returncode == 5 and json.loads(r.stdout)["problems"] == ["commit #1: its delta file deltas/0001.safetensors is missing"]
    assert snapshot(example) == before
    shutil.copy(example / "deltas" / "0002.safetensors", example / "deltas" / "0001.safetensors")
    r = kedit_here(capsys, "log", example)
    assert r.returncode == 5 and "commit #1: its delta file deltas/0001.safetensors was changed" in one_error_line(r.stderr)
