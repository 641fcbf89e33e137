"""The journal: an append-only ``journal.jsonl`` that says how a session's weights came to be.

Line 1 is a ``JournalHeader`` (kedit version, base model and its fingerprints, dtype, device,
method, layers, hyper-parameters, seed, context prefixes, statistics corpus). Every later line is
a ``CommitEntry`` (one batch of facts and the delta file it produced) or an ``UndoEntry``.

Every append is one ``write`` of a whole line followed by ``fsync``, so a crash leaves at most a
torn *last* line. Reading detects it and raises ``CorruptJournalError`` (the line is never
silently dropped); ``truncate_torn_line`` removes it when the user asks (``kedit repair``).

No torch here: ``kedit log`` reads journals without loading the editing engine.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

from kedit.errors import CorruptJournalError, JournalError
from kedit.facts import Fact
from kedit.paths import fsync_dir

FORMAT = 1
JOURNAL_NAME = "journal.jsonl"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class BaseModelRef:
    name: str  # what the user asked for: "default", a folder, a hub id
    path: str  # where the weights were read from
    config_hash: str
    fingerprint: str  # kedit.editing.model_fingerprint: config + every editable projection
    editable_fingerprint: str  # kedit.editing.fingerprint over every editable projection (as entries record)
    model_type: str
    num_layers: int

    @classmethod
    def from_dict(cls, d: dict) -> "BaseModelRef":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class JournalHeader:
    kedit_version: str
    created: str
    model: BaseModelRef
    dtype: str  # "float32", "bfloat16", ...
    device: str  # device kind: "cpu", "cuda", "mps"
    method: str
    layers: tuple[int, ...]
    hparams: dict  # HParams.to_dict() of the session's initial settings
    seed: int
    prefixes: tuple[str, ...]  # context prefixes sampled once with ``seed``
    corpus: str  # statistics corpus spec ("wiki-sample", a path, "hf:...")
    corpus_fingerprint: str
    load: str = "none"  # how the session loaded the model: "none" or int8/nf4 quantised except its edit layers
    format: int = FORMAT
    kind: str = "header"

    def to_dict(self) -> dict:
        d = _asdict(self)
        d["model"] = _asdict(self.model)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JournalHeader":
        return cls(
            kedit_version=d["kedit_version"], created=d["created"], model=BaseModelRef.from_dict(d["model"]),
            dtype=d["dtype"], device=d["device"], method=d["method"], layers=tuple(d["layers"]),
            hparams=d["hparams"], seed=int(d["seed"]), prefixes=tuple(d["prefixes"]), corpus=d["corpus"],
            corpus_fingerprint=d["corpus_fingerprint"], load=d.get("load", "none"), format=int(d.get("format", FORMAT)),
        )


@dataclass(frozen=True)
class FactScore:
    """How well one fact took after its commit: P(" " + target | prompt) and whether it is argmax."""

    prob: float
    argmax: bool
    prob_before: float


class JournalEntry:
    """A line after the header: a ``CommitEntry`` or an ``UndoEntry`` (``seq`` counts from 1)."""

    seq: int
    time: str
    kind: str
    fingerprint: str


@dataclass(frozen=True)
class CommitEntry(JournalEntry):
    seq: int
    time: str
    facts: tuple[Fact, ...]
    method: str
    layers: tuple[int, ...]
    hparams: dict  # HParams.to_dict() used for this batch
    timings: dict  # seconds per phase
    delta_file: str  # relative to the session folder
    delta_sha256: str
    fingerprint: str  # every editable projection after the commit
    efficacy: tuple[FactScore, ...]  # one per fact, measured right after applying
    value_steps: tuple[int, ...] = ()
    # model health (drift.py): held-out NLL after this commit, and of the base model; None in
    # entries written before it was measured
    heldout_nll: float | None = None
    heldout_base: float | None = None
    kind: str = "commit"

    def to_dict(self) -> dict:
        d = _asdict(self)
        d["facts"] = [f.to_dict() for f in self.facts]
        d["efficacy"] = [_asdict(s) for s in self.efficacy]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CommitEntry":
        return cls(
            seq=int(d["seq"]), time=d["time"], facts=tuple(Fact.from_dict(f) for f in d["facts"]),
            method=d["method"], layers=tuple(d["layers"]), hparams=d["hparams"], timings=d["timings"],
            delta_file=d["delta_file"], delta_sha256=d["delta_sha256"], fingerprint=d["fingerprint"],
            efficacy=tuple(FactScore(**s) for s in d["efficacy"]), value_steps=tuple(d.get("value_steps", ())),
            heldout_nll=d.get("heldout_nll"), heldout_base=d.get("heldout_base"),
        )

    @property
    def efficacy_rate(self) -> float:
        return sum(s.argmax for s in self.efficacy) / max(1, len(self.efficacy))


@dataclass(frozen=True)
class UndoEntry(JournalEntry):
    seq: int
    time: str
    undoes: int  # seq of the commit taken back
    fingerprint: str  # every editable projection after the undo
    kind: str = "undo"

    def to_dict(self) -> dict:
        return _asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UndoEntry":
        return cls(seq=int(d["seq"]), time=d["time"], undoes=int(d["undoes"]), fingerprint=d["fingerprint"])


def _asdict(obj) -> dict:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


@dataclass(frozen=True)
class Journal:
    """A journal as read from disk: its header and entries, in order."""

    path: Path
    header: JournalHeader
    entries: tuple[JournalEntry, ...] = field(default_factory=tuple)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def commits(self) -> list[CommitEntry]:
        return [e for e in self.entries if isinstance(e, CommitEntry)]

    def active_commits(self) -> list[CommitEntry]:
        return active_commits(self.entries)

    @property
    def next_seq(self) -> int:
        return (self.entries[-1].seq if self.entries else 0) + 1

    @property
    def fingerprint(self) -> str:
        """The recorded fingerprint of the editable projections now (the base one if no entry)."""
        return self.entries[-1].fingerprint if self.entries else self.header.model.editable_fingerprint


def active_commits(entries) -> list[CommitEntry]:
    """Commits that no later undo took back, in order."""
    stack: list[CommitEntry] = []
    for e in entries:
        if isinstance(e, CommitEntry):
            stack.append(e)
        elif isinstance(e, UndoEntry):
            if not stack or stack[-1].seq != e.undoes:
                raise JournalError(f"undo #{e.seq} takes back commit #{e.undoes}, which is not the last active commit")
            stack.pop()
    return stack


# -- reading ------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw line, ends with newline)."""
    data = path.read_bytes()
    pieces = data.split(b"\n")
    last = len(pieces) - 1
    for i, raw in enumerate(pieces):
        if i == last and raw == b"":
            return
        yield i + 1, raw, i < last


