"""Reading many facts from a file: JSON Lines or CSV with the fields subject, prompt, target.

Every row is checked before any fact is returned, and a bad row raises ``FactFileError`` naming
``file:line``, so a caller adds all facts of a file or none.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from kedit.errors import FactFileError, InvalidFactError
from kedit.facts import Fact

FIELDS = ("subject", "prompt", "target")


def read_facts(path: str | Path) -> list[Fact]:
    path = Path(path)
    if not path.exists():
        raise FactFileError(f"no facts file at {path}")
    if path.is_dir():
        raise FactFileError(f"{path} is a folder, not a facts file", hint="give a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):  # before reading: /dev/zero never ends
        raise FactFileError(f"{path}: unknown facts file type {suffix!r}", hint="use .jsonl or .csv with subject,prompt,target")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is not part of the text
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise FactFileError(f"{path}:{line}: not UTF-8 text", hint="save it as UTF-8 JSON Lines or CSV") from None
    except OSError as exc:
        raise FactFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    else:
        rows = _jsonl_rows(path, text)
    facts = []
    for line, d in rows:
        try:
            missing = [k for k in FIELDS if not isinstance(d.get(k), str) or not d.get(k).strip()]
            if missing:
                raise InvalidFactError(f"missing or empty field(s): {', '.join(missing)}")
            facts.append(Fact.from_text(d["subject"], d["prompt"], d["target"]))
        except InvalidFactError as exc:
            raise FactFileError(f"{path}:{line}: {exc}", hint=exc.hint or "each row needs subject, prompt and target") from None
    if not facts:
        raise FactFileError(f"{path} holds no facts")
    return facts


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for n, raw in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 and friends may sit inside a JSON string
        if not raw.strip():
            continue
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FactFileError(f"{path}:{n}: not valid JSON ({exc.msg})", hint="one JSON object per line") from None
        except RecursionError:
            raise FactFileError(f"{path}:{n}: not valid JSON (nested too deeply)", hint="one JSON object per line") from None
        if not isinstance(d, dict):
            raise FactFileError(f"{path}:{n}: expected a JSON object with subject, prompt, target")
        rows.append((n, d))
    return rows


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = []
    try:
        if reader.fieldnames is None or any(f not in reader.fieldnames for f in FIELDS):
            raise FactFileError(
                f"{path}:1: the header must name the columns subject,prompt,target (got {reader.fieldnames})"
            )
        for d in reader:
            if None in d:  # more cells than header columns
                raise FactFileError(f"{path}:{reader.line_num}: more cells than columns")
            if all(not (v or "").strip() for v in d.values()):
                continue
            rows.append((reader.line_num, {k: (v if v is not None else "") for k, v in d.items()}))
    except csv.Error as exc:  # a field over csv.field_size_limit(), a stray NUL, ...
        raise FactFileError(f"{path}:{reader.line_num + 1}: not valid CSV ({exc})",
                            hint="fields hold at most 131,072 characters; quote fields with commas or newlines") from None
    return rows
