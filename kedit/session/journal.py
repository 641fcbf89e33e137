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

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

from kedit.errors import CorruptJournalError, JournalError, KeditError
from kedit.facts import Fact
from kedit.paths import fsync_dir

FORMAT = 2  # 1: no chain (still read); 2: every line chained to the one before (see below)
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
            corpus_fingerprint=d["corpus_fingerprint"], load=d.get("load", "none"), format=int(d.get("format", 1)),
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
    # CPU threads the commit computed with (the last bit of a CPU matrix product depends on it;
    # ``replay --recompute`` uses it); None on a GPU and in entries written before it was recorded
    threads: int | None = None
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
            heldout_nll=d.get("heldout_nll"), heldout_base=d.get("heldout_base"), threads=d.get("threads"),
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


# -- the chain ----------------------------------------------------------------------------------
#
# From format 2 every line carries ``prev`` (the previous line's ``hash``; "" for the header) and
# ``hash``: the sha256 of the line's content (every field but ``hash``, as canonical JSON). Reading
# recomputes both, so any change to any line — a field, a number, a line taken out or put in —
# is named by its line number. Format-1 journals (no chain) still read and replay as they are.

CHAIN_FIELDS = ("prev", "hash")


def content_hash(d: dict) -> str:
    """sha256 of a journal line's fields (all but ``hash``), whatever fields an entry has."""
    body = {k: v for k, v in d.items() if k != "hash"}
    canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def chained(d: dict, prev: str) -> dict:
    """The line ``d`` with its place in the chain (after a line whose hash is ``prev``)."""
    body = {k: v for k, v in d.items() if k not in CHAIN_FIELDS}
    body["prev"] = prev
    body["hash"] = content_hash(body)
    return body


def _check_link(path: Path, n: int, d: dict, prev: str | None) -> str | None:
    """The line's hash after checking it; ``prev`` None: a format-1 journal (no chain)."""
    if prev is None:
        if any(k in d for k in CHAIN_FIELDS):
            raise CorruptJournalError(f"{path}:{n}: a chained line in a journal whose header says format 1",
                                      hint="the header was edited; restore the journal from a copy")
        return None
    if not isinstance(d.get("hash"), str) or not isinstance(d.get("prev"), str):
        raise CorruptJournalError(f"{path}:{n}: the line has no chain hash (every line of a format-{FORMAT} journal has one)",
                                  hint=EDITED_HINT)
    if content_hash(d) != d["hash"]:
        raise CorruptJournalError(f"{path}:{n}: the line was changed after it was written (its content does not match its hash)",
                                  hint=EDITED_HINT)
    if d["prev"] != prev:
        raise CorruptJournalError(
            f"{path}:{n}: the line does not follow the line before it (a line before {n} was changed, removed or added)",
            hint=EDITED_HINT,
        )
    return d["hash"]


# -- the fields a line must have (a hand-edited or damaged line is named, never a traceback) -----

_NUMBER = (int, float)
HEADER_FIELDS = {"kedit_version": str, "created": str, "model": dict, "dtype": str, "device": str, "method": str,
                 "layers": "ints", "hparams": dict, "seed": int, "prefixes": "strs", "corpus": str,
                 "corpus_fingerprint": str}
MODEL_FIELDS = {"name": str, "path": str, "config_hash": str, "fingerprint": str, "editable_fingerprint": str,
                "model_type": str, "num_layers": int}
COMMIT_FIELDS = {"seq": int, "time": str, "facts": "facts", "method": str, "layers": "ints", "hparams": dict,
                 "timings": "numbers", "delta_file": "relpath", "delta_sha256": str, "fingerprint": str,
                 "efficacy": "scores"}
UNDO_FIELDS = {"seq": int, "time": str, "undoes": int, "fingerprint": str}
OPTIONAL_COMMIT_FIELDS = {"value_steps": "ints", "heldout_nll": "number?", "heldout_base": "number?",
                          "threads": "count?"}


