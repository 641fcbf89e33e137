"""How journal entries read on screen: one row per entry for the log table, and a details text.

Only formatting: the entries are the session's ``CommitEntry``/``UndoEntry`` values as recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from kedit.show import visible


@dataclass(frozen=True)
class Row:
    number: str
    kind: str
    facts: str
    method: str
    layers: str
    time: str
    efficacy: str


def is_commit(entry) -> bool:
    return getattr(entry, "kind", "") == "commit"


def number(entry) -> str:
    return f"#{entry.seq}"


def undone_ids(entries) -> set[int]:
    """seqs of commits that an undo took back."""
    return {e.undoes for e in entries if getattr(e, "kind", "") == "undo"}


def undone_number(entry) -> str:
    return f"#{entry.undoes}"


def n_facts(entry) -> int:
    return len(entry.facts) if is_commit(entry) else 0


def seconds(entry) -> float:
    """Wall time of the commit (the journal's ``total``; the phases' sum for older entries)."""
    if not is_commit(entry):
        return 0.0
    if "total" in entry.timings:
        return float(entry.timings["total"])
    return float(sum(entry.timings.values()))


def efficacy(entry) -> str:
    """How many facts are now the model's top answer, e.g. ``2/2``."""
    if not is_commit(entry) or not entry.efficacy:
        return "–"
    hit = sum(1 for s in entry.efficacy if s.argmax)
    return f"{hit}/{len(entry.efficacy)}"


def efficacy_marks(entry, most: int = 8) -> str:
    """Per fact ✓ (now the top answer) or ✗, then the count: ``✓✗ 1/2``."""
    if not is_commit(entry) or not entry.efficacy:
        return "–"
    marks = "".join("✓" if s.argmax else "✗" for s in entry.efficacy[:most])
    if len(entry.efficacy) > most:
        marks += "…"
    return f"{marks} {efficacy(entry)}"


def first_prompt(entry) -> str | None:
    return entry.facts[0].text if is_commit(entry) and entry.facts else None


def fact_label(fact) -> str:
    """A fact on one line as the person typed it (control characters visible)."""
    return f"{visible(fact.text)} → {visible(fact.target)}"


def fact_lines(entry) -> list[str]:
    return [fact_label(f) for f in entry.facts] if is_commit(entry) else []


def _layers(entry) -> str:
    return ",".join(str(l) for l in entry.layers)


def view(entry, undone: set[int], drift=None) -> Row:
    """``drift``: the entry's ``session.drift.Drift`` (a flagged commit reads "commit ⚠")."""
    if is_commit(entry):
        facts = entry.facts
        what = f"{visible(facts[0].subject)} → {visible(facts[0].target)}" if facts else "–"
        if len(facts) > 1:
            what += f" (+{len(facts) - 1})"
        kind = "commit (undone)" if entry.seq in undone else ("commit ⚠" if drift is not None and drift.flagged else "commit")
        return Row(number(entry), kind, what, entry.method, _layers(entry), f"{seconds(entry):.1f}s", efficacy_marks(entry))
    return Row(number(entry), "undo", f"takes back #{entry.undoes}", "", "", "", "")


def details(entry, undone: set[int] | None = None, drift=None) -> Text:
    """A multi-line description: what, when, how, per-fact efficacy and the model's health."""
    t = Text()
    if not is_commit(entry):
        t.append(f"Undo {number(entry)}", style="bold")
        t.append(f"  at {entry.time}\n")
        t.append(f"took back commit #{entry.undoes}\n")
        t.append(f"weights fingerprint after: {entry.fingerprint[:16]}…\n", style="dim")
        return t
    state = " (undone)" if undone and entry.seq in undone else ""
    t.append(f"Commit {number(entry)}{state}", style="bold")
    t.append(f"  at {entry.time}\n")
    t.append(f"method {entry.method} · layers {_layers(entry)} · {len(entry.facts)} fact(s) · {seconds(entry):.1f}s\n")
    timings = " · ".join(f"{k} {v:.1f}s" for k, v in entry.timings.items() if k != "total")
    if timings:
        t.append(f"phases: {timings}\n", style="dim")
    lam = entry.hparams.get("lam") if isinstance(entry.hparams, dict) else None
    if lam:  # EMMET and ROME are equality-constrained (λ 0): nothing to say
        t.append(f"λ {lam:g}\n", style="dim")
    t.append("\nfacts (P(target) before → after, ✓ = now the top answer):\n", style="bold")
    for i, f in enumerate(entry.facts):
        t.append(f"  {i + 1}. {fact_label(f)}")
        if i < len(entry.efficacy):
            s = entry.efficacy[i]
            mark, style = ("✓", "green") if s.argmax else ("✗", "red")
            t.append(f"   {s.prob_before:.1%} → {s.prob:.1%} ", style="dim")
            t.append(mark, style=style)
        if i < len(entry.value_steps):
            t.append(f"  ({entry.value_steps[i]} steps)", style="dim")
        t.append("\n")
    if drift is not None and drift.since_base is not None:
        t.append(f"\n{drift.describe()}\n", style="bold red" if drift.flagged else "")
        if drift.flagged:
            t.append("this commit moved it more than the session's threshold: Ctrl+Z undoes it\n", style="red")
    t.append(f"\ndelta file {entry.delta_file}\n", style="dim")
    t.append(f"weights fingerprint after: {entry.fingerprint[:16]}…\n", style="dim")
    return t


def as_dict(entry) -> dict:
    """The entry as its journal line (what gets copied to the clipboard)."""
    return entry.to_dict()
