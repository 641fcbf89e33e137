"""Two experiments on edit quality: which layer edits best, and batch versus sequential-batched
editing as the batch size grows (the questions of Yoon, Gupta and Anumanchipalli 2024, "Is Bigger
Edit Batch Size Always Better? An Empirical Study on Model Editing with Llama-3").

* ``sweep_layers``: the same records edited (non-sequentially, in batches) at each layer of a
  range; one row of metrics per layer. The unedited baseline is scored once.
* ``scale_batches``: for each batch size, batch editing (every batch on the base weights) and
  sequential-batched editing (batches applied one after another, all scored at the end) of the
  same records. When the batch size covers all records the two are the same run, made once.

Both return what they measured so far when interrupted (``interrupted=True``). Plots use
matplotlib's Agg backend (no display); ``text_chart`` draws bars for a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kedit.editing.edit import Editor
from kedit.eval.metrics import Metrics, RecordScores, figure, summarize
from kedit.eval.records import EvalRecord
from kedit.eval.runner import RunResult, Tick, TickFn, evaluate, score_until_interrupted

SHOWN = ("ES", "PS", "NS", "S")


@dataclass(frozen=True)
class Row:
    label: str  # "layer 3", "batch 16", "sequential 16"
    layer: int | None
    batch_size: int
    sequential: bool
    metrics: Metrics
    edit_seconds_per_fact: float | None
    complete: bool  # False when interrupted before all records of this row were evaluated

    def to_dict(self) -> dict:
        return {"label": self.label, "layer": self.layer, "batch_size": self.batch_size,
                "sequential": self.sequential, "metrics": self.metrics.to_dict(),
                "edit_seconds_per_fact": self.edit_seconds_per_fact, "complete": self.complete}


@dataclass(frozen=True)
class Experiment:
    kind: str  # "sweep-layers" | "scale"
    rows: tuple[Row, ...]
    baseline: Metrics
    n_records: int
    interrupted: bool

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_records": self.n_records, "baseline": self.baseline.to_dict(),
                "rows": [r.to_dict() for r in self.rows], "interrupted": self.interrupted}


def _row(label: str, layer: int | None, res: RunResult, n: int) -> Row:
    return Row(label, layer, res.batch_size, res.sequential, res.metrics, res.edit_seconds_per_fact,
               complete=not res.interrupted and len(res.records) == n)


def _offset(progress: TickFn | None, before: int, total: int, label: str) -> TickFn | None:
    """Report a run's edit progress as part of the whole experiment."""
    if progress is None:
        return None

    def tick(t: Tick) -> None:
        if t.stage == "edit":
            progress(Tick("edit", before + t.done, total, f"{label}: {t.detail}".rstrip(": ")))
        else:
            progress(Tick(t.stage, t.done, t.total, label))

    return tick


def _baseline(model, tok, records, score_batch_size, progress) -> tuple[list[RecordScores], bool]:
    out: list[RecordScores] = []
    _, _, stopped = score_until_interrupted(model, tok, records, score_batch_size, progress, "baseline", out)
    return out, stopped


def sweep_layers(
    model,
    tok,
    make_editor: Callable[[int], Editor],
    records: Sequence[EvalRecord],
    layers: Sequence[int],
    batch_size: int,
    score_batch_size: int = 64,
    progress: TickFn | None = None,
) -> Experiment:
    """Edit ``records`` at each layer (``make_editor(layer)`` gives that layer's editor)."""
    records = list(records)
    base, stopped = _baseline(model, tok, records, score_batch_size, progress)
    rows: list[Row] = []
    total = len(records) * len(layers)
    for i, layer in enumerate(layers if not stopped else []):
        label = f"layer {layer}"
        res = evaluate(model, tok, make_editor(layer), records, batch_size, sequential=False, baseline=base,
                       score_batch_size=score_batch_size, progress=_offset(progress, i * len(records), total, label))
        if res.records:
            rows.append(_row(label, layer, res, len(records)))
        if res.interrupted:
            stopped = True
            break
    return Experiment("sweep-layers", tuple(rows), summarize(base, base), len(base), stopped)


