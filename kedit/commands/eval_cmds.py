"""Evaluation commands: ``eval`` (how well edits hold), ``sweep-layers`` (which layer edits best),
``scale`` (how quality changes with the batch size, all at once versus batch after batch) and
``lifelong`` (a long session of commits: quality of all edits so far and the model's health).

Figures go to stdout (a table, or one JSON object with ``--json``); the progress bar (with an
ETA) goes to stderr. Ctrl-C stops a run, prints the figures measured so far and exits 130.
torch and transformers are imported only when a command runs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from kedit.cli import app
from kedit.commands.placement_opts import DeviceMapOpt, MaxMemoryOpt, use_placement
from kedit.errors import UsageError

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model: 'default', a local folder or a hub id.")]
RecordsOpt = Annotated[Path, typer.Option("--records", "-r", help="CounterFact (either format) or zsRE JSON file.",
                                          show_default=False)]
MethodOpt = Annotated[str, typer.Option("--method", help="emmet | memit | rome.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", "-n", help="Use at most N records.", min=1)]
OffsetOpt = Annotated[int, typer.Option("--offset", help="Skip the first K records.", min=0)]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object with every figure and the settings on stdout.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="float32 | bfloat16 (default: auto, bf16 where fast).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N (default: auto).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the context prefixes.")]
CorpusOpt = Annotated[str, typer.Option("--corpus", help="Text for the key statistics C0.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: torch's).", min=1)]
ScoreBatchOpt = Annotated[int, typer.Option("--score-batch-size", help="Prompts per forward pass when scoring.", min=1)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Change one hyper-parameter of the preset, e.g. --set values.min_prob=0.5 (repeatable).")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Where to save the PNG plot.")]
EditLayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Edit layer(s) (default: the preset's).")]


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """'3', '2,3,4', '1-12' or '0-20:2' (a range with a step) → a tuple of ints (``kedit.choices``)."""
    from kedit.choices import parse_numbers

    out = parse_numbers(text, what)
    if not out:
        raise UsageError(f"no {what} in {text!r}")
    return out


class _Setup:
    """The loaded model, the preset and what every ``Editor`` of a run shares."""

    def __init__(self, model: str, method: str, layers: str | None, dtype, device, seed: int, corpus: str,
                 threads: int | None, quiet: bool, overrides: list[str] | None = None) -> None:
        from kedit.editing import arch, cpu, load_model, model_fingerprint, preset, sample_prefixes
        from kedit.editing.hparams import with_settings
        from kedit.paths import cache_dir

        if threads:
            cpu.fix_threads(threads)
        err = _err()
        if not quiet:
            from kedit.show import markup

            err.print(f"[dim]loading {markup(model)} …[/]", markup=True)
        self.lm = load_model(model, device=device, dtype=dtype)
        self.model, self.tok = self.lm.model, self.lm.tokenizer
        hp = preset(model, method, num_layers=arch.num_layers(self.model))
        if layers:
            hp = replace(hp, layers=parse_ints(layers, "layers"))
        hp = with_settings(hp, overrides or [])
        for l in hp.layers:
            arch.mlp_out_module(self.model, l)  # a clear error for a layer the model lacks
        self.hparams, self.seed, self.corpus, self.cache = hp, seed, corpus, cache_dir()
        self.fingerprint = model_fingerprint(self.model)
        if not quiet:
            err.print("[dim]sampling context prefixes …[/]", markup=True)
        self.prefixes = tuple(sample_prefixes(self.model, self.tok, hp.n_prefixes, hp.prefix_len, seed))
        self.name = model

    def computing(self):
        """This run's share of the CPU, beside other kedit processes computing (``editing.cpu``)."""
        from kedit.editing import cpu

        return cpu.computing(dynamic=True)

    def editor(self, layers: tuple[int, ...] | None = None):
        from kedit.editing import Editor

        hp = self.hparams if layers is None else replace(self.hparams, layers=layers)
        return Editor(self.model, self.tok, hp, self.prefixes, self.fingerprint, self.corpus, self.cache)

    def settings(self, **extra) -> dict:
        import torch

        from kedit.editing.models import dtype_name

        return {
            "model": self.name, "model_fingerprint": self.fingerprint, "device": str(self.lm.device),
            "dtype": dtype_name(self.lm.dtype), "method": self.hparams.method, "layers": list(self.hparams.layers),
            "hparams": self.hparams.to_dict(), "seed": self.seed, "prefixes": list(self.prefixes),
            "corpus": self.corpus, "torch_threads": torch.get_num_threads(), **extra,
        }


def _err():
    from kedit import show

    return show.console(stderr=True)  # user text (model names, paths): no markup unless asked


