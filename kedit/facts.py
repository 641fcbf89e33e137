"""The fact: what a person asks kedit to make the model believe.

A ``Fact`` is a frozen value: ``prompt`` is a template with one ``{}`` where the subject goes,
``target`` is the new object (the model should continue ``prompt.format(subject)`` with
``" " + target``). No torch here: facts are validated and stored without a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from kedit.errors import ConflictingFactsError, InvalidFactError


@dataclass(frozen=True)
class Fact:
    subject: str
    prompt: str  # template with exactly one "{}" for the subject
    target: str  # the new object, without the leading space

    def __post_init__(self) -> None:
        # Normalise whitespace that users type by accident; frozen, so via object.__setattr__.
        object.__setattr__(self, "subject", self.subject.strip())
        object.__setattr__(self, "prompt", self.prompt.strip())
        object.__setattr__(self, "target", self.target.strip())

    @property
    def text(self) -> str:
        """The prompt with the subject written in."""
        return self.prompt.replace("{}", self.subject)

    @property
    def label(self) -> str:
        return f"{self.text} → {self.target}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fact":
        if not isinstance(d, dict):
            raise InvalidFactError(f"a fact must be an object with subject, prompt and target, not {type(d).__name__} {d!r:.60}")
        missing = [k for k in ("subject", "prompt", "target") if not isinstance(d.get(k), str)]
        if missing:
            raise InvalidFactError(f"fact {d!r} lacks the text field(s): {', '.join(missing)}")
        return cls(subject=d["subject"], prompt=d["prompt"], target=d["target"])

    @classmethod
    def from_text(cls, subject: str, prompt: str, target: str) -> "Fact":
        """Accept either a ``{}`` template or a prompt with the subject written in."""
        subject, prompt = subject.strip(), prompt.strip()
        if "{}" not in prompt and subject and subject in prompt:
            i = prompt.index(subject)
            prompt = prompt[:i] + "{}" + prompt[i + len(subject) :]
        fact = cls(subject=subject, prompt=prompt, target=target)
        fact.validate()
        return fact

    def validate(self) -> None:
        """Raise ``InvalidFactError`` naming the fact when it cannot be edited."""
        name = f"fact ({self.subject!r}, {self.prompt!r}, {self.target!r})"
        for field in ("subject", "prompt", "target"):
            try:
                getattr(self, field).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (a JSON "\ud800" escape, bytes that were not UTF-8)
                raise InvalidFactError(f"{name}: the {field} is not valid Unicode text") from None
        if not self.subject:
            raise InvalidFactError(f"{name}: the subject is empty")
        if not self.target:
            raise InvalidFactError(f"{name}: the target is empty")
        n = self.prompt.count("{}")
        if n > 1:
            raise InvalidFactError(f"{name}: the prompt has {n} '{{}}'; it needs exactly one, for the subject")
        if n == 0:
            raise InvalidFactError(
                f"{name}: the subject is not in the prompt",
                hint="write the prompt with '{}' where the subject goes, "
                "or with the subject spelled exactly as given",
            )
        if not self.prompt.replace("{}", "").strip():
            raise InvalidFactError(f"{name}: the prompt has no text besides the subject")


def find_conflicts(facts: Iterable[Fact]) -> list[tuple[Fact, Fact]]:
    """Pairs of facts with the same subject and prompt but different targets."""
    seen: dict[tuple[str, str], Fact] = {}
    out = []
    for f in facts:
        key = (f.subject, f.prompt)
        if key in seen and seen[key].target != f.target:
            out.append((seen[key], f))
        seen.setdefault(key, f)
    return out


def validate_batch(facts: list[Fact]) -> list[Fact]:
    """Validate each fact, refuse conflicts, drop exact duplicates (keeping order).

    Exact duplicates would make the equality-constrained system singular without changing what
    is asked, so they are merged; conflicting facts are an error naming both.
    """
    if not facts:
        raise InvalidFactError("no facts to edit", hint="add facts to the queue first")
    for f in facts:
        f.validate()
    conflicts = find_conflicts(facts)
    if conflicts:
        a, b = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise ConflictingFactsError(
            f"conflicting facts in one batch: {a.text!r} → {a.target!r} and → {b.target!r}{more}",
            hint="keep one target per subject and prompt",
        )
    return list(dict.fromkeys(facts))  # first occurrence of each, in order (linear)
