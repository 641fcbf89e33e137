"""The lifelong experiment: many sequential commits, measured as they pile up.

``run_lifelong`` edits records in batches of B, one batch after another on the same model, each
commit remembering the earlier ones as a session does (``remember``: one tuple of facts per
commit). After every commit it records the held-out NLL (``health.heldout_nll``, every
paragraph), the commit's time (and per phase: values, keys, solve) and each fact's value steps,
so the damage shows commit by commit and a slow late commit can be told from one whose facts
needed more steps or whose keys cost more. At checkpoints (numbers of edits) it also scores every
record edited so far (ES/PS/NS/S beside the same records unedited), the first batch's efficacy now
and the norm of the edited projection. With ``guard`` a flagged commit is taken back and split as
a guarded session's is (``session.guard``). The weights are restored at the end, whatever happens;
Ctrl-C returns what was measured so far.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kedit.editing import arch
from kedit.editing.edit import Editor
from kedit.editing.health import heldout_nll
from kedit.eval.metrics import Metrics, RecordScores, figure, summarize
from kedit.eval.records import EvalRecord
from kedit.eval.runner import Tick, TickFn, batches_of, score_records
from kedit.session.drift import is_flagged, perplexity_change
from kedit.session.guard import Flagged, split_until_clean


@dataclass(frozen=True)
class Checkpoint:
    edits: int
    metrics: Metrics  # every record edited so far
    baseline: Metrics  # the same records on the unedited model
    first_batch: float  # ES (×100) of the first batch's records, now
    heldout_nll: float  # after the checkpoint's commit
    weight_norm: float  # ‖W‖ of the first edit layer's projection
    commit_seconds: float  # the latest commit: edit + apply
    refused: int = 0  # facts the guard has left out so far (not among ``edits``)

    def perplexity_change(self, base_nll: float) -> float:
        """Held-out perplexity relative to the base model's, minus 1 (0.05: 5% higher)."""
        return perplexity_change(self.heldout_nll, base_nll)

    def line(self, base_nll: float) -> str:
        """The checkpoint in one line, for the progress display of a long run."""
        m = self.metrics
        return (f"at {self.edits} edits: ES {figure(m.ES)}, PS {figure(m.PS)}, NS {figure(m.NS)} (unedited "
                f"{figure(self.baseline.NS)}), first batch {figure(self.first_batch)}%, "
                f"perplexity {100 * self.perplexity_change(base_nll):+.1f}%"
                + (f", {self.refused} left out by the guard" if self.refused else ""))

    def to_dict(self, base_nll: float) -> dict:
        return {"edits": self.edits, "metrics": self.metrics.to_dict(), "baseline": self.baseline.to_dict(),
                "first_batch_ES": self.first_batch, "heldout_nll": self.heldout_nll,
                "perplexity_change": self.perplexity_change(base_nll), "weight_norm": self.weight_norm,
                "commit_seconds": self.commit_seconds, "refused": self.refused}


@dataclass(frozen=True)
class LifelongRun:
    batch_size: int
    n_records: int
    base_nll: float
    base_weight_norm: float
    checkpoints: tuple[Checkpoint, ...]
    commit_seconds: tuple[float, ...]  # every commit, in order
    interrupted: bool
    commit_nll: tuple[float, ...] = ()  # held-out NLL after every commit, in order
    commit_steps: tuple[tuple[int, ...], ...] = ()  # every commit's value steps, one per fact
    commit_phases: tuple[dict[str, float], ...] = ()  # every commit's seconds per phase (values, keys, solve)
    commit_sizes: tuple[int, ...] = ()  # every commit's number of facts; () when every commit is a whole batch
    refused: tuple = ()  # case ids of the records the guard left out
    undone: int = 0  # commits the guard took back
    guard: float | None = None

    def commit_perplexity(self) -> list[float]:
        """The held-out perplexity change after every commit (0.05: 5% above the base model's)."""
        return [perplexity_change(nll, self.base_nll) for nll in self.commit_nll]

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "n_records": self.n_records, "base_heldout_nll": self.base_nll,
                "base_weight_norm": self.base_weight_norm,
                "checkpoints": [c.to_dict(self.base_nll) for c in self.checkpoints],
                "commit_seconds": list(self.commit_seconds), "commit_heldout_nll": list(self.commit_nll),
                "commit_perplexity_change": self.commit_perplexity(),
                "commit_value_steps": [list(steps) for steps in self.commit_steps],
                "commit_phase_seconds": [dict(p) for p in self.commit_phases], "commit_sizes": self.sizes(),
                "guard": self.guard, "refused_records": list(self.refused), "undone_commits": self.undone,
                "interrupted": self.interrupted}

    def sizes(self) -> list[int]:
        """Every commit's number of facts (the run's batching, the last batch maybe short, unless the
        guard split commits)."""
        if self.commit_sizes:
            return list(self.commit_sizes)
        whole = [len(b) for b in batches_of(range(self.n_records), self.batch_size)]
        return whole[: len(self.commit_seconds)]