def check_fields(d: dict, fields: dict, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the first field of ``d`` that is missing or of the wrong type."""
    for key, kind in fields.items():
        if key not in d:
            raise ValueError(f"missing field {prefix + key!r}")
        if not _is(d[key], kind):
            raise ValueError(f"field {prefix + key!r} is not {_KIND_NAMES.get(kind, getattr(kind, '__name__', kind))}")


_KIND_NAMES = {str: "text", int: "a whole number", dict: "an object", "ints": "a list of whole numbers",
               "strs": "a list of texts", "facts": "a list of facts (objects with subject, prompt, target)",
               "numbers": "an object of numbers", "relpath": "a path inside the session folder",
               "scores": "a list of scores (prob, argmax, prob_before)", "number?": "a number or null",
               "count?": "a whole number ≥ 1 or null"}


def _is(v, kind) -> bool:
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "count?":
        return v is None or (_is(v, int) and v >= 1)
    if kind == "number?":
        return v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool))
    if kind == "ints":
        return isinstance(v, list) and all(_is(x, int) for x in v)
    if kind == "strs":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == "facts":
        return isinstance(v, list) and all(isinstance(x, dict) for x in v)
    if kind == "numbers":
        return isinstance(v, dict) and all(isinstance(x, _NUMBER) and not isinstance(x, bool) for x in v.values())
    if kind == "relpath":
        return isinstance(v, str) and bool(v) and not v.startswith(("/", "\\")) and ".." not in v.replace("\\", "/").split("/")
    if kind == "scores":
        return isinstance(v, list) and all(
            isinstance(x, dict) and {"prob", "argmax", "prob_before"} <= set(x) and isinstance(x["argmax"], bool)
            and all(isinstance(x[k], _NUMBER) and not isinstance(x[k], bool) for k in ("prob", "prob_before"))
            for x in v)
    return isinstance(v, kind)


# -- reading ------------------------------------------------------------------------------------

EDITED_HINT = "the journal was edited or damaged; restore it from a copy"


def _lines(path: Path) -> list[tuple[int, bytes, bool]]:
    """(line number, raw line, ends with newline) of every line that is not blank."""
    return _split(path.read_bytes())


def _split(data: bytes) -> list[tuple[int, bytes, bool]]:
    pieces = data.split(b"\n")
    last = len(pieces) - 1
    return [(i + 1, raw, i < last) for i, raw in enumerate(pieces) if raw.strip()]


def _parse(raw: bytes) -> dict | None:
    """The line as a JSON object, or None when it is not one (a torn write, a damaged line)."""
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return d if isinstance(d, dict) else None


def _entry(d: dict) -> JournalEntry:
    kind = d.get("kind")
    if kind == "commit":
        check_fields(d, COMMIT_FIELDS | {k: kind for k, kind in OPTIONAL_COMMIT_FIELDS.items() if k in d})
        return CommitEntry.from_dict(d)
    if kind == "undo":
        check_fields(d, UNDO_FIELDS)
        return UndoEntry.from_dict(d)
    raise ValueError(f"unknown entry kind {kind!r}")


def repair_hint(path: Path) -> str:
    folder = path.parent
    return f"run 'kedit repair {folder}' to drop the torn last line (the batch it held is lost)"


def journal_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / JOURNAL_NAME if path.is_dir() else path


def read_journal(path: str | os.PathLike) -> Journal:
    """Read and check a journal; raise ``CorruptJournalError`` naming file:line on a bad line.

    A last line that is not JSON is a torn write (an interrupted append), reported with the
    repair command; a complete last line without its newline is a whole line.
    """
    path = journal_path(path)
    if not path.is_file():
        hint = "give a session name, its folder or its journal.jsonl"
        if path.exists():
            raise JournalError(f"{path} is not a file", hint=hint)
        raise JournalError(f"no journal at {path}", hint=hint)
    try:
        lines = _lines(path)
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not lines:
        raise CorruptJournalError(f"{path} is empty: it has no header line", hint=EDITED_HINT)
    n, raw, _ = lines[-1]
    if len(lines) > 1 and _parse(raw) is None:
        _read_lines(path, lines[:-1])  # a problem before the last line is named first
        raise CorruptJournalError(f"{path}:{n}: the last line is torn (an interrupted write)", hint=repair_hint(path))
    return _read_lines(path, lines)


def _read_lines(path: Path, lines: list[tuple[int, bytes, bool]]) -> Journal:
    header: JournalHeader | None = None
    entries: list[JournalEntry] = []
    prev: str | None = None
    for n, raw, _ in lines:
        d = _parse(raw)
        if d is None:
            raise CorruptJournalError(f"{path}:{n}: not a valid journal line", hint=EDITED_HINT)
        try:
            if header is None:
                if d.get("kind") != "header":
                    raise ValueError("the first line is not a header")
                check_fields(d, HEADER_FIELDS)
                check_fields(d["model"], MODEL_FIELDS, "model.")
                header = JournalHeader.from_dict(d)
                if header.format > FORMAT:
                    raise JournalError(
                        f"{path} has journal format {header.format}; this kedit reads up to {FORMAT}",
                        hint="upgrade kedit",
                    )
                prev = "" if header.format >= 2 else None
                prev = _check_link(path, n, d, prev)
            else:
                prev = _check_link(path, n, d, prev)
                e = _entry(d)
                expected = (entries[-1].seq if entries else 0) + 1
                if e.seq != expected:
                    raise ValueError(f"entry number {e.seq}, expected {expected}")
                entries.append(e)
        except JournalError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, KeditError) as exc:
            raise CorruptJournalError(f"{path}:{n}: not a valid journal entry ({_reason(exc)})", hint=EDITED_HINT) from None
    assert header is not None
    try:
        active_commits(entries)
    except JournalError as exc:
        raise CorruptJournalError(f"{path}: {exc}", hint=EDITED_HINT) from None
    return Journal(path=path, header=header, entries=tuple(entries))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)


@dataclass(frozen=True)
class TornLine:
    """A torn last line: its number, where the cut goes (file offset) and the bytes it drops."""

    number: int
    offset: int
    dropped: bytes
    keeps_entry: bool  # the line starts with a whole entry, which stays

    def describe(self, path) -> str:
        part = f"the torn end of line {self.number}" if self.keeps_entry else f"the torn last line {self.number}"
        return f"{part} of {path} ({len(self.dropped)} bytes)"


def torn_last_line(path: str | os.PathLike) -> TornLine | None:
    """The torn last line when that is the journal's only problem, else None.

    A line is torn when it is not JSON (an append cut short). A line that parses is never torn,
    whatever else is wrong with it, and a whole entry at the start of a torn line (one written
    without its newline, then a torn append after it) is kept. The lines kept must read as a
    whole, checked journal.
    """
    path = journal_path(path)
    data = path.read_bytes()
    lines = _split(data)
    if len(lines) < 2:
        return None
    n, raw, _ = lines[-1]
    if _parse(raw) is not None:
        return None
    start = data.rindex(raw)
    cut = start + _whole_prefix(raw)
    kept = _split(data[:cut])
    try:
        _read_lines(path, kept)
    except JournalError:
        return None
    return TornLine(number=n, offset=cut, dropped=data[cut:], keeps_entry=cut > start)


def _whole_prefix(raw: bytes) -> int:
    """How many bytes at the start of ``raw`` are one whole JSON object (0 when none)."""
    try:
        text = raw.decode("utf-8")
        d, end = json.JSONDecoder().raw_decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return 0
    return len(text[:end].encode("utf-8")) if isinstance(d, dict) else 0


def truncate_torn_line(path: str | os.PathLike) -> str | None:
    """Drop a torn last line (returns its text), or None when the journal is intact.

    Only a torn *last* line is dropped (see ``torn_last_line``); any other problem raises the
    ``CorruptJournalError`` that reading gives, and the file is left as it is.
    """
    path = journal_path(path)
    torn = torn_last_line(path)
    if torn is None:
        read_journal(path)  # raises what is wrong, if anything
        return None
    with open(path, "r+b") as f:
        f.truncate(torn.offset)
        f.flush()
        os.fsync(f.fileno())
    return torn.dropped.decode("utf-8", errors="replace")


# -- writing ------------------------------------------------------------------------------------


def _line(d: dict) -> bytes:
    return (json.dumps(d, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")


def write_header(path: Path, header: JournalHeader) -> None:
    """Create the journal with its header line (atomically: tmp + fsync + rename)."""
    if path.exists():
        raise JournalError(f"{path} exists already; not overwriting a journal")
    d = header.to_dict()
    if header.format >= 2:
        d = chained(d, "")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_line(d))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _tail(path: Path, fd: int) -> tuple[dict, bool]:
    """The journal's last non-blank line (parsed) and whether the file ends with a newline."""
    size = os.fstat(fd).st_size
    block, data = 1 << 16, b""
    while True:
        start = max(0, size - len(data) - block)
        data = os.pread(fd, size - len(data) - start, start) + data
        lines = _split(data)
        if (len(lines) > 1 or start == 0) and lines:
            break
        if start == 0:
            raise CorruptJournalError(f"{path} is empty: it has no header line", hint=EDITED_HINT)
    n, raw, _ = lines[-1]
    d = _parse(raw)
    if d is None:
        raise CorruptJournalError(f"{path}: the last line is torn (an interrupted write); not appending after it",
                                  hint=repair_hint(path))
    return d, data.endswith(b"\n")


def append_entry(path: Path, entry: CommitEntry | UndoEntry) -> None:
    """Append one entry as a single write, then fsync: a crash leaves the line whole or absent.

    The line is chained to the last one when the journal is chained (format 2); a last line
    without its newline gets the newline first, in the same write.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        last, ends_with_newline = _tail(path, fd)
        d = entry.to_dict()
        if isinstance(last.get("hash"), str):
            d = chained(d, last["hash"])
        data = (b"" if ends_with_newline else b"\n") + _line(d)
        written = os.write(fd, data)
        while written < len(data):  # a short write on a regular file is rare; finish it
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


JournalLine = Union[JournalHeader, CommitEntry, UndoEntry]
