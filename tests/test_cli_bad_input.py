"""Bad input that used to print a traceback or a misleading line: each class gives one ``error:``
line naming the problem (and the file or line), the documented exit code, and leaves every file as
it was (nothing half-made). Most run the command line in this process; the headline cases run the
real entry point in a subprocess."""

from __future__ import annotations

import json
import os

import pytest

from cli_support import copy_example, kedit, kedit_here, one_error_line, snapshot

FACT = ["-s", "Japan", "-p", "The capital of {} is", "-t", "Paris"]


@pytest.fixture
def session(tmp_path, capsys):
    s = tmp_path / "s"
    assert kedit_here(capsys, "add", s, *FACT).returncode == 0
    return s


def fails(capsys, code: int, *args, match: str, unchanged=None) -> str:
    before = snapshot(unchanged) if unchanged is not None else None
    r = kedit_here(capsys, *args)
    assert r.returncode == code, r
    line = one_error_line(r.stderr)
    assert match in line, line
    if unchanged is not None:
        assert snapshot(unchanged) == before
    return line


# -- facts files --------------------------------------------------------------------------------


def test_a_folder_given_as_facts_file(tmp_path, capsys, session):
    (tmp_path / "facts.jsonl").mkdir()
    fails(capsys, 2, "add", session, "--file", tmp_path / "facts.jsonl", match="facts.jsonl is a folder, not a facts file",
          unchanged=session)
    fails(capsys, 2, "add", tmp_path / "new", "--file", tmp_path / "facts.jsonl", match="is a folder")
    assert not (tmp_path / "new").exists()


def test_a_csv_field_over_the_csv_limit(tmp_path, capsys, session):
    big = tmp_path / "big.csv"
    big.write_text("subject,prompt,target\nJapan,The capital of {} is,Rome\n" + "x" * 131_073 + ",{} is,y\n")
    fails(capsys, 2, "add", session, "--file", big, match="big.csv:3: not valid CSV (field larger than field limit",
          unchanged=session)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, capsys, session):
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufeffsubject,prompt,target\nColosseum,The {} is in,Berlin\n".encode("utf-8"))
    r = kedit_here(capsys, "add", session, "--file", bom)
    assert r.returncode == 0 and "queued 1 fact;" in r.stderr


def test_non_utf8_bytes_in_a_facts_file_name_the_line(tmp_path, capsys, session):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(json.dumps({"subject": "Japan", "prompt": "The capital of {} is", "target": "Rome"}).encode() + b"\n"
                  + b'{"subject": "Z\xfcrich", "prompt": "{} lies in", "target": "Austria"}\n')
    fails(capsys, 2, "add", session, "--file", f, match="latin1.jsonl:2: not UTF-8 text", unchanged=session)


def test_a_conflict_inside_one_file_says_so(tmp_path, capsys, session):
    f = tmp_path / "two.jsonl"
    rows = [{"subject": "Rome", "prompt": "{} is the capital of", "target": t} for t in ("Spain", "France")]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = fails(capsys, 2, "add", session, "--file", f, match="conflicts with the earlier", unchanged=session)
    assert "queued" not in line
    fails(capsys, 2, "add", session, "-s", "Japan", "-p", "The capital of {} is", "-t", "Rome",
          match="conflicts with the queued", unchanged=session)


def test_adding_a_duplicate_says_nothing_was_added(capsys, session):
    before = snapshot(session)
    r = kedit_here(capsys, "add", session, *FACT)
    assert r.returncode == 0 and "nothing added: the fact is queued already; 1 waiting" in r.stderr
    assert snapshot(session) == before
    r = kedit_here(capsys, "add", session, *FACT, "--json")
    assert json.loads(r.stdout)["added"] == 0


# -- session folders ----------------------------------------------------------------------------