def _parse(raw: bytes) -> dict | None:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


def _entry(d: dict) -> JournalEntry:
    kind = d.get("kind")
    if kind == "commit":
        return CommitEntry.from_dict(d)
    if kind == "undo":
        return UndoEntry.from_dict(d)
    raise ValueError(f"unknown entry kind {kind!r}")


def repair_hint(path: Path) -> str:
    folder = path.parent
    return f"run 'kedit repair {folder}' to drop the torn last line (the batch it held is lost)"


def read_journal(path: str | os.PathLike) -> Journal:
    """Read and check a journal; raise ``CorruptJournalError`` naming file:line on a bad line."""
    path = Path(path)
    if path.is_dir():
        path = path / JOURNAL_NAME
    if not path.exists():
        raise JournalError(f"no journal at {path}", hint="give a session folder or its journal.jsonl")
    lines = list(_lines(path))
    if not lines:
        raise CorruptJournalError(f"{path} is empty: it has no header line")
    header: JournalHeader | None = None
    entries: list[JournalEntry] = []
    for n, raw, complete in lines:
        d = _parse(raw)
        is_last = n == lines[-1][0]
        if d is None or not complete:
            if is_last and n > 1:
                raise CorruptJournalError(
                    f"{path}:{n}: the last line is torn (an interrupted write)", hint=repair_hint(path)
                )
            raise CorruptJournalError(
                f"{path}:{n}: not a valid journal line", hint="the journal was edited or damaged; restore it from a copy"
            )
        try:
            if n == 1:
                if d.get("kind") != "header":
                    raise ValueError("the first line is not a header")
                header = JournalHeader.from_dict(d)
                if header.format > FORMAT:
                    raise JournalError(
                        f"{path} has journal format {header.format}; this kedit reads up to {FORMAT}",
                        hint="upgrade kedit",
                    )
            else:
                e = _entry(d)
                expected = (entries[-1].seq if entries else 0) + 1
                if e.seq != expected:
                    raise ValueError(f"entry number {e.seq}, expected {expected}")
                entries.append(e)
        except JournalError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptJournalError(
                f"{path}:{n}: not a valid journal entry ({exc})",
                hint="the journal was edited or damaged; restore it from a copy",
            ) from None
    assert header is not None
    active_commits(entries)  # raises on an undo that does not match
    return Journal(path=path, header=header, entries=tuple(entries))


def truncate_torn_line(path: str | os.PathLike) -> str | None:
    """Drop a torn last line (returns its text), or None when the journal is intact.

    Only the *last* line may be dropped: a bad line in the middle is not a torn write.
    """
    path = Path(path)
    if path.is_dir():
        path = path / JOURNAL_NAME
    lines = list(_lines(path))
    if len(lines) < 2:
        return None
    for m, r, _ in lines[:-1]:
        if _parse(r) is None:
            raise CorruptJournalError(f"{path}:{m}: not a valid journal line (not a torn last line; not repaired)")
    n, raw, complete = lines[-1]
    if complete and _parse(raw) is not None:
        return None
    keep = sum(len(r) + 1 for _, r, _ in lines[:-1])
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return raw.decode("utf-8", errors="replace")


# -- writing ------------------------------------------------------------------------------------


def _line(d: dict) -> bytes:
    return (json.dumps(d, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")


def write_header(path: Path, header: JournalHeader) -> None:
    """Create the journal with its header line (atomically: tmp + fsync + rename)."""
    if path.exists():
        raise JournalError(f"{path} exists already; not overwriting a journal")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_line(header.to_dict()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_entry(path: Path, entry: CommitEntry | UndoEntry) -> None:
    """Append one entry as a single write, then fsync: a crash leaves the line whole or absent."""
    data = _line(entry.to_dict())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a short write on a regular file is rare; finish it
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


JournalLine = Union[JournalHeader, CommitEntry, UndoEntry]
