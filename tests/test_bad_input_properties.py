"""Property-based bad input (hypothesis): random and damaged fact fields, facts files, queue files
and journal lines (random bytes, truncations, wrong types, markup, control characters) never give
a traceback, exit with a documented code, print one ``error:`` line, and write nothing on error.

The command line runs in this process (``kedit.cli.run``), so each example costs milliseconds;
example counts stay small so the whole file runs in well under a minute."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cli_support import EXAMPLE, kedit_here, one_error_line, snapshot
from kedit.errors import JournalError
from kedit.session.journal import read_journal, torn_last_line

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MARKUP = st.sampled_from(["[red]", "[/x]", "[citation needed]", "[/]", "\\", "[b]x[/b]", "[link=x]"])
CONTROL = st.sampled_from(["\x1b[2J", "\x1b]0;t\x07", "\x00", "\r", "\n", "\t", "\x9b", "\u202e", "\x7f", "\ud800"])
TEXT = st.lists(st.one_of(st.text(max_size=12), MARKUP, CONTROL, st.just("{}")), max_size=5).map("".join)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


class Folder:
    """A fresh temp folder per hypothesis example (pytest's tmp_path is one per test)."""

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="kedit-prop-"))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_outcome(r, allowed: tuple[int, ...]) -> None:
    """A documented exit code; a failure is one ``error:`` line (plus a hint); nothing raw reaches the terminal."""
    assert r.returncode in allowed, r
    if r.returncode:
        one_error_line(r.stderr)
    assert "\x1b" not in r.stdout + r.stderr and "\x9b" not in r.stdout + r.stderr


@SETTINGS
@given(subject=TEXT, prompt=TEXT, target=TEXT)
@example(subject="Eiffel Tower", prompt="The {} is in", target="Lon[/note]don\x1b[2J")
def test_any_fact_fields(capsys, subject, prompt, target):
    with Folder() as root:
        s = root / "s"
        r = kedit_here(capsys, "add", s, "-s", subject, "-p", prompt, "-t", target)
        check_outcome(r, (0, 2))
        if r.returncode:
            assert not s.exists()  # nothing half-made
            return
        check_outcome(kedit_here(capsys, "queue", s), (0,))


@SETTINGS
@given(argument=st.text(min_size=1, max_size=6).map(lambda t: t + "\udcff"))
def test_arguments_that_are_not_utf8(capsys, argument):
    with Folder() as root:
        r = kedit_here(capsys, "add", root / "s", "-s", argument, "-p", "{} is", "-t", "x")
        check_outcome(r, (2,))
        assert "is not UTF-8 text" in r.stderr and not (root / "s").exists()


GOOD_JSONL = "".join(json.dumps({"subject": f"S{i}", "prompt": "The {} is in", "target": f"T{i}"}) + "\n" for i in range(4))
GOOD_CSV = "subject,prompt,target\n" + "".join(f"S{i},The {{}} is in,T{i}\n" for i in range(4))


def facts_files():
    good = st.sampled_from([("f.jsonl", GOOD_JSONL.encode()), ("f.csv", GOOD_CSV.encode())])
    cut = good.flatmap(lambda nd: st.integers(0, len(nd[1])).map(lambda i: (nd[0], nd[1][:i])))
    noise = st.tuples(st.sampled_from(["f.jsonl", "f.csv", "f.tsv"]), st.binary(max_size=80))
    rows = st.lists(st.fixed_dictionaries({"subject": JSON | TEXT, "prompt": JSON | TEXT, "target": JSON | TEXT}),
                    min_size=1, max_size=4)
    typed = rows.map(lambda rs: ("f.jsonl", "".join(json.dumps(r) + "\n" for r in rs).encode()))
    spliced = st.tuples(good, st.binary(max_size=20), st.integers(0, 200)).map(
        lambda t: (t[0][0], t[0][1][: t[2]] + t[1] + t[0][1][t[2]:]))
    return st.one_of(cut, noise, typed, spliced)


