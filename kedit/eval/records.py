"""Evaluation records: CounterFact (ROME's original and the flattened EasyEdit form) and zsRE.

Every record becomes one frozen ``EvalRecord``: the edit to make (``subject``, a ``{}`` template,
``target_new``), the object it replaces (``target_true``), paraphrase prompts, and neighbourhood
prompts with the object that should stay there (``neighborhood_true``). The format of a file is
detected from its first record; a record that does not fit is a ``FactFileError`` naming it.

How each format maps onto that shape (and so what ES/PS/NS mean for it):

* ROME ``counterfact.json``: ``requested_rewrite`` (prompt with ``{}``, subject, ``target_new.str``,
  ``target_true.str``), ``paraphrase_prompts``, ``neighborhood_prompts``; the neighbourhood's true
  object is ``target_true`` (CounterFact picks neighbours that share it).
* Flattened CounterFact: ``prompt`` with the subject written in (the template is derived by
  replacing the subject's first occurrence with ``{}``), ``rephrase_prompt``, ``locality_prompt``;
  the neighbourhood's true object is ``locality_ground_truth``.
* zsRE (MEND split): the question ``src`` is the prompt, ``alt`` the new answer, ``answers[0]`` the
  true one, ``rephrase`` the paraphrase; the neighbourhood prompt is ``loc`` (an NQ question,
  ``"nq question: "`` kept as the model-facing text) whose true object is ``loc_ans``. NS on zsRE
  thus asks whether the unrelated question's answer still beats the edit's new answer there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kedit.errors import FactFileError
from kedit.facts import Fact

FORMATS = ("counterfact", "counterfact-flat", "zsre")


@dataclass(frozen=True)
class EvalRecord:
    case_id: str  # the record's own id (case_id) or its index in the file
    subject: str
    prompt: str  # template with one "{}" for the subject
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    neighborhood_true: str  # the object the neighbourhood prompts should keep
    source: str  # one of FORMATS

    @property
    def fact(self) -> Fact:
        return Fact(subject=self.subject, prompt=self.prompt, target=self.target_new)

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.replace("{}", self.subject)


def detect_format(rec: object) -> str:
    if isinstance(rec, dict):
        if "requested_rewrite" in rec:
            return "counterfact"
        if "target_new" in rec and "locality_prompt" in rec:
            return "counterfact-flat"
        if "src" in rec and "alt" in rec:
            return "zsre"
    raise FactFileError(
        "cannot tell the records' format from the first record",
        hint="expected CounterFact (requested_rewrite / target_new+locality_prompt) or zsRE (src, alt)",
    )


def parse_record(rec: object, index: int, fmt: str) -> EvalRecord:
    """One record of format ``fmt`` (``index`` is its position in the file, for error messages)."""
    name = f"record {index}"
    if isinstance(rec, dict) and rec.get("case_id") is not None:
        name += f" (case_id {rec['case_id']})"
    if not isinstance(rec, dict):
        raise FactFileError(f"{name}: expected a JSON object, got {type(rec).__name__}")
    try:
        out = _PARSERS[fmt](rec, index)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise FactFileError(f"{name}: missing or malformed field {_field(exc)} for the {fmt} format") from None
    except ValueError as exc:
        raise FactFileError(f"{name}: {exc}") from None
    _check(out, name)
    return out


def _field(exc: Exception) -> str:
    return repr(exc.args[0]) if isinstance(exc, KeyError) and exc.args else f"({exc})"


def _check(r: EvalRecord, name: str) -> None:
    texts = {"subject": r.subject, "prompt": r.prompt, "target_new": r.target_new, "target_true": r.target_true,
             "neighbourhood object": r.neighborhood_true}
    for k, v in texts.items():
        if not isinstance(v, str) or not v.strip():
            raise FactFileError(f"{name}: {k} is empty or not text")
    if r.prompt.count("{}") != 1:
        raise FactFileError(f"{name}: the prompt {r.prompt!r} must contain exactly one '{{}}' for the subject")
    for p in r.paraphrase_prompts + r.neighborhood_prompts:
        if not isinstance(p, str) or not p.strip():
            raise FactFileError(f"{name}: a paraphrase or neighbourhood prompt is empty or not text")


def _template(prompt: str, subject: str) -> str:
    if not isinstance(prompt, str) or not isinstance(subject, str):
        raise TypeError("prompt/subject")
    if "{}" in prompt:
        return prompt
    if not subject or subject not in prompt:
        raise ValueError(f"the subject {subject!r} is not in the prompt {prompt!r}")
    i = prompt.index(subject)
    return prompt[:i] + "{}" + prompt[i + len(subject):]


def _rome(rec: dict, index: int) -> EvalRecord:
    rw = rec["requested_rewrite"]
    return EvalRecord(
        case_id=str(rec.get("case_id", index)),
        subject=rw["subject"],
        prompt=_template(rw["prompt"], rw["subject"]),
        target_new=rw["target_new"]["str"],
        target_true=rw["target_true"]["str"],
        paraphrase_prompts=tuple(rec.get("paraphrase_prompts", ())),
        neighborhood_prompts=tuple(rec.get("neighborhood_prompts", ())),
        neighborhood_true=rw["target_true"]["str"],
        source="counterfact",
    )


def _flat(rec: dict, index: int) -> EvalRecord:
    return EvalRecord(
        case_id=str(rec.get("case_id", index)),
        subject=rec["subject"],
        prompt=_template(rec["prompt"], rec["subject"]),
        target_new=rec["target_new"],
        target_true=rec["ground_truth"],
        paraphrase_prompts=_listed(rec.get("rephrase_prompt")),
        neighborhood_prompts=_listed(rec.get("locality_prompt")),
        neighborhood_true=rec["locality_ground_truth"],
        source="counterfact-flat",
    )


def _zsre(rec: dict, index: int) -> EvalRecord:
    return EvalRecord(
        case_id=str(rec.get("case_id", index)),
        subject=rec["subject"],
        prompt=_template(rec["src"], rec["subject"]),
        target_new=rec["alt"],
        target_true=rec["answers"][0],
        paraphrase_prompts=_listed(rec.get("rephrase")),
        neighborhood_prompts=_listed(rec.get("loc")),
        neighborhood_true=rec["loc_ans"],
        source="zsre",
    )


def _listed(v) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(v)


_PARSERS = {"counterfact": _rome, "counterfact-flat": _flat, "zsre": _zsre}


def parse_records(data: object, offset: int = 0, limit: int | None = None) -> list[EvalRecord]:
    """Records ``offset .. offset+limit`` of a parsed JSON list (format from the first record)."""
    if not isinstance(data, list):
        raise FactFileError("a records file must hold a JSON list of records")
    if not data:
        raise FactFileError("the records file is empty")
    if offset < 0 or (limit is not None and limit < 1):
        raise FactFileError(f"bad slice: offset {offset}, limit {limit}")
    fmt = detect_format(data[0])
    end = len(data) if limit is None else min(len(data), offset + limit)
    if offset >= len(data):
        raise FactFileError(f"offset {offset} is past the end of the file ({len(data)} records)")
    return [parse_record(data[i], i, fmt) for i in range(offset, end)]


def load_records(path: str | Path, offset: int = 0, limit: int | None = None) -> list[EvalRecord]:
    """Read a JSON (list) or JSON-lines records file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FactFileError(f"records file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise FactFileError(f"{p}: line {n} is not JSON ({exc.msg})") from None
    return parse_records(data, offset, limit)