class _Bar:
    """A rich progress bar with an ETA on stderr, one task per stage."""

    NAMES = {"baseline": "scoring unedited", "edit": "editing", "score": "scoring edited"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.tty = sys.stderr.isatty()
        self.last: tuple = ()
        self.last_line = 0.0
        self.t0 = time.perf_counter()

    def __enter__(self):
        if self.enabled and self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[detail]}", style="dim", markup=False),
                console=_err(), transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, tick) -> None:
        if self.enabled and not self.tty:  # a log file: one plain line when a count changes
            now = time.perf_counter()
            if (tick.stage, tick.done, tick.total) != self.last or now - self.last_line > 30:
                self.last, self.last_line = (tick.stage, tick.done, tick.total), now
                sys.stderr.write(f"[{time.perf_counter() - self.t0:7.1f}s] {self.NAMES.get(tick.stage, tick.stage)} "
                                 f"{tick.done}/{tick.total} {tick.detail}\n")
                sys.stderr.flush()
            return
        if self.progress is None:
            return
        unit = "facts" if tick.stage == "edit" else "prompts"
        name = f"{self.NAMES.get(tick.stage, tick.stage)} ({unit})"
        key = tick.stage if tick.stage == "edit" else f"{tick.stage}:{tick.total}:{tick.detail}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(name, total=tick.total, detail="")
        self.progress.update(self.tasks[key], completed=tick.done, total=tick.total, detail=tick.detail[:40])


def _load(records: Path, offset: int, limit: int | None):
    from kedit.eval.records import load_records

    return load_records(records, offset=offset, limit=limit)


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _finish(interrupted: bool) -> None:
    if interrupted:
        _err().print("[yellow]interrupted:[/] the figures above cover what was measured before Ctrl-C", markup=True)
        sys.exit(130)  # not typer.Exit: click returns its code instead of exiting when not standalone


@app.command("eval")
def eval_cmd(
    records: RecordsOpt,
    model: ModelOpt = "default",
    method: MethodOpt = "emmet",
    layers: Annotated[Optional[str], typer.Option("--layers", help="Edit layers, e.g. 3, or 2,3,4 (MEMIT).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Facts per edit.", min=1)] = 16,
    sequential: Annotated[bool, typer.Option("--sequential", help="Apply the batches one after another "
                                             "on the same model and score all edited records at the end.")] = False,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    as_json: JsonOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    seed: SeedOpt = 0,
    corpus: CorpusOpt = "wiki-sample",
    threads: ThreadsOpt = None,
    score_batch_size: ScoreBatchOpt = 64,
    chat: Annotated[bool, typer.Option("--chat", help="Ask every prompt as a chat turn (instruct models): teacher-forced "
                                       "after the assistant restates the prompt, answers generated freely.")] = False,
    gen_tokens: Annotated[Optional[int], typer.Option("--gen-tokens", help="Length of the greedy answers behind GE, GP, "
                                                      "GN (default 10, 24 with --chat; 0: none).", min=0)] = None,
    chat_edits: Annotated[Optional[bool], typer.Option("--chat-edits/--no-chat-edits", help="Fit each fact as a chat "
                                                       "turn too when editing (default: the preset's).")] = None,
    overrides: SetOpt = None,
    health: Annotated[bool, typer.Option("--health/--no-health", help="Also held-out perplexity and the fluency "
                                         "(generation entropy) of greedy generations, edited and unedited.")] = True,
) -> None:
    """Edit CounterFact/zsRE records and report ES, PS, NS, S (edited and unedited), what greedy answers
    say, fluency and held-out perplexity."""
    use_placement(device_map, max_memory)
    from kedit.editing.chat import CHAT_NEW_TOKENS
    from kedit.eval.generation import Prompting
    from kedit.eval.runner import evaluate

    if layers:
        parse_ints(layers, "layers")
    recs = _load(records, offset, limit)
    s = _Setup(model, method, layers, dtype, device, seed, corpus, threads, quiet=False, overrides=overrides)
    if chat_edits is not None:
        s.hparams = replace(s.hparams, values=replace(s.hparams.values, chat=chat_edits))
    prompting = Prompting(chat=chat, gen_tokens=(CHAT_NEW_TOKENS if chat else 10) if gen_tokens is None else gen_tokens)
    started = time.perf_counter()
    with s.computing(), _Bar(True) as bar:
        res = evaluate(s.model, s.tok, s.editor(), recs, batch_size, sequential=sequential,
                       score_batch_size=score_batch_size, progress=bar, prompting=prompting, health=health)
    settings = s.settings(records=str(records), offset=offset, limit=limit, n_requested=len(recs),
                          batch_size=batch_size, sequential=sequential, score_batch_size=score_batch_size,
                          format=recs[0].source, chat=chat, gen_tokens=prompting.gen_tokens)
    if as_json:
        _emit({"settings": settings, **res.to_dict(), "wall_seconds": time.perf_counter() - started})
    else:
        from kedit.eval.metrics import figure
        from kedit.show import console

        cols = ("ES", "PS", "NS", "S", "EM", "PM", "NM", "RA", "PA", "LA", "GE", "GP", "GN")
        e, b = res.metrics, res.baseline_metrics
        rows = [[c, figure(getattr(e, c)), figure(getattr(b, c))] for c in cols]
        if res.health is not None:
            import math

            ed, un = res.health["edited"] or {}, res.health["unedited"]
            rows.append(["fluency", figure(ed.get("fluency")), figure(un["fluency"])])
            rows.append(["held-out ppl", figure(math.exp(ed["heldout_nll"]), 2) if ed else "—",
                         figure(math.exp(un["heldout_nll"]), 2)])
        out = console()
        mode = ("sequential-batched" if sequential else "batch (fresh weights per batch)") + (", as chat" if chat else "")
        out.print(_table(f"{s.hparams.method.upper()} layers {list(s.hparams.layers)}, {len(res.records)} records, "
                         f"batch {batch_size}, {mode}", ["metric", "edited", "unedited"], rows))
        per = res.edit_seconds_per_fact
        pps = res.prompts_scored / res.score_seconds if res.score_seconds else 0.0
        out.print(f"edit time: {figure(per, 2)} s per fact ({res.edit_seconds:.1f} s for {res.facts_edited} facts, "
                  f"+ {res.stats_seconds:.1f} s statistics) · scoring: {pps:.1f} prompts/s")
    _finish(res.interrupted)


