"""Session commands: add, queue, commit, undo, query, log, replay, export, repair.

Machine output (``--json``) goes to stdout, progress and diagnostics to stderr. ``add``,
``queue``, ``log`` and ``repair`` work on the session folder alone and never import torch.
Exit codes are those of ``kedit.cli`` (0 ok · 2 bad input · 3 environment · 4 edit refused ·
5 session/journal problem · 130 cancelled).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from kedit.choices import parse_layers
from kedit.cli import app
from kedit.commands.placement_opts import DeviceMapOpt, MaxMemoryOpt, use_placement
from kedit.errors import SessionError, UsageError

EXIT_CODES = ("Exit codes: 0 ok, 1 error, 2 bad input, 3 missing package/model/device, 4 edit refused (weights untouched), "
              "5 session or journal problem, 130 cancelled. KEDIT_DEBUG=1 shows tracebacks.")

SessionArg = Annotated[str, typer.Argument(help="Session name (→ sessions/NAME/) or folder path.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model: 'default', a local folder or a hub id.")]
MethodOpt = Annotated[Optional[str], typer.Option("--method", help="emmet | memit | rome (for the next commits).")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Edit layers, e.g. '3' or '2,3,4' or '2-4'.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N (default: the session's, else auto).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: the session's, else auto).")]
GuardOpt = Annotated[Optional[bool], typer.Option(
    "--guard/--no-guard", help="Take back a commit that would be flagged for raising held-out perplexity and "
    "commit its facts in halves, holding back a fact that does so on its own (default: the session's setting).")]
WaitOpt = Annotated[Optional[float], typer.Option(
    "--wait", min=0, metavar="SECONDS",
    help="If another kedit process is changing the session, wait up to SECONDS for it (default: refuse at once to "
         "commit, undo or repair; wait up to 60 s to change the queue or the settings).")]


# -- output helpers -----------------------------------------------------------------------------


def _err_console():
    from kedit import show

    return show.console(stderr=True)  # user text in messages: no markup, control characters visible


def _out_console():
    from kedit import show

    return show.console()


def _fact_line(f) -> str:
    """A fact on one line, as the person typed it (control characters visible)."""
    from kedit.show import visible

    return f"{visible(f.text)} → {visible(f.target)}"


_C1 = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}  # JSON escapes C0 itself; C1 would reach the terminal raw


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str).translate(_C1) + "\n")
    sys.stdout.flush()


def _check_method(method: str | None) -> None:
    from kedit.choices import method_name

    if method is not None:
        method_name(method)


class ProgressPrinter:
    """Edit/replay progress on stderr: a rich bar on a terminal, one plain line per update otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "ProgressPrinter":
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}", markup=False),
                TimeElapsedColumn(), console=_err_console(), transient=False,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        detail = p.detail + (f" loss {p.loss:.3f}" if p.loss is not None else "")
        if self._bar is None:
            print(f"{p.phase} {p.done}/{p.total} {detail}".rstrip(), file=sys.stderr, flush=True)
            return
        if p.phase not in self._tasks:
            self._tasks[p.phase] = self._bar.add_task(p.phase, total=max(1, p.total), detail=detail)
        self._bar.update(self._tasks[p.phase], completed=p.done, total=max(1, p.total), detail=detail)


def _info(msg: str) -> None:
    _err_console().print(msg, markup=False)


def _warn(msg: str) -> None:
    _err_console().print(f"warning: {msg}", markup=False, style="yellow")


# -- the folder-only commands (no torch) --------------------------------------------------------


def _folder(session: str, must_exist: bool = True):
    from kedit.session.folder import SessionFolder, resolve

    folder = SessionFolder(resolve(session))
    if must_exist and not folder.exists():
        raise SessionError(f"no session at {folder.path}", hint="create one with 'kedit add SESSION --subject … --prompt … --target …'")
    return folder


def _check_model_light(model: str | None) -> None:
    """Catch an obviously wrong --model without loading it (a folder without config.json)."""
    from kedit.errors import ModelNotFoundError

    if model in (None, "default"):
        return
    p = Path(model).expanduser()
    if p.exists() and not (p / "config.json").exists():
        raise ModelNotFoundError(f"{p} has no config.json: not a Hugging Face model folder")
    if not p.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise ModelNotFoundError(f"no model folder at {p}", hint="pass 'default', a local folder with config.json, or a hub id")