def test_non_utf8_bytes_in_an_argument_create_nothing(tmp_path):
    """Bytes that are not UTF-8 (a Latin-1 terminal): refused before anything runs; no half-made folder."""
    s = tmp_path / "s"
    for args in ([b"add", s, b"-s", b"Z\xfcrich", b"-p", b"{} lies in", b"-t", b"Austria"],
                 [b"add", os.fsencode(tmp_path) + b"/caf\xe9", *map(str.encode, FACT)]):
        p = kedit(*args)
        assert p.returncode == 2, p.stderr
        assert "is not UTF-8 text" in one_error_line(p.stderr) and ("\\xfc" in p.stderr or "\\xe9" in p.stderr)
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("where, match", [
    ("/proc/kedit-session", "on a kernel file system (/proc)"),
    ("/sys/kedit-session", "on a kernel file system (/sys)"),
    ("FILE", "is a file, not a session folder"),
    ("FILE/s", "which is a file: not a place for a session"),
])
def test_a_session_where_none_can_be(tmp_path, capsys, where, match):
    (tmp_path / "file").write_text("mine")
    path = where.replace("FILE", str(tmp_path / "file"))
    fails(capsys, 5, "add", path, *FACT, match=match, unchanged=tmp_path)
    assert (tmp_path / "file").read_text() == "mine"


def test_a_session_path_that_is_a_file_for_reading_commands(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for cmd in ("log", "queue", "repair"):
        fails(capsys, 5, cmd, f, match="notes.txt is a file, not a session folder", unchanged=tmp_path)


@pytest.mark.parametrize("contents, match", [
    ({"after": 0, "facts": ["x"]}, "a fact must be an object with subject, prompt and target, not str 'x'"),
    ({"after": 0, "facts": [None]}, "not NoneType None"),
    ({"after": 0, "facts": [{"subject": "a", "prompt": "b"}]}, "lacks the text field(s): target"),
    ({"after": 0, "facts": [{"subject": "a", "prompt": "no place", "target": "c"}]}, "the subject is not in the prompt"),
    ({"after": "x", "facts": []}, "'after' is 'x', not a whole number"),
    ([], "expected an object with a list of facts"),
    ("\udcff", "not a valid queue file"),
])
def test_a_bad_queue_file_is_named(capsys, session, contents, match):
    q = session / "queue.json"
    if contents == "\udcff":
        q.write_bytes(b'{"after": 0, "facts": [{"subject": "\xff"}]}')
    else:
        q.write_text(json.dumps(contents))
    for args in (["queue", session], ["add", session, "-s", "Rome", "-p", "{} is in", "-t", "Spain"], ["log", session],
                 ["queue", session, "--clear"]):
        line = fails(capsys, 5, *args, match="queue.json is not a valid queue file", unchanged=session)
        assert match in line, line


def test_remove_and_clear_together_are_refused(capsys, session):
    fails(capsys, 2, "queue", session, "--remove", "1", "--clear", match="give --remove N or --clear, not both",
          unchanged=session)


# -- commands that load a model -----------------------------------------------------------------


@pytest.mark.parametrize("target, match", [
    ("FILE/out", "which is a file: not a place for an export"),
    ("/proc/kedit-export", "on a kernel file system (/proc)"),
    ("FILE", "is a file, not a folder for an export"),
])
def test_export_to_a_place_that_cannot_take_it_is_refused_before_loading(tmp_path, capsys, target, match):
    s = copy_example(tmp_path / "s")
    (tmp_path / "file").write_text("mine")
    r = kedit_here(capsys, "export", s, target.replace("FILE", str(tmp_path / "file")))
    assert r.returncode == 2 and match in one_error_line(r.stderr)
    assert "loading" not in r.stderr  # refused before the model was loaded
    assert (tmp_path / "file").read_text() == "mine"


def test_an_unknown_device_at_query_and_commit(tmp_path, capsys):
    s = copy_example(tmp_path / "s")
    assert kedit_here(capsys, "add", s, *FACT).returncode == 0  # something to commit
    before = snapshot(s)
    p = kedit("query", s, "The capital of Japan is", "--device", "banana")
    assert p.returncode == 2 and "unknown device 'banana'" in one_error_line(p.stderr)
    fails(capsys, 2, "commit", s, "--device", "banana", match="unknown device 'banana'")
    assert snapshot(s) == before