def default_checkpoints(total: int, batch_size: int, n: int = 8) -> tuple[int, ...]:
    """About ``n`` evenly spaced numbers of edits (whole batches), the last one ``total``."""
    step = max(batch_size, round(total / n / batch_size) * batch_size)
    return tuple(sorted({*range(step, total, step), total}))


class _Baseline:
    """Unedited scores, computed on first need with the base weights lent for a moment."""

    def __init__(self, model, tok, stack, score_batch_size: int) -> None:
        self.model, self.tok, self.stack, self.bs = model, tok, stack, score_batch_size
        self.scores: dict[str, RecordScores] = {}

    def of(self, records: Sequence[EvalRecord]) -> list[RecordScores]:
        todo = [r for r in records if r.case_id not in self.scores]
        if todo:
            with self.stack.base():
                for r, s in zip(todo, score_records(self.model, self.tok, todo, self.bs)):
                    self.scores[r.case_id] = s
        return [self.scores[r.case_id] for r in records]


def run_lifelong(
    model,
    tok,
    editor: Editor,
    records: Sequence[EvalRecord],
    batch_size: int,
    checkpoints: Sequence[int] | None = None,
    score_batch_size: int = 64,
    progress: TickFn | None = None,
    guard: float | None = None,
) -> LifelongRun:
    """``guard``: a commit that raises held-out perplexity by more than this fraction over the commit
    before it is taken back and its facts retried in halves, as a guarded session does
    (``session.guard``); a fact flagged on its own is left out of the run (``LifelongRun.refused``)."""
    from kedit.session.engine import EditStack

    records = list(records)
    marks = sorted(set(checkpoints or default_checkpoints(len(records), batch_size)))
    layer = editor.hparams.layers[0]
    stack = EditStack.around(editor)  # applies the commits and remembers their facts, as a session does
    base = _Baseline(model, tok, stack, score_batch_size)
    base_nll = heldout_nll(model, tok)
    base_norm = float(arch.weight_param(model, layer).detach().float().norm())
    first_ids = {r.case_id for r in records[:batch_size]}
    log = _Log()
    reached: list[Checkpoint] = []
    interrupted = False

    def attempt(group: list[EvalRecord]):
        """Commit ``group``; a guard's flag takes it back (``Flagged``)."""
        if progress:
            progress(Tick("edit", log.seen, len(records), _commit_line(stack.depth + 1, log.nlls, reached,
                                                                        base_nll)))
        t = time.perf_counter()
        res = stack.edit([r.fact for r in group], editor.hparams)
        stack.push(res.deltas, res.facts)
        seconds = time.perf_counter() - t - res.timings.get("statistics", 0.0)
        nll = heldout_nll(model, tok)
        step = perplexity_change(nll, log.nlls[-1] if log.nlls else base_nll)
        if guard is not None and is_flagged(step, guard):
            stack.pop()
            return Flagged(step)
        log.commit(group, seconds, nll, res)
        return group

    try:
        for batch in batches_of(records, batch_size):
            got = split_until_clean(batch, attempt)
            log.refused.extend(h.item for h in got.held_back)
            log.undone += got.taken_back
            log.seen += len(batch)
            if (marks and log.seen >= marks[0]) or log.seen == len(records):
                while marks and marks[0] <= log.seen:
                    marks.pop(0)
                if log.done:  # else every fact so far was left out: nothing to score
                    reached.append(_checkpoint(model, tok, log, first_ids, base, layer, score_batch_size,
                                               progress))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stack.reset()
    return LifelongRun(batch_size, len(records), base_nll, base_norm, tuple(reached), tuple(log.times), interrupted,
                       tuple(log.nlls), tuple(log.steps), tuple(log.phases), tuple(log.sizes),
                       tuple(r.case_id for r in log.refused), log.undone, guard)


class _Log:
    """What a run has done so far: its applied commits (one entry each), the records they edited,
    the records the guard left out and the commits it took back."""

    def __init__(self) -> None:
        self.done: list[EvalRecord] = []  # edited and kept, in order
        self.refused: list[EvalRecord] = []
        self.seen = 0  # records tried: kept or refused
        self.undone = 0
        self.times: list[float] = []
        self.nlls: list[float] = []
        self.steps: list[tuple[int, ...]] = []
        self.phases: list[dict[str, float]] = []
        self.sizes: list[int] = []

    def commit(self, group: list[EvalRecord], seconds: float, nll: float, res) -> None:
        self.done.extend(group)
        self.times.append(seconds)
        self.nlls.append(nll)
        self.steps.append(tuple(res.value_steps))
        self.phases.append({k: v for k, v in res.timings.items() if k != "statistics"})
        self.sizes.append(len(group))


def _commit_line(n: int, nlls: list[float], reached: list[Checkpoint], base_nll: float) -> str:
    """The progress line of commit ``n``: the perplexity after the commit before it, and the last
    checkpoint's figures."""
    now = f" · perplexity now {100 * perplexity_change(nlls[-1], base_nll):+.1f}%" if nlls else ""
    last = f" · {reached[-1].line(base_nll)}" if reached else ""
    return f"commit {n}{now}{last}"