def _facts_json(facts) -> list[dict]:
    return [f.to_dict() | {"text": f.text} for f in facts]


@app.command("add", epilog=EXIT_CODES)
def add_cmd(
    session: SessionArg,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="The subject, e.g. 'Eiffel Tower'.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt with '{}' (or the subject) where the subject goes.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="The new object, e.g. 'London'.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Many facts: .jsonl or .csv with subject,prompt,target.")] = None,
    model: ModelOpt = None,
    method: MethodOpt = None,
    layers: LayersOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the context prefixes (new sessions).")] = 0,
    corpus: Annotated[str, typer.Option("--corpus", help="Statistics corpus (new sessions): wiki-sample, a path, hf:NAME.")] = "wiki-sample",
    load: Annotated[Optional[str], typer.Option(
        "--load", help="New sessions: load the model int8/nf4-quantised except the edit layers (bitsandbytes), "
                       "or none/off.")] = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue facts for the next commit (creates the session if it does not exist; no model is loaded)."""
    from kedit import choices
    from kedit.facts import Fact
    from kedit.session.factfile import read_facts
    from kedit.session.queue import check_batch
    from kedit.session.settings import Settings

    one = (subject, prompt, target)
    if file is not None and any(x is not None for x in one):
        raise UsageError("give either --file or --subject/--prompt/--target, not both")
    if file is not None:
        facts = read_facts(file)
    elif all(x is not None for x in one):
        facts = [Fact.from_text(subject, prompt, target)]
    else:
        raise UsageError("a fact needs --subject, --prompt and --target", hint="or --file facts.jsonl|csv for many")
    _check_method(method)
    layer_tuple = parse_layers(layers)
    device, dtype = choices.device_name(device), choices.dtype_name(dtype)
    load_mode = choices.quant_mode(load, "--load") if load is not None else None
    folder = _folder(session, must_exist=False)
    created = False
    if not folder.exists():
        _check_model_light(model)
        settings = Settings(model=model or "default", method=method or "emmet", layers=layer_tuple, device=device,
                            dtype=dtype, corpus=corpus, seed=seed, load=load_mode or "none")
        created = folder.create(settings, facts, wait=wait)  # checks everything before writing anything
    if created:
        state = folder.read_queue()
        added = len(state.facts)
    else:
        with folder.folder_lock("queuing facts", wait):
            current = folder.read_settings()
            if model is not None and model != current.model:
                raise UsageError(f"session {folder.path} uses model {current.model!r}, not {model!r}",
                                 hint="start a new session for another model")
            if load_mode is not None and load_mode != current.load:
                raise UsageError(f"session {folder.path} was started with --load {current.load}, not {load}",
                                 hint="the load mode of a session is fixed; start a new session for another")
            check_batch(folder.read_queue().facts, facts)  # a bad fact changes nothing, settings included
            if method is not None or layer_tuple is not None:
                folder.change_settings(lambda s: s.with_method(method, layer_tuple))
            state, added = folder.add_facts(facts)
    if as_json:
        _emit_json({"session": str(folder.path), "created": created, "added": added, "queue": _facts_json(state.facts)})
    else:
        same = len(facts) - added  # exact duplicates (of the queue or within the file) are kept once
        dup = f" ({same} already queued)" if same and added else ""
        what = f"queued {added} fact{'s' if added != 1 else ''}{dup}" if added else \
            f"nothing added: {'the fact is' if len(facts) == 1 else 'every fact is'} queued already"
        _info(f"{'created session ' + _shown(folder.path) + '; ' if created else ''}{what}; "
              f"{len(state.facts)} waiting for 'kedit commit {_shown(session)}'")


def _shown(p) -> str:
    from kedit.show import visible

    return visible(p)


@app.command("queue", epilog=EXIT_CODES)
def queue_cmd(
    session: SessionArg,
    remove: Annotated[Optional[int], typer.Option("--remove", help="Remove queued fact number N (from 1).")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Empty the queue.")] = False,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the facts waiting for the next commit (or remove some)."""
    folder = _folder(session)
    if remove is not None and clear:
        raise UsageError("give --remove N or --clear, not both")
    if remove is not None:
        if remove < 1:
            raise UsageError(f"no queued fact number {remove}: they count from 1", hint="'kedit queue SESSION' lists them")
        folder.remove_fact(remove - 1, wait)
    elif clear:
        folder.clear_queue(wait)
    state = folder.read_queue()
    if as_json:
        _emit_json({"session": str(folder.path), "queue": _facts_json(state.facts)})
        return
    if not state.facts:
        _info(f"the queue of {folder.path} is empty")
        return
    from rich.table import Table

    from kedit.show import plain

    t = Table(title=plain(f"queue of {folder.name}"), title_justify="left")
    for col in ("#", "subject", "prompt", "target"):
        t.add_column(col)
    for i, f in enumerate(state.facts, 1):
        t.add_row(str(i), plain(f.subject), plain(f.text), plain(f.target))
    _out_console().print(t)


@app.command("log", epilog=EXIT_CODES)
def log_cmd(session: SessionArg, as_json: JsonOpt = False) -> None:
    """The session's history: base model, every commit and undo, the queue (no model is loaded)."""
    from kedit.session.journal import CommitEntry

    folder = _folder(session)
    j = folder.journal_or_none()
    queue = folder.read_queue(j).facts
    if j is None:
        s = folder.read_settings()
        if as_json:
            _emit_json({"session": str(folder.path), "header": None, "settings": s.to_dict(), "entries": [],
                        "active": [], "queue": _facts_json(queue)})
        else:
            _info(f"{folder.path}: no commit yet (model {s.model!r} not loaded so far); {len(queue)} queued fact(s)")
        return
    active = {c.seq for c in j.active_commits()}
    from kedit.session.drift import drifts

    drift = drifts(j.entries, folder.read_settings().drift_threshold)
    if as_json:
        _emit_json({"session": str(folder.path), "header": j.header.to_dict(), "entries": [e.to_dict() for e in j.entries],
                    "active": sorted(active), "fingerprint": j.fingerprint, "queue": _facts_json(queue),
                    "drift": {str(k): _drift_dict(d) for k, d in drift.items()},
                    "problems": _delta_problems(folder, j)})
        _check_delta_files(folder, j)
        return
    h = j.header
    out = _out_console()
    out.print(f"session {folder.path}", markup=False)
    out.print(f"base {h.model.name} ({h.model.fingerprint}), {h.dtype} on {h.device}; kedit {h.kedit_version}; "
              f"seed {h.seed}; corpus {h.corpus}", markup=False)
    for e in j.entries:
        if isinstance(e, CommitEntry):
            state = "" if e.seq in active else "  [undone]"
            hits = sum(sc.argmax for sc in e.efficacy)
            d = drift[e.seq]
            health = "" if d.since_base is None else f", {d.describe()}" + ("  ⚠ undo?" if d.flagged else "")
            out.print(f"#{e.seq} {e.time} commit {e.method} layers {','.join(map(str, e.layers))}: {len(e.facts)} fact(s), "
                      f"{hits}/{len(e.efficacy)} argmax, {e.timings.get('total', 0):.1f}s{health}{state}", markup=False)
            for f, sc in zip(e.facts, e.efficacy):
                out.print(f"    {'✓' if sc.argmax else '✗'} {_fact_line(f)}   P {sc.prob_before:.3f} → {sc.prob:.3f}")
        else:
            out.print(f"#{e.seq} {e.time} undo of #{e.undoes}")
    for i, f in enumerate(queue, 1):
        out.print(f"queued {i}: {_fact_line(f)}")
    out.print(f"{len(active)} active commit(s); fingerprint {j.fingerprint}; {len(queue)} queued fact(s)")
    _check_delta_files(folder, j)


@app.command("repair", epilog=EXIT_CODES)
def repair_cmd(
    session: SessionArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")] = False,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drop a torn last journal line left by a crash (the batch it described is lost); check the delta files.

    Only a last line that is not JSON at all is torn. Any other problem (a changed or damaged
    line, a missing delta file) is named and nothing is changed.
    """
    from kedit.errors import CorruptJournalError
    from kedit.session.journal import read_journal, torn_last_line, truncate_torn_line

    folder = _folder(session)
    if not folder.has_journal():
        _repaired(folder, as_json, None, f"{folder.path} has no journal yet (no commit); nothing to repair")
        return
    try:
        read_journal(folder.journal_file)
        torn = None
    except CorruptJournalError as exc:
        torn = torn_last_line(folder.journal_file)
        if torn is None:  # not a torn write: repair has nothing it may drop
            raise CorruptJournalError(f"not repaired: {exc}", hint=exc.hint) from None
    if torn is not None:
        what = torn.describe(folder.journal_file)
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"repair would drop {what}", hint="pass --yes to confirm")
            typer.confirm(f"drop {what}?", abort=True, err=True)
        with folder.journal_lock("repairing the journal", wait), folder.folder_lock("repairing the journal", wait):
            truncate_torn_line(folder.journal_file)  # checks again under the lock: only a torn end goes
            folder.remove_leftovers(read_journal(folder.journal_file))
    j = read_journal(folder.journal_file)  # the rest reads cleanly (checked before dropping anything)
    dropped = torn.dropped.decode("utf-8", "replace") if torn else None
    _repaired(folder, as_json, dropped, f"dropped {what}" if torn else f"{folder.journal_file} is intact; nothing to repair")
    _check_delta_files(folder, j)


def _repaired(folder, as_json: bool, dropped: str | None, message: str) -> None:
    if as_json:
        _emit_json({"session": str(folder.path), "repaired": dropped is not None, "dropped": dropped})
    else:
        _info(message)


def _delta_problems(folder, journal) -> list[str]:
    from kedit.session.store import delta_problems

    return delta_problems(folder.path, journal.commits())


def _check_delta_files(folder, journal) -> None:
    """Exit 5 naming every commit whose delta file is missing or changed (after the command's output)."""
    from kedit.errors import JournalError

    problems = _delta_problems(folder, journal)
    if problems:
        raise JournalError("; ".join(problems),
                           hint="restore the session's deltas/ folder from a copy, or rebuild the model with "
                           f"'kedit replay {folder.journal_file} --recompute --out DIR'")


# -- the commands that load the model -----------------------------------------------------------


def _open(session: str, device: str | None, dtype: str | None, quiet: bool = False):
    from kedit.session import Session

    t = time.perf_counter()
    folder = _folder(session)
    if not quiet:
        _info(f"loading {folder.path.name} …")
    s = Session.open(folder.path, device=device, dtype=dtype)
    if not quiet:
        _info(f"loaded {s.header.model.name} ({s.header.dtype}, {len(s.active_commits())} active commit(s)) "
              f"in {time.perf_counter() - t:.1f}s")
    return s


@app.command("commit", epilog=EXIT_CODES)
def commit_cmd(
    session: SessionArg,
    method: MethodOpt = None,
    layers: LayersOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
    guard: GuardOpt = None,
) -> None:
    """Edit the queued facts into the model as one batch and record it in the journal.

    With the guard (--guard, or 'kedit settings SESSION --guard'), a batch that would raise held-out
    perplexity past the session's threshold is taken back before it is written and committed in
    halves; a fact that does so on its own stays in the queue."""
    use_placement(device_map, max_memory)
    _check_method(method)
    layer_tuple = parse_layers(layers)
    folder = _folder(session)
    with folder.journal_lock("committing", wait):  # a second committer is told at once, before any loading
        if method is not None or layer_tuple is not None:  # checked and saved before the model loads
            folder.change_settings(lambda st: st.with_method(method, layer_tuple), wait)
        if not folder.read_queue().facts:
            raise UsageError(f"the queue of {folder.path} is empty: nothing to commit",
                             hint=f"add facts first: kedit add {session} …")
        s = _open(session, device, dtype, quiet=False)
        s.wait = wait
        if method is not None or layer_tuple is not None:
            s.set_method(method, layer_tuple)  # pins the preset's hyper-parameters for them
        _info(f"committing {len(s.queue)} fact(s) with {s.method} on layer(s) {','.join(map(str, s.layers))} …")
        with ProgressPrinter() as progress:
            got = s.commit_queue(progress=progress, guard=guard)
    drift = {e.seq: s.drift(e) for e in got.kept}
    if as_json:
        last = got.kept[-1] if got.kept else None
        _emit_json({"session": str(s.path), "commit": last.to_dict() if last else None,
                    "drift": _drift_dict(drift[last.seq]) if last else None,
                    "commits": [{"commit": e.to_dict(), "drift": _drift_dict(drift[e.seq])} for e in got.kept],
                    "held_back": [{**h.item.to_dict(), "step": h.step} for h in got.held_back]})
    else:
        out = _out_console()
        for entry in got.kept:
            out.print(f"commit #{entry.seq}: {len(entry.facts)} fact(s) in {entry.timings.get('total', 0):.1f}s "
                      f"(values {entry.timings.get('values', 0):.1f}s); {drift[entry.seq].describe()}")
            for f, sc in zip(entry.facts, entry.efficacy):
                mark = "✓" if sc.argmax else "✗"
                out.print(f"  {mark} {_fact_line(f)}   P {sc.prob_before:.3f} → {sc.prob:.3f}")
    from kedit.session.session import in_context_note

    for entry in got.kept:
        for f in s.edited_in_context(entry):
            _info(in_context_note(f))
    from kedit.session.drift import undo_hint

    for entry in got.kept:
        if drift[entry.seq].flagged:
            _warn(f"commit #{entry.seq} moved held-out perplexity by {drift[entry.seq].step:+.1%} (more than the "
                  f"session's {s.settings.drift_threshold:.1%}): the model may be damaged; {undo_hint(session)}"
                  + ("" if s.settings.guard else f" ('kedit settings {session} --guard' holds such commits back)"))
    for h in got.held_back:
        _warn(f"held back {_fact_line(h.item)}: on its own it moved held-out perplexity by {h.step:+.1%} (more than "
              f"the session's {s.settings.drift_threshold:.1%}); it stays in the queue ('kedit commit {session} "
              "--no-guard' commits it anyway)")
    if not got.kept:
        from kedit.errors import HeldBackError

        raise HeldBackError("nothing committed: the guard held back every queued fact (they stay in the queue)",
                            hint=f"'kedit commit {session} --no-guard' commits them anyway")


def _drift_dict(d) -> dict:
    return {"since_base": d.since_base, "step": d.step, "flagged": d.flagged}


@app.command("undo", epilog=EXIT_CODES)
def undo_cmd(session: SessionArg, device: DeviceOpt = None, device_map: DeviceMapOpt = None,
             max_memory: MaxMemoryOpt = None, dtype: DtypeOpt = None, wait: WaitOpt = None,
             as_json: JsonOpt = False) -> None:
    """Take back the last commit (the weights return bit-identical to before it)."""
    use_placement(device_map, max_memory)
    folder = _folder(session)
    with folder.journal_lock("undoing", wait):
        if not folder.has_journal() or not folder.read_journal().active_commits():
            raise SessionError("nothing to undo: no active commit", hint="'kedit log' shows the session's history")
        s = _open(session, device, dtype, quiet=as_json)
        s.wait = wait
        entry = s.undo()
    if as_json:
        _emit_json({"session": str(s.path), "undo": entry.to_dict()})
    else:
        _out_console().print(f"undid commit #{entry.undoes}; fingerprint {entry.fingerprint}")


@app.command("settings", epilog=EXIT_CODES)
def settings_cmd(
    session: SessionArg,
    method: MethodOpt = None,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", help="Edit layers for the next commits, e.g. '3', '2,3,4' or '2-4'; 'preset' for the method's own.")] = None,
    query_quant: Annotated[Optional[str], typer.Option(
        "--query-quant", help="Answer queries from a quantised copy: none, int8 or nf4.")] = None,
    guard: Annotated[Optional[bool], typer.Option(
        "--guard/--no-guard", help="Guard the next commits: take back one that would be flagged for raising held-out "
        "perplexity and commit its facts in halves, holding back a fact that does so on its own.")] = None,
    drift_threshold: Annotated[Optional[float], typer.Option(
        "--drift-threshold", min=0.0, metavar="FRACTION",
        help="Flag a commit that raises held-out perplexity by more than this fraction (default 0.02: 2%).")] = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or change the settings of a session's next commits (no model is loaded).

    Every change is checked before it is saved (layers against the model's layer count when it
    is known); this is also the way back from settings a model refuses.
    """
    import dataclasses

    from kedit import choices

    folder = _folder(session)
    _check_method(method)
    preset_layers = layers is not None and layers.strip().lower() == "preset"
    layer_tuple = None if preset_layers else parse_layers(layers)
    quant = choices.quant_mode(query_quant) if query_quant is not None else None

    def change(st):
        if method is not None or layer_tuple is not None or preset_layers:
            st = st.with_method(method, layer_tuple, preset_layers)
        st = dataclasses.replace(st, query_quant=quant) if quant is not None else st
        st = dataclasses.replace(st, guard=guard) if guard is not None else st
        return dataclasses.replace(st, drift_threshold=drift_threshold) if drift_threshold is not None else st

    if any(v is not None for v in (method, layers, quant, guard, drift_threshold)):
        st = folder.change_settings(change, wait)
    else:
        st = folder.read_settings()
    if as_json:
        _emit_json({"session": str(folder.path), "settings": st.to_dict()})
        return
    layers_text = (",".join(map(str, st.layers)) if st.layers is not None
                   else ",".join(map(str, st.hparams["layers"])) + " (pinned preset)" if st.hparams else "the preset's")
    _out_console().print(
        f"{folder.path}: model {st.model}; next commits: {st.method} on layer(s) {layers_text}; "
        f"device {st.device or 'auto'}, dtype {st.dtype or 'auto'}, query quantisation {st.query_quant}, load {st.load}; "
        f"health: a commit moving held-out perplexity by more than {st.drift_threshold:.1%} is "
        + ("taken back and committed in halves (guard on)" if st.guard else "flagged (guard off)"),
        markup=False)


@app.command("query", epilog=EXIT_CODES)
def query_cmd(
    args: Annotated[list[str], typer.Argument(help="SESSION PROMPT..., or only PROMPT... with --model.", show_default=False,
                                              metavar="[SESSION] PROMPT...")],
    model: ModelOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100, help="How many next tokens to show.")] = 5,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = None,
    query_quant: Annotated[Optional[str], typer.Option(
        "--query-quant", help="Answer from a bitsandbytes-quantised copy: none, int8 or nf4 (a session keeps the choice)."
    )] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Ask as a chat turn through the model's chat template "
                                                       "(instruct models) and show the assistant's answer.")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="With --chat: the system prompt "
                                                                   "(default: the template's own).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What the model answers: a session's edited model, or a plain model with --model.

    Several prompts are answered in turn by one loaded model; with --json each answer is one JSON
    object on its own line.
    """
    if system is not None and not chat:
        raise UsageError("--system goes with --chat", hint='kedit query SESSION --chat --system "Be brief." "PROMPT"')
    use_placement(device_map, max_memory)
    from kedit.choices import quant_mode

    mode = quant_mode(query_quant) if query_quant is not None else None  # a bad mode fails before any load
    if model is not None:
        prompts = list(args)
        _check_prompts(prompts)
        ask = _plain_asker(model, top_k, device, dtype, mode or "none", chat, system)
        where = model
    else:
        if len(args) < 2:
            raise UsageError("give a session and a prompt (or --model M and a prompt)",
                             hint='kedit query SESSION "The capital of Japan is"')
        session, prompts = args[0], list(args[1:])
        _check_prompts(prompts)
        s = _open(session, device, dtype, quiet=True)
        if mode is not None and mode != s.settings.query_quant:
            from kedit.editing.quant import check_quant_support

            check_quant_support(mode, s.lm.device)  # bitsandbytes missing / mode unsupported: say so now
            s.set_query_quant(mode)

        def ask(prompt: str):
            return s.query(prompt, top_k=top_k, chat=chat, system=system)

        where = str(s.path)
    for prompt in prompts:
        _print_answer(ask(prompt), where, as_json)


def _check_prompts(prompts: list[str]) -> None:
    if not prompts or any(not p.strip() for p in prompts):
        raise UsageError("empty prompt", hint='kedit query SESSION "The capital of Japan is"')


def _print_answer(result, where: str, as_json: bool) -> None:
    if as_json:
        _emit_json({
            "source": where, "prompt": result.prompt, "chat": result.chat, "system": result.system,
            "continuation": result.continuation,
            "top": [{"token": t.token, "prob": t.prob} for t in result.top],
            "base_continuation": result.base_continuation,
            "base_top": [{"token": t.token, "prob": t.prob} for t in result.base_top] if result.base_top else None,
        })
        return
    from kedit import show

    out = _out_console()
    if result.chat:
        if result.system:
            out.print(f"system: {result.system}", markup=False)
        out.print(f"user: {result.prompt}", markup=False)
        out.print(f"assistant: [bold]{_escape(result.continuation)}[/]", markup=True)
    else:
        out.print(f"{_escape(result.prompt)}[bold]{_escape(result.continuation)}[/]", markup=True)
    out.print("  next: " + "  ".join(f"{t.token!r} {t.prob:.3f}" for t in result.top), markup=False)
    if result.base_continuation is not None:
        shown = f"assistant: {result.base_continuation}" if result.chat else f"{result.prompt}{result.base_continuation}"
        out.print(f"  before the edits: {show.visible(shown)}")
        out.print("  next: " + "  ".join(f"{t.token!r} {t.prob:.3f}" for t in result.base_top), markup=False)


def _escape(text: str) -> str:
    from kedit.show import markup

    return markup(text)


def _plain_asker(model: str, top_k: int, device, dtype, query_quant: str = "none", chat: bool = False,
                 system: str | None = None):
    """A function prompt → QueryResult over a plain (unedited) model, loaded once."""
    from kedit.editing import load_model
    from kedit.session.session import answer

    if query_quant != "none":
        from kedit.editing.quant import build_quantized_copy

        lm = build_quantized_copy(model, query_quant, device=device, dtype=dtype)  # checks bitsandbytes/device first
    else:
        lm = load_model(model, device=device, dtype=dtype)

    def ask(prompt: str):
        return answer(lm.model, lm.tokenizer, prompt, top_k, chat, system)

    return ask


@app.command("replay", epilog=EXIT_CODES)
def replay_cmd(
    journal: Annotated[str, typer.Argument(
        help="A session name (→ sessions/NAME/), its folder, or a journal.jsonl.", show_default=False)],
    recompute: Annotated[bool, typer.Option("--recompute", help="Re-run every batch from its facts instead of applying stored deltas.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Stop with exit code 5 at the first fingerprint that differs.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Export the result as a Hugging Face checkpoint here.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The base model, if not where the journal says.")] = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Default: the journal's dtype.")] = None,
    load: Annotated[Optional[str], typer.Option(
        "--load", help="none (full precision), int8 or nf4. Default: as the session loaded it.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild a journal's edited model headlessly (checking its fingerprints)."""
    use_placement(device_map, max_memory)
    from kedit.session.folder import resolve
    from kedit.session.replay import replay

    path = Path(journal).expanduser()
    if not path.exists():
        path = resolve(journal)  # a session's name
    with ProgressPrinter() as progress:
        report = replay(path, model=model, device=device, dtype=dtype, recompute=recompute, verify=verify, out=out,
                        progress=progress, inner_progress=progress, load=load)
    if as_json:
        _emit_json(report.to_dict())
    else:
        out_c = _out_console()
        bad = report.mismatches
        how = "recomputed" if recompute else "applied stored deltas for"
        out_c.print(f"{how} {len(report.steps)} entr{'y' if len(report.steps) == 1 else 'ies'} in {report.seconds:.1f}s: "
                    f"{report.active_commits} active commit(s), {report.facts} fact(s); fingerprint {report.fingerprint}")
        if bad:
            out_c.print(f"warning: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} differ from the journal's fingerprints "
                        f"(first: #{bad[0].seq}); run with --verify to fail on it")
        elif verify:
            out_c.print("verified: every fingerprint matches the journal")
        if report.out:
            out_c.print(f"wrote {report.out}")


@app.command("export", epilog=EXIT_CODES)
def export_cmd(
    session: SessionArg,
    out_dir: Annotated[Path, typer.Argument(help="A new (or empty) folder for the export.", show_default=False)],
    format: Annotated[str, typer.Option(
        "--format", "-f", help="checkpoint (Hugging Face safetensors), peft (a LoRA adapter for PEFT/vLLM) or gguf "
        "(llama.cpp/Ollama; the base model must come from a GGUF file).")] = "checkpoint",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the edited model: a Hugging Face checkpoint, a LoRA adapter or a GGUF file, each with a model card and the journal."""
    use_placement(device_map, max_memory)
    from kedit.session.export import FORMATS, check_target

    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}", hint=f"choose one of {', '.join(FORMATS)}")
    target = out_dir.expanduser().resolve()
    check_target(target)  # refuse before loading anything
    s = _open(session, device, dtype, quiet=as_json)
    t = time.perf_counter()
    with ProgressPrinter() as progress:
        path = s.export(target, progress=progress, format=format)
    if as_json:
        _emit_json({"session": str(s.path), "out": str(path), "format": format, "active_commits": len(s.active_commits()),
                    "fingerprint": s.fingerprint(), "seconds": round(time.perf_counter() - t, 3)})
    else:
        _out_console().print(f"exported {s.name} ({len(s.active_commits())} active commit(s)) to {path} "
                             f"in {time.perf_counter() - t:.1f}s")
