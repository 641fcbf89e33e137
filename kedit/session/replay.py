"""Replay: rebuild a journal's edited model headlessly, from its stored deltas or from its facts.

Entries are replayed in order on the journal's base model (refused if the base fingerprint
differs). A commit applies its delta file (sha256-checked), or with ``recompute`` re-runs the
edit of its facts with the journal's prefixes and the commit's hyper-parameters; an undo takes
the last commit back. After every entry the weights' fingerprint is compared with the one the
journal recorded: with ``verify`` the first mismatch stops the replay with ``VerificationError``.
Same device and dtype give bit-identical tensors, so a faithful replay has no mismatch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kedit.errors import ExportError, VerificationError
from kedit.session import store
from kedit.session.journal import CommitEntry, Journal, UndoEntry, read_journal


@dataclass(frozen=True)
class StepReport:
    seq: int
    kind: str  # "commit" | "undo"
    expected: str  # fingerprint the journal recorded
    actual: str  # fingerprint after replaying the entry
    seconds: float

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True)
class ReplayReport:
    journal: Path
    recompute: bool
    steps: tuple[StepReport, ...]
    fingerprint: str  # of the editable projections at the end
    active_commits: int
    facts: int
    seconds: float
    out: Path | None = None

    @property
    def mismatches(self) -> list[StepReport]:
        return [s for s in self.steps if not s.ok]

    def to_dict(self) -> dict:
        return {
            "journal": str(self.journal), "recompute": self.recompute, "ok": not self.mismatches,
            "fingerprint": self.fingerprint, "active_commits": self.active_commits, "facts": self.facts,
            "seconds": round(self.seconds, 3), "out": str(self.out) if self.out else None,
            "steps": [{"seq": s.seq, "kind": s.kind, "expected": s.expected, "actual": s.actual, "ok": s.ok,
                       "seconds": round(s.seconds, 3)} for s in self.steps],
        }


def replay_into(lm, journal: Journal, recompute: bool = False, verify: bool = False,
                progress: Callable | None = None, inner_progress: Callable | None = None) -> tuple[ReplayReport, object]:
    """Replay ``journal`` on ``lm`` (already loaded and checked). Returns the report and the ``EditStack``."""
    from kedit.editing import HParams, Progress, cpu
    from kedit.session.engine import EditStack

    t0 = time.perf_counter()
    stack = EditStack.for_journal(lm, journal.header)
    steps = []
    total = len(journal.entries)
    for i, e in enumerate(journal.entries):
        t = time.perf_counter()
        if progress:
            progress(Progress("replay", i, total, detail=_describe(e)))
        if isinstance(e, CommitEntry):
            if recompute:
                with cpu.threads(e.threads):  # the commit's own thread count, where it was recorded
                    deltas = stack.edit(list(e.facts), HParams.from_dict(e.hparams), inner_progress).deltas
            else:
                deltas = store.read_deltas(journal.folder, e.delta_file, e.delta_sha256, e.seq)
            stack.push(deltas, e.facts)
        else:
            assert isinstance(e, UndoEntry)
            stack.pop()
        step = StepReport(e.seq, e.kind, e.fingerprint, stack.fingerprint(), time.perf_counter() - t)
        steps.append(step)
        if verify and not step.ok:
            raise VerificationError(
                f"{journal.path}: entry #{e.seq} ({_describe(e)}) gives fingerprint {step.actual}, "
                f"the journal recorded {step.expected}",
                hint="replay on the device and dtype it was recorded with"
                + (" (without --recompute the stored deltas are applied)" if recompute else ""),
            )
    if progress:
        progress(Progress("replay", total, total, detail="done"))
    active = journal.active_commits()
    report = ReplayReport(
        journal=journal.path, recompute=recompute, steps=tuple(steps), fingerprint=stack.fingerprint(),
        active_commits=len(active), facts=sum(len(c.facts) for c in active), seconds=time.perf_counter() - t0,
    )
    return report, stack


def replay(journal_path, model: str | None = None, device: str | None = None, dtype: str | None = None,
           recompute: bool = False, verify: bool = False, out=None, progress: Callable | None = None,
           inner_progress: Callable | None = None, load: str | None = None) -> ReplayReport:
    """Load the journal's base model (checked), replay every entry, optionally export to ``out``.

    ``load`` defaults to the way the session loaded its model (the journal header's ``load``):
    that is what makes ``recompute`` bit-identical for a ``--load nf4`` session. Stored deltas
    replay exactly either way, so ``load="none"`` rebuilds such a journal on the full-precision model.
    """
    from kedit.session import base as base_model
    from kedit.session.export import check_target, export_checkpoint

    journal = read_journal(journal_path)
    if out is not None:
        check_target(Path(out).expanduser().resolve())  # refuse before spending the time
    keep = {l for c in journal.commits() for l in c.layers}
    lm = base_model.load_for(journal.header, journal.path, model=model, device=device, dtype=dtype, load=load, keep_layers=keep)
    report, _ = replay_into(lm, journal, recompute=recompute, verify=verify, progress=progress, inner_progress=inner_progress)
    if out is not None:
        if report.mismatches:
            raise ExportError(
                f"not exporting: entry #{report.mismatches[0].seq} did not replay to its recorded fingerprint",
                hint="run with --verify to see the first mismatch",
            )
        path = export_checkpoint(lm, journal, Path(out), progress=progress)
        report = _with_out(report, path)
    return report


def _with_out(report: ReplayReport, out: Path) -> ReplayReport:
    from dataclasses import replace

    return replace(report, out=out)


def _describe(e) -> str:
    if isinstance(e, CommitEntry):
        return f"commit #{e.seq}: {len(e.facts)} fact{'s' if len(e.facts) != 1 else ''}, {e.method} layers {list(e.layers)}"
    return f"undo #{e.seq} of commit #{e.undoes}"
