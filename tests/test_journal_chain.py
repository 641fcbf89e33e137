"""The journal's hash chain: any change to any line is found on read and named by its line number;
format-1 journals (no chain) still read and take new entries; a torn last line is the only thing
repair drops. No model, no torch."""

from __future__ import annotations

import json

import pytest

from kedit.errors import CorruptJournalError
from kedit.session.journal import (
    FORMAT, UndoEntry, append_entry, chained, content_hash, read_journal, torn_last_line, truncate_torn_line,
)
from test_session_journal import F1, F2, commit, journal  # noqa: F401 (journal: a fixture)


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def write_lines(path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lines), "utf-8")


def test_every_line_is_chained_to_the_one_before(journal):
    lines = lines_of(journal)
    assert lines[0]["format"] == FORMAT == 2 and lines[0]["prev"] == ""
    for before, line in zip(lines, lines[1:]):
        assert line["prev"] == before["hash"]
    assert all(d["hash"] == content_hash(d) for d in lines)


@pytest.mark.parametrize("n, key, value", [
    (1, "seed", 1),  # the header
    (1, "prefixes", ["The a.", "I b!"]),
    (2, "facts", [{"subject": "Eiffel Tower", "prompt": "The {} is located in the city of", "target": "Madrid"},
                  F2.to_dict()]),
    (2, "efficacy", [{"prob": 0.9, "argmax": True, "prob_before": 0.01}] * 2),
    (3, "fingerprint", "9" * 32),
    (4, "undoes", 1),
])
def test_a_changed_field_is_named_by_its_line(journal, n, key, value):
    lines = lines_of(journal)
    lines[n - 1][key] = value
    write_lines(journal, lines)
    with pytest.raises(CorruptJournalError, match=rf"journal.jsonl:{n}: the line was changed after it was written"):
        read_journal(journal)


def test_a_consistently_rehashed_line_breaks_the_link_after_it(journal):
    lines = lines_of(journal)
    lines[1]["facts"][0]["target"] = "Madrid"
    lines[1] = chained(lines[1], lines[1]["prev"])  # its own hash made anew: the next line still points at the old one
    write_lines(journal, lines)
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:3: the line does not follow the line before it"):
        read_journal(journal)


def test_a_removed_or_duplicated_line_is_found(journal):
    lines = lines_of(journal)
    write_lines(journal, lines[:2] + lines[3:])
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:3: the line does not follow"):
        read_journal(journal)
    write_lines(journal, lines + [lines[-1]])
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:5: the line does not follow"):
        read_journal(journal)


def test_a_new_field_is_covered_whatever_its_name(journal):
    """An entry may carry fields this kedit does not know (a held-out score, say): the chain covers them."""
    lines = lines_of(journal)
    lines[1]["heldout_nll"] = 2.5
    lines[1] = chained(lines[1], lines[1]["prev"])
    for i in range(2, len(lines)):
        lines[i] = chained(lines[i], lines[i - 1]["hash"])
    write_lines(journal, lines)
    assert len(read_journal(journal).entries) == 3
    lines[1]["heldout_nll"] = 2.4
    write_lines(journal, lines)
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:2: the line was changed"):
        read_journal(journal)


def unchained(path) -> None:
    """``path`` rewritten as a format-1 journal (as kedit wrote them before the chain)."""
    lines = [{k: v for k, v in d.items() if k not in ("prev", "hash")} for d in lines_of(path)]
    lines[0]["format"] = 1
    write_lines(path, lines)


def test_format_1_journals_still_read_and_take_new_entries(journal):
    unchained(journal)
    before = read_journal(journal)
    assert before.header.format == 1 and [e.seq for e in before.entries] == [1, 2, 3]
    append_entry(journal, commit(4, fp="4" * 32))
    assert "hash" not in lines_of(journal)[-1]  # it stays a format-1 journal
    assert [e.seq for e in read_journal(journal).entries] == [1, 2, 3, 4]