@SETTINGS
@given(file=facts_files())
def test_any_facts_file(capsys, file):
    name, data = file
    with Folder() as root:
        s = root / "s"
        assert kedit_here(capsys, "add", s, "-s", "Japan", "-p", "The capital of {} is", "-t", "Paris").returncode == 0
        (root / name).write_bytes(data)
        before = snapshot(s)
        r = kedit_here(capsys, "add", s, "--file", root / name)
        check_outcome(r, (0, 2))
        if r.returncode:
            assert name in r.stderr and snapshot(s) == before


def queue_files():
    good = json.dumps({"after": 0, "facts": [{"subject": "Japan", "prompt": "The capital of {} is", "target": "Paris"}]})
    cut = st.integers(0, len(good)).map(lambda i: good[:i].encode())
    typed = st.fixed_dictionaries({"after": JSON, "facts": JSON | st.lists(JSON, max_size=3)}).map(
        lambda d: json.dumps(d).encode())
    return st.one_of(cut, typed, st.binary(max_size=60), JSON.map(lambda v: json.dumps(v).encode()))


@SETTINGS
@given(data=queue_files())
def test_any_queue_file(capsys, data):
    with Folder() as root:
        s = root / "s"
        assert kedit_here(capsys, "add", s, "-s", "Japan", "-p", "The capital of {} is", "-t", "Paris").returncode == 0
        (s / "queue.json").write_bytes(data)
        for args in (["queue", s], ["add", s, "-s", "Rome", "-p", "{} is in", "-t", "Italy"], ["queue", s, "--remove", "1"]):
            before = snapshot(s)
            r = kedit_here(capsys, *args)
            check_outcome(r, (0, 2, 5))
            if r.returncode:
                assert snapshot(s) == before


EXAMPLE_JOURNAL = (EXAMPLE / "journal.jsonl").read_bytes()


def damaged_journals():
    lines = EXAMPLE_JOURNAL.split(b"\n")[:-1]
    cut = st.integers(0, len(EXAMPLE_JOURNAL)).map(lambda i: EXAMPLE_JOURNAL[:i])

    def set_field(t):
        n, key, value = t
        d = json.loads(lines[n])
        keys = sorted(d)
        d[keys[key % len(keys)]] = value
        out = list(lines)
        out[n] = json.dumps(d).encode()
        return b"\n".join(out) + b"\n"

    typed = st.tuples(st.integers(0, len(lines) - 1), st.integers(0, 40), JSON).map(set_field)
    replaced = st.tuples(st.integers(0, len(lines) - 1), st.binary(max_size=40) | JSON.map(lambda v: json.dumps(v).encode())).map(
        lambda t: b"\n".join(lines[: t[0]] + [t[1]] + lines[t[0] + 1:]) + b"\n")
    return st.one_of(cut, typed, replaced)


@settings(max_examples=150, deadline=None)
@given(data=damaged_journals())
def test_reading_a_damaged_journal_raises_only_journal_errors(data):
    with Folder() as root:
        j = root / "journal.jsonl"
        j.write_bytes(data)
        try:
            read_journal(j)
        except JournalError as exc:
            assert str(exc).startswith(str(j)) or "journal" in str(exc)
        torn = torn_last_line(j)
        if torn is not None:  # only a torn end is ever dropped, and what stays reads as a whole journal
            assert data[: torn.offset] + torn.dropped == data
            j.write_bytes(data[: torn.offset])
            read_journal(j)


@SETTINGS
@given(data=damaged_journals())
def test_any_damaged_journal_through_log_and_repair(capsys, data):
    assume(data != EXAMPLE_JOURNAL)
    with Folder() as root:
        s = shutil.copytree(EXAMPLE, root / "s")
        (s / "journal.jsonl").write_bytes(data)
        before = snapshot(s)
        for args in (["log", s], ["repair", s], ["queue", s]):
            check_outcome(kedit_here(capsys, *args), (0, 2, 5))
            assert snapshot(s) == before
        r = kedit_here(capsys, "repair", s, "--yes")
        check_outcome(r, (0, 5))
        after = (s / "journal.jsonl").read_bytes()
        assert data.startswith(after)  # repair only ever cuts a torn end
        if after != data:
            assert r.returncode == 0 and read_journal(s).entries is not None
