"""The journal, the queue and facts files: the light parts of ring 2 (no model, no torch)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from kedit.errors import ConflictingFactsError, CorruptJournalError, FactFileError, InvalidFactError, JournalError
from kedit.facts import Fact
from kedit.session.factfile import read_facts
from kedit.session.journal import (
    BaseModelRef, CommitEntry, FactScore, JournalHeader, UndoEntry, append_entry, read_journal, truncate_torn_line,
    write_header,
)
from kedit.session.queue import QueueState, check_batch, read_queue, reconcile, write_queue

F1 = Fact("Eiffel Tower", "The {} is located in the city of", "London")
F2 = Fact("Japan", "The capital of {} is", "Paris")


def header() -> JournalHeader:
    ref = BaseModelRef(name="default", path="/m", config_hash="c" * 16, fingerprint="c" * 16 + "-" + "f" * 16,
                       editable_fingerprint="f" * 32, model_type="llama", num_layers=30)
    return JournalHeader(kedit_version="0.1.0", created="2026-01-01T00:00:00Z", model=ref, dtype="float32", device="cpu",
                         method="emmet", layers=(3,), hparams={"method": "emmet", "layers": [3]}, seed=0,
                         prefixes=("The a.", "I b."), corpus="wiki-sample", corpus_fingerprint="wiki-sample-x")


def commit(seq: int, facts=(F1,), fp: str = "1" * 32) -> CommitEntry:
    return CommitEntry(seq=seq, time="t", facts=tuple(facts), method="emmet", layers=(3,), hparams={"lam": 0.0},
                       timings={"values": 1.0}, delta_file=f"deltas/{seq:04d}.safetensors", delta_sha256="0" * 64,
                       fingerprint=fp, efficacy=tuple(FactScore(prob=0.7, argmax=True, prob_before=0.01) for _ in facts),
                       value_steps=(5,) * len(facts))


@pytest.fixture
def journal(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_header(path, header())
    append_entry(path, commit(1, (F1, F2)))
    append_entry(path, commit(2, (F2,), fp="2" * 32))
    append_entry(path, UndoEntry(seq=3, time="t", undoes=2, fingerprint="1" * 32))
    return path


def test_round_trip_and_active_commits(journal):
    j = read_journal(journal)
    assert j.header == header()
    assert [e.kind for e in j.entries] == ["commit", "commit", "undo"]
    assert j.entries[0] == commit(1, (F1, F2))
    assert [c.seq for c in j.active_commits()] == [1]
    assert j.fingerprint == "1" * 32 and j.next_seq == 4
    assert read_journal(journal.parent) == j  # a folder holding journal.jsonl works too
    assert all(line.endswith("}") for line in journal.read_text().splitlines())


def test_header_is_written_once(journal):
    with pytest.raises(JournalError, match="exists already"):
        write_header(journal, header())


def test_torn_last_line_is_reported_then_repaired(journal):
    good = journal.read_bytes()
    line = json.dumps(commit(4).to_dict()).encode()
    journal.write_bytes(good + line[: len(line) // 2])  # a write cut short by a crash
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:5: the last line is torn") as exc:
        read_journal(journal)
    assert "kedit repair" in exc.value.hint
    assert journal.read_bytes() == good + line[: len(line) // 2]  # reading never changes the file
    dropped = truncate_torn_line(journal)
    assert dropped == line[: len(line) // 2].decode()
    assert journal.read_bytes() == good
    assert len(read_journal(journal).entries) == 3
    assert truncate_torn_line(journal) is None  # intact: nothing to do


def test_complete_last_line_without_newline_is_whole(journal):
    """An editor or ``truncate -s -1`` takes the final newline: the line is whole, not torn."""
    good = journal.read_bytes()
    journal.write_bytes(good[:-1])
    assert read_journal(journal) == read_journal_bytes(journal.parent / "again.jsonl", good)
    assert truncate_torn_line(journal) is None and journal.read_bytes() == good[:-1]  # nothing to repair
    append_entry(journal, commit(4, fp="4" * 32))  # the newline comes back first, in the same write
    assert journal.read_bytes().startswith(good) and [e.seq for e in read_journal(journal).entries] == [1, 2, 3, 4]


def read_journal_bytes(path, data: bytes):
    path.write_bytes(data)
    return dataclasses.replace(read_journal(path), path=path.parent / "journal.jsonl")


def test_corrupt_middle_line_is_an_error_and_not_repairable(journal):
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2][:-10] + b"garbage!!!"
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:3: not a valid journal line"):
        read_journal(journal)
    with pytest.raises(CorruptJournalError):
        truncate_torn_line(journal)
    assert journal.read_bytes() == before


def test_entry_numbers_and_undo_targets_are_checked(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_header(path, header())
    append_entry(path, commit(2))
    with pytest.raises(CorruptJournalError, match="entry number 2, expected 1"):
        read_journal(path)
    path.unlink()
    write_header(path, header())
    append_entry(path, commit(1))
    append_entry(path, UndoEntry(seq=2, time="t", undoes=7, fingerprint="x"))
    with pytest.raises(JournalError, match="not the last active commit"):
        read_journal(path)


def test_missing_and_headerless_journals(tmp_path):
    with pytest.raises(JournalError, match="no journal"):
        read_journal(tmp_path / "nope.jsonl")
    p = tmp_path / "j.jsonl"
    p.write_text(json.dumps(commit(1).to_dict()) + "\n")
    with pytest.raises(CorruptJournalError, match="not a header"):
        read_journal(p)


# -- the queue ----------------------------------------------------------------------------------


def test_queue_validation_is_all_or_nothing():
    q = check_batch((), [F1, F2, F1])  # exact duplicate kept once
    assert q == (F1, F2)
    with pytest.raises(ConflictingFactsError, match="conflicts with the queued"):
        check_batch(q, [Fact("Japan", "The capital of {} is", "Rome")])
    with pytest.raises(InvalidFactError, match="subject is empty"):
        check_batch(q, [Fact("", "The capital of {} is", "Rome")])


def test_queue_file_and_reconcile(tmp_path):
    p = tmp_path / "queue.json"
    assert read_queue(p) == QueueState((), 0)
    write_queue(p, QueueState((F1, F2), 3))
    state = read_queue(p)
    assert state == QueueState((F1, F2), 3)
    # a commit after the queue was written that consumed exactly these facts: the queue is stale
    assert reconcile(state, [(1, (F1,)), (4, (F1, F2))]) == QueueState((), 4)
    # an older commit with the same facts does not count
    assert reconcile(state, [(2, (F1, F2))]) == state


# -- facts files --------------------------------------------------------------------------------


def test_read_facts_jsonl_and_csv(tmp_path):
    j = tmp_path / "f.jsonl"
    j.write_text(json.dumps(F1.to_dict()) + "\n\n" + json.dumps({"subject": "Japan", "prompt": "The capital of Japan is", "target": "Paris"}) + "\n")
    assert read_facts(j) == [F1, F2]
    c = tmp_path / "f.csv"
    c.write_text('subject,prompt,target\nEiffel Tower,The {} is located in the city of,London\n"Japan","The capital of {} is",Paris\n')
    assert read_facts(c) == [F1, F2]


@pytest.mark.parametrize(
    "name,text,where",
    [
        ("bad.jsonl", json.dumps(F1.to_dict()) + "\n{not json\n", "bad.jsonl:2"),
        ("bad.jsonl", json.dumps(F1.to_dict()) + "\n" + json.dumps({"subject": "X", "prompt": "p {}"}) + "\n", "bad.jsonl:2: missing"),
        ("bad.csv", "subject,prompt,target\nJapan,The capital of {} is,Paris\nRome,is nice,Spain\n", "bad.csv:3"),
        ("bad.csv", "subj,prompt,target\nJapan,The capital of {} is,Paris\n", "bad.csv:1"),
        ("bad.csv", "subject,prompt,target\nJapan,The capital of {} is,Paris,extra\n", "bad.csv:2"),
        ("bad.txt", "hello", "unknown facts file type"),
    ],
)
def test_bad_fact_file_names_the_line(tmp_path, name, text, where):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(FactFileError, match=where.replace(".", r"\.")):
        read_facts(p)


def test_light_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import kedit, kedit.session, kedit.session.journal, kedit.session.queue, kedit.session.factfile\n"
        "from kedit.session import Session, read_journal\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