def scale_batches(
    model,
    tok,
    editor: Editor,
    records: Sequence[EvalRecord],
    batch_sizes: Sequence[int],
    score_batch_size: int = 64,
    progress: TickFn | None = None,
) -> Experiment:
    """Batch versus sequential-batched editing of ``records`` for each batch size."""
    records = list(records)
    base, stopped = _baseline(model, tok, records, score_batch_size, progress)
    runs = [(b, seq) for b in batch_sizes for seq in ((False, True) if b < len(records) else (False,))]
    total = len(records) * len(runs)
    rows: list[Row] = []
    layer = editor.hparams.layers[0] if len(editor.hparams.layers) == 1 else None
    for i, (b, seq) in enumerate(runs if not stopped else []):
        label = f"{'sequential' if seq else 'batch'} {b}"
        res = evaluate(model, tok, editor, records, b, sequential=seq, baseline=base,
                       score_batch_size=score_batch_size, progress=_offset(progress, i * len(records), total, label))
        if res.records:
            rows.append(_row(label, layer, res, len(records)))
            if b >= len(records):  # one batch: sequential-batched editing is the same run
                rows.append(Row(f"sequential {b}", layer, b, True, res.metrics, res.edit_seconds_per_fact,
                                rows[-1].complete))
        if res.interrupted:
            stopped = True
            break
    return Experiment("scale", tuple(rows), summarize(base, base), len(base), stopped)


# -- presentation -----------------------------------------------------------------------------


def table_rows(exp: Experiment, columns: Sequence[str] = ("ES", "PS", "NS", "S", "EM", "PM", "NM")) -> list[list[str]]:
    """Cells of a results table: a baseline row, then one per row of the experiment."""
    out = [["baseline", *(figure(getattr(exp.baseline, c)) for c in columns), "—"]]
    for r in exp.rows:
        out.append([r.label + ("" if r.complete else f" (n={r.metrics.n})"),
                    *(figure(getattr(r.metrics, c)) for c in columns), figure(r.edit_seconds_per_fact, 2)])
    return out


def text_chart(exp: Experiment, metrics: Sequence[str] = SHOWN, width: int = 40) -> str:
    """Horizontal bars (0–100) per row and metric, for a terminal without graphics."""
    lines = []
    label_w = max([len(r.label) for r in exp.rows] + [8])
    for m in metrics:
        lines.append(f"{m}  (baseline {figure(getattr(exp.baseline, m))})")
        for r in exp.rows:
            v = getattr(r.metrics, m)
            n = 0 if v is None else round(max(0.0, min(100.0, v)) / 100 * width)
            lines.append(f"  {r.label:<{label_w}} {'█' * n}{'·' * (width - n)} {figure(v)}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(exp: Experiment, path: str | Path, title: str = "") -> Path:
    """ES/PS/NS/S against the edit layer (baseline dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    layers = [r.layer for r in exp.rows]
    for i, m in enumerate(SHOWN):
        color = f"C{i}"
        ax.plot(layers, [getattr(r.metrics, m) for r in exp.rows], marker="o", color=color, label=m)
        b = getattr(exp.baseline, m)
        if b is not None:
            ax.axhline(b, color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("edited layer")
    ax.set_ylabel("score (×100); dotted: unedited")
    ax.set_ylim(0, 102)
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or f"Layer sweep ({exp.n_records} edits per layer)")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_scale(exp: Experiment, path: str | Path, title: str = "") -> Path:
    """One panel per metric: batch versus sequential-batched editing against batch size."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8, 6), sharex=True)
    for ax, m in zip(axes.flat, SHOWN):
        for seq, style in ((False, "o-"), (True, "s--")):
            rows = [r for r in exp.rows if r.sequential == seq]
            ax.plot([r.batch_size for r in rows], [getattr(r.metrics, m) for r in rows], style,
                    label="sequential-batched" if seq else "batch")
        b = getattr(exp.baseline, m)
        if b is not None:
            ax.axhline(b, color="grey", linestyle=":", linewidth=1, label="unedited")
        ax.set_xscale("log", base=2)
        sizes = sorted({r.batch_size for r in exp.rows})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(m)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("batch size")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title or f"Batch vs sequential-batched editing ({exp.n_records} edits)")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