def _show_experiment(exp, title: str, plot_path: Path | None, plot_fn, settings: dict, as_json: bool) -> None:
    from kedit.eval.experiments import table_rows, text_chart

    saved = None
    if plot_path is not None and exp.rows:
        saved = str(plot_fn(exp, plot_path))
    if as_json:
        _emit({"settings": settings, **exp.to_dict(), "plot": saved})
        return
    from kedit.show import console

    out = console()
    out.print(_table(title, ["run", "ES", "PS", "NS", "S", "EM", "PM", "NM", "s/fact"], table_rows(exp)))
    out.print(text_chart(exp))
    if saved:
        out.print(f"plot saved to {saved}")


@app.command("sweep-layers")
def sweep_layers_cmd(
    records: RecordsOpt,
    layers: Annotated[str, typer.Option("--layers", help="Layers to try, e.g. 1-12 or 0-20:2.")] = "1-12",
    model: ModelOpt = "default",
    method: MethodOpt = "emmet",
    limit: LimitOpt = 32,
    offset: OffsetOpt = 0,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Facts per edit (default: all at once).",
                                                      min=1)] = None,
    plot: PlotOpt = Path("sweep-layers.png"),
    as_json: JsonOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    seed: SeedOpt = 0,
    corpus: CorpusOpt = "wiki-sample",
    threads: ThreadsOpt = None,
    score_batch_size: ScoreBatchOpt = 64,
) -> None:
    """Measure which layer edits best: the same edits made at each layer, scored for efficacy, paraphrases and
    neighbourhood (ES, PS, NS, S); table, terminal chart, PNG."""
    use_placement(device_map, max_memory)
    from kedit.eval.experiments import plot_sweep, sweep_layers

    todo = parse_ints(layers, "layers")
    if method == "memit":
        raise UsageError("sweep-layers edits one layer at a time", hint="use --method emmet or rome")
    recs = _load(records, offset, limit)
    s = _Setup(model, method, str(todo[0]), dtype, device, seed, corpus, threads, quiet=False)
    from kedit.editing import arch

    for l in todo:
        arch.mlp_out_module(s.model, l)  # a clear error for a layer the model lacks
    b = batch_size or len(recs)
    with s.computing(), _Bar(True) as bar:
        exp = sweep_layers(s.model, s.tok, lambda l: s.editor((l,)), recs, todo, b, score_batch_size, bar)
    settings = s.settings(records=str(records), offset=offset, limit=limit, layers=list(todo), batch_size=b,
                          score_batch_size=score_batch_size, format=recs[0].source)
    title = f"{method.upper()} layer sweep: {len(recs)} edits per layer, batch {b}"
    _show_experiment(exp, title, plot, lambda e, p: plot_sweep(e, p, f"{model}: {title}"), settings, as_json)
    _finish(exp.interrupted)


