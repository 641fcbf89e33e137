"""Running an evaluation: score the unedited model, edit in batches, score the edited model.

Edits are made through the session's ``EditStack`` (``kedit.session.engine``), the same wiring of
live weights, edit engine and remembered facts that sessions and replays use:

* Non-sequential (the default): every batch is edited on the base weights: its deltas are pushed,
  the batch is scored, and they are popped again (exactly; the model is never copied).
* Sequential (``sequential=True``): batch after batch is pushed onto the same model (each edit
  sees and remembers the earlier ones, as a session's commits do) and every edited record is
  scored at the end: sequential-batched editing as in the MEMIT and EMMET papers.

The model's weights are restored before ``evaluate`` returns, whatever happens. Ctrl-C
(``KeyboardInterrupt``) stops the run and returns what was measured so far, flagged
``interrupted``; in sequential mode the records already edited are then scored (a second Ctrl-C
skips that). Scoring is batched through ``kedit.editing.score_targets``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, TypeVar

from kedit.editing import cpu, tokens
from kedit.editing.chat import chat_restated, chat_text
from kedit.editing.edit import Editor, Progress
from kedit.editing.scoring import score_targets
from kedit.eval.generation import Prompting, contains, greedy_answers
from kedit.eval.metrics import Metrics, Pair, RecordScores, summarize, token_accuracy
from kedit.eval.records import EvalRecord

PARTS = ("rewrite", "paraphrase", "neighborhood")


@dataclass(frozen=True)
class Tick:
    """Progress of a run: ``stage`` is "baseline", "edit" or "score"; units are prompts or facts."""

    stage: str
    done: int
    total: int
    detail: str = ""


TickFn = Callable[[Tick], None]


def prompts_of(rec: EvalRecord) -> dict[str, tuple[str, ...]]:
    return {"rewrite": (rec.rewrite_prompt,), "paraphrase": rec.paraphrase_prompts,
            "neighborhood": rec.neighborhood_prompts}


def count_prompts(records: Sequence[EvalRecord]) -> int:
    """Scored (prompt, object) pairs: every prompt with both objects."""
    return 2 * sum(len(ps) for r in records for ps in prompts_of(r).values())


def iter_scores(
    model, tok, records: Sequence[EvalRecord], batch_size: int = 64, chunk_prompts: int = 256,
    prompting: Prompting = Prompting(),
) -> Iterator[list[RecordScores]]:
    """Score records in chunks of about ``chunk_prompts`` pairs; yields each chunk's scores.
    ``prompting``: chat turns, and greedy answers for the generation figures (``generation.py``)."""
    ids_cache: dict[str, tuple[int, ...]] = {}

    def target_ids(t: str) -> tuple[int, ...]:
        if t not in ids_cache:
            ids_cache[t] = tuple(tokens.target_ids(tok, t))
        return ids_cache[t]

    start = 0
    while start < len(records):
        end, n = start, 0
        while end < len(records) and (n == 0 or n + count_prompts(records[end : end + 1]) <= chunk_prompts):
            n += count_prompts(records[end : end + 1])
            end += 1
        chunk = records[start:end]
        asked, prompts, targets, where = [], [], [], []
        for i, r in enumerate(chunk):
            for part, ps in prompts_of(r).items():
                true = r.neighborhood_true if part == "neighborhood" else r.target_true
                for p in ps:
                    asked.append(chat_text(tok, p, prompting.system) if prompting.chat else p)
                    forced = chat_restated(tok, p, prompting.system) if prompting.chat else p
                    prompts += [forced, forced]
                    targets += [r.target_new, true]
                    where.append((i, part, true))
        cpu.rebalance()
        scores = score_targets(model, tok, prompts, targets, batch_size=batch_size)
        answers = greedy_answers(model, tok, asked, prompting.gen_tokens) if prompting.gen_tokens else None
        parts: list[dict[str, list[Pair]]] = [{k: [] for k in PARTS} for _ in chunk]
        for j, (i, part, true) in enumerate(where):
            s_new, s_true = scores[2 * j], scores[2 * j + 1]
            parts[i][part].append(Pair(
                nll_new=s_new.nll, nll_true=s_true.nll,
                acc_new=token_accuracy(s_new.predicted, target_ids(chunk[i].target_new)),
                pred_true=s_true.predicted,
                gen_new=None if answers is None else contains(answers[j], chunk[i].target_new),
                gen_true=None if answers is None else contains(answers[j], true),
            ))
        yield [RecordScores(r.case_id, *(tuple(parts[i][k]) for k in PARTS)) for i, r in enumerate(chunk)]
        start = end


def score_records(model, tok, records: Sequence[EvalRecord], batch_size: int = 64,
                  progress: TickFn | None = None, stage: str = "score", prompting: Prompting = Prompting()) -> list[RecordScores]:
    """Scores of every record (raises ``KeyboardInterrupt`` through; see ``_collect``)."""
    out: list[RecordScores] = []
    _collect(model, tok, records, batch_size, progress, stage, out, prompting)
    return out


def _collect(model, tok, records, batch_size, progress, stage, out: list[RecordScores],
             prompting: Prompting = Prompting()) -> None:
    """Append scores to ``out`` chunk by chunk, so an interrupt keeps the finished chunks."""
    total, done, i = count_prompts(records), 0, 0
    if progress:
        progress(Tick(stage, 0, total))
    for part in iter_scores(model, tok, records, batch_size, prompting=prompting):
        out.extend(part)
        done += count_prompts(records[i : i + len(part)])
        i += len(part)
        if progress:
            progress(Tick(stage, done, total))


def score_until_interrupted(model, tok, records, batch_size, progress, stage, out: list[RecordScores],
                            prompting: Prompting = Prompting()):
    """Append the records' scores to ``out``; Ctrl-C keeps the finished chunks.

    Returns (seconds, pairs scored, interrupted).
    """
    start, t, stopped = len(out), time.perf_counter(), False
    try:
        _collect(model, tok, records, batch_size, progress, stage, out, prompting)
    except KeyboardInterrupt:
        stopped = True
    return time.perf_counter() - t, count_prompts(records[: len(out) - start]), stopped


@dataclass(frozen=True)
class RunResult:
    records: tuple[EvalRecord, ...]  # the records edited and scored
    edited: tuple[RecordScores, ...]
    baseline: tuple[RecordScores, ...]  # the same records on the unedited model
    sequential: bool
    batch_size: int
    batches: int  # batches edited
    facts_edited: int  # facts whose edit was made (≥ len(records) after an interrupt)
    edit_seconds: float  # wall time of the edits, without first-use statistics (C0)
    stats_seconds: float  # time spent computing/reading C0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    score_seconds: float = 0.0
    prompts_scored: int = 0  # (prompt, object) pairs scored, baseline included
    interrupted: bool = False
    health: dict | None = None  # with ``health=True``: held-out NLL and fluency, edited and unedited

    @property
    def metrics(self) -> Metrics:
        return summarize(self.edited, self.baseline)

    @property
    def baseline_metrics(self) -> Metrics:
        return summarize(self.baseline, self.baseline)

    @property
    def edit_seconds_per_fact(self) -> float | None:
        return self.edit_seconds / self.facts_edited if self.facts_edited else None

    def to_dict(self) -> dict:
        return {
            "n_records": len(self.records),
            "edited": self.metrics.to_dict(),
            "baseline": self.baseline_metrics.to_dict(),
            "sequential": self.sequential,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "facts_edited": self.facts_edited,
            "edit_seconds": self.edit_seconds,
            "edit_seconds_per_fact": self.edit_seconds_per_fact,
            "statistics_seconds": self.stats_seconds,
            "phase_seconds": self.phase_seconds,
            "score_seconds": self.score_seconds,
            "prompts_scored": self.prompts_scored,
            "prompts_per_second": self.prompts_scored / self.score_seconds if self.score_seconds else None,
            "interrupted": self.interrupted,
            "health": self.health,
        }


_T = TypeVar("_T")


def batches_of(records: Sequence[_T], batch_size: int) -> list[list[_T]]:
    if batch_size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
    return [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]


def evaluate(
    model,
    tok,
    editor: Editor,
    records: Sequence[EvalRecord],
    batch_size: int,
    sequential: bool = False,
    baseline: Sequence[RecordScores] | None = None,
    score_batch_size: int = 64,
    progress: TickFn | None = None,
    prompting: Prompting = Prompting(),
    health: bool = False,
) -> RunResult:
    """Edit ``records`` in batches of ``batch_size`` and score them; see the module docstring.

    ``baseline`` (scores of the same records on the unedited model, in order) is computed first
    when not given. ``prompting``: chat turns and generated answers (``generation.py``).
    ``health``: also the held-out NLL and the fluency of greedy generations from the rewrite
    prompts (``editing.health``), on the unedited model and on each edited state (every batch's in
    batch mode, averaged; the final one in sequential mode).
    """
    from kedit.session.engine import EditStack

    records = list(records)
    checkup = _Checkup(model, tok, records) if health else None
    stack = EditStack.around(editor)
    tally = _Tally()
    base: list[RecordScores] = list(baseline) if baseline is not None else []
    interrupted = False
    if baseline is None:
        dt, n, interrupted = score_until_interrupted(
            model, tok, records, score_batch_size, progress, "baseline", base, prompting)
        tally.scored(dt, n)
    if len(base) < len(records) and not interrupted:
        raise ValueError(f"{len(base)} baseline scores for {len(records)} records")

    edited: list[RecordScores] = []
    done: list[EvalRecord] = []  # records whose edit was applied (sequential) or scored (batch)
    try:
        for batch in batches_of(records, batch_size) if not interrupted else []:
            _edit_and_push(stack, editor, batch, tally, progress, len(done), len(records))
            if sequential:
                done.extend(batch)
            else:
                try:
                    t = time.perf_counter()
                    edited.extend(score_records(model, tok, batch, score_batch_size, prompting=prompting))
                    tally.scored(time.perf_counter() - t, count_prompts(batch))
                    done.extend(batch)
                    if checkup:
                        checkup.measure(batch)
                finally:
                    stack.pop()  # every batch is scored on the base weights
            if progress:
                progress(Tick("edit", len(done), len(records)))
    except KeyboardInterrupt:
        interrupted = True
    try:
        if sequential and done:
            dt, n, stopped = score_until_interrupted(
                model, tok, done, score_batch_size, progress, "score", edited, prompting)
            tally.scored(dt, n)
            interrupted = interrupted or stopped
            if checkup and not interrupted:
                checkup.measure(done)
    finally:
        stack.reset()
    scored = done[: len(edited)]
    return RunResult(
        records=tuple(scored), edited=tuple(edited), baseline=tuple(base[: len(scored)]),
        sequential=sequential, batch_size=batch_size, batches=tally.batches, facts_edited=tally.facts,
        edit_seconds=tally.edit_s, stats_seconds=tally.stats_s, phase_seconds=tally.phases,
        score_seconds=tally.score_s, prompts_scored=tally.prompts, interrupted=interrupted,
        health=checkup.summary() if checkup else None,
    )


@dataclass
class _Tally:
    """What a run has spent so far: edit and statistics time by phase, scoring time and pairs."""

    edit_s: float = 0.0  # the edits' wall time without the statistics (C0)
    stats_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    facts: int = 0
    score_s: float = 0.0
    prompts: int = 0

    def edited(self, seconds: float, timings: dict[str, float], n_facts: int) -> None:
        stats = timings.get("statistics", 0.0)
        self.edit_s += seconds - stats
        self.stats_s += stats
        for k, v in timings.items():
            self.phases[k] = self.phases.get(k, 0.0) + v
        self.batches += 1
        self.facts += n_facts

    def scored(self, seconds: float, pairs: int) -> None:
        self.score_s += seconds
        self.prompts += pairs


def _edit_and_push(stack, editor: Editor, batch: list[EvalRecord], tally: _Tally,
                   progress: TickFn | None, before: int, total: int) -> None:
    """Edit ``batch`` on the stack's current weights and push its deltas (the stack remembers them)."""

    def prog(p: Progress) -> None:
        if progress:
            progress(Tick("edit", before, total, f"{p.phase} {p.detail}".strip()))

    t = time.perf_counter()
    res = stack.edit([r.fact for r in batch], editor.hparams, progress=prog)
    seconds = time.perf_counter() - t
    stack.push(res.deltas, res.facts)
    tally.edited(seconds, res.timings, len(batch))


class _Checkup:
    """Held-out NLL and fluency: of the unedited model at once, of edited states as they come."""

    def __init__(self, model, tok, records: Sequence[EvalRecord]) -> None:
        from kedit.editing.health import fluency, heldout_nll

        self.model, self.tok = model, tok
        self.base = {"heldout_nll": heldout_nll(model, tok), "fluency": fluency(model, tok, self.prompts(records))}
        self.states: list[tuple[int, float, float]] = []  # (records, held-out NLL, fluency)

    @staticmethod
    def prompts(records) -> list[str]:
        return [r.rewrite_prompt for r in records]

    def measure(self, records) -> None:
        from kedit.editing.health import fluency, heldout_nll

        self.states.append((len(records), heldout_nll(self.model, self.tok), fluency(self.model, self.tok, self.prompts(records))))

    def summary(self) -> dict:
        n = sum(k for k, _, _ in self.states)
        edited = ({"heldout_nll": sum(k * h for k, h, _ in self.states) / n, "fluency": sum(k * f for k, _, f in self.states) / n}
                  if n else None)
        return {"unedited": self.base, "edited": edited}