def _checkpoint(model, tok, log: _Log, first_ids, base: _Baseline, layer, score_batch_size, progress) -> Checkpoint:
    done = log.done
    if progress:
        progress(Tick("score", 0, len(done), f"checkpoint at {len(done)} edits"))
    edited = score_records(model, tok, done, score_batch_size)
    unedited = base.of(done)
    first = summarize([s for r, s in zip(done, edited) if r.case_id in first_ids])
    return Checkpoint(
        edits=len(done), metrics=summarize(edited, unedited), baseline=summarize(unedited, unedited),
        first_batch=first.ES or 0.0, heldout_nll=log.nlls[-1],
        weight_norm=float(arch.weight_param(model, layer).detach().float().norm()),
        commit_seconds=log.times[-1], refused=len(log.refused),
    )


# -- presentation -----------------------------------------------------------------------------


def table_rows(run: LifelongRun) -> list[list[str]]:
    f = figure
    rows = []
    for c in run.checkpoints:
        ppl = 100 * c.perplexity_change(run.base_nll)
        edits = f"{c.edits} ({c.refused} left out)" if c.refused else str(c.edits)
        rows.append([edits, f(c.metrics.ES), f(c.metrics.PS), f"{f(c.metrics.NS)} ({f(c.baseline.NS)})",
                     f(c.metrics.S), f(c.first_batch), f"{c.heldout_nll:.3f} ({ppl:+.1f}%)",
                     f(c.weight_norm, 0), f(c.commit_seconds, 2)])
    return rows


COLUMNS = ["edits", "ES", "PS", "NS (unedited)", "S", "first batch ES", "held-out NLL (ppl)", "‖W‖", "commit s"]


def _commit_ends(run: LifelongRun) -> list[int]:
    """The number of edits after each commit."""
    return list(itertools.accumulate(run.sizes()))


def commit_seconds_per_fact(run: LifelongRun) -> tuple[list[int], list[float]]:
    """Every commit's time per fact, against the number of edits after it."""
    return _commit_ends(run), [seconds / n for seconds, n in zip(run.commit_seconds, run.sizes())]


def perplexity_per_commit(run: LifelongRun) -> tuple[list[int], list[float]]:
    """Every commit's held-out perplexity change (%), against the number of edits after it."""
    return _commit_ends(run)[: len(run.commit_nll)], [100 * p for p in run.commit_perplexity()]


def plot_lifelong(run: LifelongRun, path: str | Path, title: str = "") -> Path:
    """Left: ES/PS/NS/S and the first batch's ES against the number of edits (unedited dotted);
    right: held-out perplexity change after every commit (symmetric log scale past +100%) and every
    commit's time per fact."""
    from kedit.eval.experiments import _pyplot, _save

    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [c.edits for c in run.checkpoints]
    for i, m in enumerate(("ES", "PS", "NS", "S")):
        ax.plot(xs, [getattr(c.metrics, m) for c in run.checkpoints], marker="o", color=f"C{i}", label=m)
        if run.checkpoints:
            ax.axhline(getattr(run.checkpoints[-1].baseline, m), color=f"C{i}", linestyle=":", linewidth=1)
    ax.plot(xs, [c.first_batch for c in run.checkpoints], marker="s", color="C4", linestyle="--", label="first batch ES")
    ax.set_xlabel("edits")
    ax.set_ylabel("score (×100); dotted: unedited")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ppl = [100 * c.perplexity_change(run.base_nll) for c in run.checkpoints]
    ends, every = perplexity_per_commit(run)
    bx.plot(ends, every, color="C3", linewidth=1, label="held-out perplexity change (%), every commit")
    bx.plot(xs, ppl, marker="o", color="C3", linestyle="none", label="at the checkpoints")
    bx.axhline(0, color="grey", linestyle=":", linewidth=1)
    seen = every or ppl
    if seen and max(seen) > 100:  # a collapse would flatten the early commits on a linear axis
        bx.set_yscale("symlog", linthresh=10)
        bx.set_ylim(bottom=min(0.0, 1.5 * min(seen)))
    bx.set_xlabel("edits")
    bx.set_ylabel("perplexity change vs unedited (%)")
    bx.grid(alpha=0.3)
    cx = bx.twinx()
    ends, per_fact = commit_seconds_per_fact(run)
    cx.plot(ends, per_fact, color="C5", linestyle="--", linewidth=1, label="commit time per fact (s), every commit")
    cx.set_ylabel("commit time per fact (s)")
    cx.set_ylim(bottom=0)
    lines = bx.get_legend_handles_labels()[0] + cx.get_legend_handles_labels()[0]
    bx.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    fig.suptitle(title or f"Lifelong editing, batches of {run.batch_size}")
    fig.tight_layout()
    return _save(fig, plt, path)