def test_a_header_turned_back_to_format_1_is_found(journal):
    lines = lines_of(journal)
    lines[0] = {k: v for k, v in lines[0].items() if k not in ("prev", "hash")} | {"format": 1}
    write_lines(journal, lines)
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:2: a chained line in a journal whose header says format 1"):
        read_journal(journal)


def test_a_line_without_its_chain_is_found(journal):
    lines = lines_of(journal)
    del lines[2]["hash"]
    write_lines(journal, lines)
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:3: the line has no chain hash"):
        read_journal(journal)


def test_blank_lines_are_not_torn(journal):
    good = journal.read_bytes()
    journal.write_bytes(good + b"\n")
    assert len(read_journal(journal).entries) == 3 and torn_last_line(journal) is None
    assert truncate_torn_line(journal) is None and journal.read_bytes() == good + b"\n"
    append_entry(journal, commit(4, fp="4" * 32))
    assert [e.seq for e in read_journal(journal).entries] == [1, 2, 3, 4]


def test_repair_never_drops_a_line_that_parses(journal):
    """A complete last line that fails a check is named, never dropped: only JSON that ends early is torn."""
    lines = lines_of(journal)
    lines[-1]["undoes"] = 1  # parses, but was changed
    write_lines(journal, lines)
    before = journal.read_bytes()
    assert torn_last_line(journal) is None
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:4: the line was changed"):
        truncate_torn_line(journal)
    assert journal.read_bytes() == before


def test_a_torn_append_after_a_line_without_newline_keeps_that_line(journal):
    """An older kedit appended straight after a last line without its newline, then crashed: the whole entry stays."""
    good = journal.read_bytes()
    line = json.dumps(chained(commit(4).to_dict(), lines_of(journal)[-1]["hash"])).encode()
    journal.write_bytes(good[:-1] + line[:30])
    torn = torn_last_line(journal)
    assert torn is not None and torn.number == 4 and torn.keeps_entry and torn.dropped == line[:30]
    assert truncate_torn_line(journal) == line[:30].decode()
    assert journal.read_bytes() == good[:-1] and len(read_journal(journal).entries) == 3


def test_a_torn_line_after_a_damaged_one_is_not_repairable(journal):
    lines = journal.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"London"', b'"Madrid"')
    journal.write_bytes(b"\n".join(lines) + b'{"seq": 4, "ti')
    before = journal.read_bytes()
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:2: the line was changed"):
        read_journal(journal)  # the first problem is named, not the torn end
    assert torn_last_line(journal) is None
    with pytest.raises(CorruptJournalError, match=r"journal.jsonl:2"):
        truncate_torn_line(journal)
    assert journal.read_bytes() == before


def test_appending_after_a_torn_line_is_refused(journal):
    journal.write_bytes(journal.read_bytes() + b'{"seq": 4, "ti')
    before = journal.read_bytes()
    with pytest.raises(CorruptJournalError, match="torn"):
        append_entry(journal, UndoEntry(seq=4, time="t", undoes=1, fingerprint="x"))
    assert journal.read_bytes() == before


@pytest.mark.parametrize("field, value, kind", [
    ("heldout_nll", "high", "a number or null"),
    ("threads", 0, "a whole number ≥ 1 or null"),
    ("threads", "two", "a whole number ≥ 1 or null"),
])
def test_optional_fields_of_the_wrong_type_are_named(journal, field, value, kind):
    lines = lines_of(journal)
    lines[1][field] = value
    lines[1] = chained(lines[1], lines[1]["prev"])
    for i in range(2, len(lines)):
        lines[i] = chained(lines[i], lines[i - 1]["hash"])
    write_lines(journal, lines)
    with pytest.raises(CorruptJournalError, match=rf"journal.jsonl:2: not a valid journal entry \(field '{field}' is not {kind}\)"):
        read_journal(journal)