@app.command("scale")
def scale_cmd(
    records: RecordsOpt,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes, e.g. 1,4,16,64.")] = "1,4,16,64",
    total: Annotated[int, typer.Option("--total", "-n", help="Number of edits in all.", min=1)] = 64,
    model: ModelOpt = "default",
    method: MethodOpt = "emmet",
    layers: EditLayersOpt = None,
    offset: OffsetOpt = 0,
    plot: PlotOpt = Path("scale.png"),
    as_json: JsonOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    seed: SeedOpt = 0,
    corpus: CorpusOpt = "wiki-sample",
    threads: ThreadsOpt = None,
    score_batch_size: ScoreBatchOpt = 64,
    overrides: SetOpt = None,
) -> None:
    """Measure how edit quality changes with the batch size: the same facts edited in batches of each size,
    every batch on the base model versus batch after batch (sequential); ES, PS, NS, S per size; table, PNG."""
    use_placement(device_map, max_memory)
    from kedit.eval.experiments import plot_scale, scale_batches

    sizes = parse_ints(batch_sizes, "batch sizes")
    if min(sizes) < 1:
        raise UsageError(f"batch sizes must be ≥ 1, got {batch_sizes!r}")
    if layers:
        parse_ints(layers, "layers")
    recs = _load(records, offset, total)
    s = _Setup(model, method, layers, dtype, device, seed, corpus, threads, quiet=False, overrides=overrides)
    with s.computing(), _Bar(True) as bar:
        exp = scale_batches(s.model, s.tok, s.editor(), recs, sizes, score_batch_size, bar)
    settings = s.settings(records=str(records), offset=offset, total=len(recs), batch_sizes=list(sizes),
                          score_batch_size=score_batch_size, format=recs[0].source)
    title = f"{method.upper()} layers {list(s.hparams.layers)}: {len(recs)} edits, batch vs sequential-batched"
    _show_experiment(exp, title, plot, lambda e, p: plot_scale(e, p, f"{model}: {title}"), settings, as_json)
    _finish(exp.interrupted)


@app.command("lifelong")
def lifelong_cmd(
    records: RecordsOpt,
    total: Annotated[int, typer.Option("--total", "-n", help="Number of sequential edits.", min=1)] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Facts per commit.", min=1)] = 16,
    checkpoints: Annotated[Optional[str], typer.Option(
        "--checkpoints", help="Numbers of edits at which to measure, e.g. 128,256,512 (default: ~8 even steps).")] = None,
    model: ModelOpt = "default",
    method: MethodOpt = "emmet",
    layers: EditLayersOpt = None,
    offset: OffsetOpt = 0,
    plot: PlotOpt = Path("lifelong.png"),
    as_json: JsonOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    seed: SeedOpt = 0,
    corpus: CorpusOpt = "wiki-sample",
    threads: ThreadsOpt = None,
    score_batch_size: ScoreBatchOpt = 64,
    overrides: SetOpt = None,
    guard: Annotated[Optional[float], typer.Option(
        "--guard", help="Take back a commit that raises held-out perplexity by more than this fraction (a "
        "session flags 0.02) and retry its facts in halves; a fact that still does on its own is left out.",
        min=0.0, metavar="FRACTION")] = None,
) -> None:
    """Sequential edits in batches, each commit remembering the earlier ones: ES/PS/NS/S of all
    edits so far, the first batch's efficacy, held-out perplexity and commit time at checkpoints."""
    use_placement(device_map, max_memory)
    from kedit.eval.lifelong import COLUMNS, plot_lifelong, run_lifelong, table_rows

    marks = parse_ints(checkpoints, "checkpoints") if checkpoints else None
    if layers:
        parse_ints(layers, "layers")
    recs = _load(records, offset, total)
    s = _Setup(model, method, layers, dtype, device, seed, corpus, threads, quiet=False, overrides=overrides)
    with s.computing(), _Bar(True) as bar:
        run = run_lifelong(s.model, s.tok, s.editor(), recs, batch_size, marks, score_batch_size, bar, guard)
    title = f"{s.hparams.method.upper()} layers {list(s.hparams.layers)}: {len(recs)} sequential edits, batches of {batch_size}"
    saved = str(plot_lifelong(run, plot, f"{model}: {title}")) if plot is not None and run.checkpoints else None
    if as_json:
        _emit({"settings": s.settings(records=str(records), offset=offset, total=len(recs), batch_size=batch_size,
                                      score_batch_size=score_batch_size, format=recs[0].source),
               **run.to_dict(), "plot": saved})
    else:
        from rich.console import Console

        out = Console(highlight=False)
        out.print(_table(title + f" (base held-out NLL {run.base_nll:.3f}, ‖W‖ {run.base_weight_norm:.0f})",
                         COLUMNS, table_rows(run)))
        if run.guard is not None:
            left = ", ".join(str(c) for c in run.refused) or "none"
            out.print(f"guard {run.guard:.1%}: {run.undone} commits taken back; facts left out (record ids): {left}")
        if saved:
            out.print(f"plot saved to {saved}")
    _finish(run.interrupted)
