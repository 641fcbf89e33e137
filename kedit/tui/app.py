"""The kedit TUI: a Textual app over one session (ring 3: it shows, the session does).

Three panes — the fact queue, the live query and the edit log — with a status line on top and
the bindings in the footer. Everything that touches the model (loading, queries, commits, undo,
export) runs in a thread worker (``@work(thread=True, exclusive=True)``) that posts a message
from ``kedit.tui.messages`` back; a worker's exception becomes a notification, never a crash.
Esc during a commit sets the commit's ``should_stop`` flag: the session stops before any weight
changes and nothing is written.

Other processes may change the session while the TUI is open (``kedit add`` from another
terminal, a ``kedit commit``): once a second the app looks at the size and time of the session's
files, re-reads the queue when it changed and, when the journal changed, lets the session catch up
(applying the other process's stored deltas) in a worker. The queue needs no model: facts can be
queued while the model is still loading.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Input

from kedit.errors import EditCancelled, KeditError, PartlyCommitted, UsageError
from kedit.show import terminal_safe, visible
from kedit.tui import journal_view as jv
from kedit.tui.commands import KeditCommands
from kedit.tui.log_pane import LogPane
from kedit.tui.messages import (
    CommitCancelled,
    CommitFinished,
    CommitProgressed,
    ExportFinished,
    ExportProgressed,
    QueryAnswered,
    QueueChanged,
    SessionReady,
    SessionSynced,
    UndoFinished,
    WorkFailed,
)
from kedit.tui.progress import CommitProgress
from kedit.tui.query_pane import QueryPane
from kedit.tui.queue_pane import QueuePane
from kedit.tui.screens import AskScreen, ChooseScreen, ConfirmScreen, EntryScreen, HelpScreen
from kedit.tui.status import StatusLine

METHOD_CHOICES = [
    ("emmet", "emmet — batched, equality-constrained (one layer)"),
    ("memit", "memit — batched, spread over several layers"),
    ("rome", "rome — one fact after another (one layer)"),
]


def error_text(exc: BaseException) -> str:
    if isinstance(exc, KeditError):
        return f"{exc}\nhint: {exc.hint}" if exc.hint else str(exc)
    return f"{type(exc).__name__}: {exc} (this is a bug in kedit)"


class KeditApp(App):
    """``KeditApp(session=s)`` over an open session, or ``KeditApp(target="demo", model=...)``
    to open (or create) one in a loading worker."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "kedit"
    COMMANDS = App.COMMANDS | {KeditCommands}
    BINDINGS = [
        Binding("ctrl+s", "commit", "Commit", id="commit", priority=True),
        Binding("escape", "cancel_commit", "Cancel commit", id="cancel", priority=True),
        Binding("ctrl+z", "undo", "Undo", id="undo", priority=True),
        Binding("ctrl+o", "load_facts", "Load facts", id="load"),
        Binding("ctrl+t", "toggle_chat", "Chat", id="chat"),
        Binding("f1", "help", "Help", id="help"),
        Binding("f2", "focus_pane('queue')", "Queue", id="focus.queue", show=False),
        Binding("f3", "focus_pane('query')", "Query", id="focus.query", show=False),
        Binding("f4", "focus_pane('log')", "Log", id="focus.log", show=False),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self,
        session=None,
        *,
        target: str | None = None,
        model: str | None = None,
        method: str | None = None,
        layers: tuple[int, ...] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        query_quant: str | None = None,
        load: str | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.open_args = {"model": model, "method": method, "layers": layers, "device": device,
                          "dtype": dtype, "query_quant": query_quant, "load": load}
        self.loading_session = session is None
        self.committing = False
        self.exporting = False
        self.queue_changes = 0  # queue changes sent to a worker and not back yet
        self.commit_waiting = False  # Ctrl+S came while a queue change was on its way
        self.failed_while_waiting: str | None = None  # why that commit must not go ahead
        self.last_prompt: str | None = None
        self.query_seq = 0
        self._stop: threading.Event | None = None
        self.early_queue = None  # the folder's queue until the session has loaded (SessionQueue)
        self._seen_files: tuple = ()

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every notification (the app's and its widgets'): plain text, since most quote user text
        (facts, paths, error messages); control characters shown, never sent to the terminal."""
        super().notify(terminal_safe(str(message)), title=visible(title), severity=severity, timeout=timeout, markup=False)

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="top"):
            yield QueuePane(id="queue")
            yield QueryPane(id="query")
        yield LogPane(id="log")
        yield CommitProgress(id="progress")
        yield Footer()

    @property
    def queue_pane(self) -> QueuePane:
        return self.query_one(QueuePane)

    @property
    def query_pane(self) -> QueryPane:
        return self.query_one(QueryPane)

    @property
    def log_pane(self) -> LogPane:
        return self.query_one(LogPane)

    @property
    def queue(self):
        """The queue the person works on: the session's, or the folder's while the model loads."""
        if self.loading_session or self.session is None:
            return self.early_queue
        return self.session.queue_handle

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def progress_view(self) -> CommitProgress:
        return self.query_one(CommitProgress)

    def on_mount(self) -> None:
        self.progress_view.display = False
        self.query_one("#subject", Input).focus()
        if self.session is not None:
            self._session_ready(self.session)
        else:
            self._start_loading(self.target or "default")
        self.set_interval(1.0, self.poll_files)

    # -- loading a session --------------------------------------------------------------------

    def _start_loading(self, target: str) -> None:
        self.early_queue = self._folder_queue(target)
        self.queue_pane.set_queue(self.early_queue)
        self.loading_session = True
        self.status.show_loading(f"{target} (model {self.open_args.get('model') or 'from the session'})…")
        self._set_loading(True)
        self._load_worker(target, dict(self.open_args))

    def _set_loading(self, on: bool) -> None:
        for selector in ("#answer", "#log-table"):
            self.query_one(selector).loading = on

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load_worker(self, target: str, kwargs: dict) -> None:
        from kedit.session import Session

        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            # an existing session keeps its model; method, layers and query-quant, when given, switch it
            session = Session.open_or_create(target, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a message
            self.post_message(WorkFailed("load", exc))
        else:
            self.post_message(SessionReady(session))

    def _folder_queue(self, target: str):
        """The queue of ``target``'s folder (no model needed); a session it creates gets the
        settings the TUI was started with. None when the target cannot be a session."""
        from kedit.session.folder import SessionFolder, resolve
        from kedit.session.queue_view import SessionQueue
        from kedit.session.settings import Settings

        a = self.open_args
        try:
            folder = SessionFolder(resolve(target))
            settings = Settings(model=a.get("model") or "default", method=a.get("method") or "emmet",
                                layers=a.get("layers"), device=a.get("device"), dtype=a.get("dtype"),
                                query_quant=a.get("query_quant") or "none", load=a.get("load") or "none").check()
            return SessionQueue(folder, create_with=settings)
        except KeditError:
            return None  # the loading worker reports the problem

    def on_session_ready(self, message: SessionReady) -> None:
        self._session_ready(message.session)

    def _session_ready(self, session) -> None:
        self.session = session
        self.loading_session = False
        self._set_loading(False)
        session.queue_handle.refresh()  # facts queued while it loaded
        self.queue_pane.set_queue(session.queue_handle)
        self.early_queue = None
        self.refresh_journal()
        self.sub_title = visible(session.name)
        if self.last_prompt:  # another session was opened: ask its model the same prompt
            self.run_query(self.last_prompt)

    def refresh_journal(self) -> None:
        from kedit.session.drift import drifts

        entries = self.session.entries()
        self.log_pane.set_entries(entries, drifts(entries, self.session.settings.drift_threshold))
        self.status.show_session(self.session, "committing" if self.committing else "ready")

    @property
    def busy(self) -> str | None:
        """Why the session cannot take a new action right now, or ``None``."""
        if self.loading_session:
            return "the session is still loading"
        if self.session is None:
            return "no session is open: Ctrl+P → Open another session"
        if self.committing:
            return "a commit is running (Esc cancels it)"
        if self.commit_waiting:
            return "the commit starts once the queued fact is saved"
        if self.exporting:
            return "an export is running"
        return None

    # -- changes made by other processes ------------------------------------------------------

    def _folder(self):
        q = self.queue
        return q.folder if q is not None else None

    def poll_files(self) -> None:
        """Once a second: when a session file changed size or time, show what another process did."""
        folder = self._folder()
        if folder is None:
            return
        seen = _file_marks(folder)
        if seen == self._seen_files:
            return
        self._seen_files = seen
        if self.queue is not None and self.queue is self.early_queue:
            self.queue.refresh()
            self.queue_pane.refresh_queue()
        elif self.session is not None and not self.committing:
            self._sync_worker()  # journal (other commits' deltas), settings and queue

    @work(thread=True, exclusive=True, group="sync", exit_on_error=False)
    def _sync_worker(self) -> None:
        try:
            changed = self.session.refresh()
        except BaseException as exc:  # noqa: BLE001
            self.post_message(WorkFailed("sync", exc))
        else:
            self.post_message(SessionSynced(changed))

    def on_session_synced(self, message: SessionSynced) -> None:
        if not message.changed:
            return
        self.queue_pane.refresh_queue()
        self.queue_pane.validate_form()
        if not self.committing:
            self.refresh_journal()
        if self.last_prompt and not self.committing:
            self.run_query(self.last_prompt)  # another process's commit may change the answer

    # -- bindings -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        on_main = len(self.screen_stack) == 1
        if action == "cancel_commit":
            return self.committing and on_main  # otherwise Esc goes to the focused widget
        if action in ("commit", "undo"):
            return on_main  # priority bindings must not fire under a modal
        return True

    async def action_quit(self) -> None:
        """Quit; a running commit is cancelled first (nothing half-written stays behind)."""
        if self._stop is not None:
            self._stop.set()
        self.exit()

    def action_focus_pane(self, pane: str) -> None:
        target = {"queue": "#subject", "query": "#query-input", "log": "#log-table"}[pane]
        self.query_one(target).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- the queue ---------------------------------------------------------------------------

    def change_queue(self, kind: str, label: str, change) -> None:
        """Run ``change(queue)`` (add/replace/remove/...) off the UI thread: another process may
        hold the folder's lock for a moment, and the UI must not wait for it."""
        self.queue_changes += 1
        self._queue_worker(kind, label, change, self.queue)

    @work(thread=True, group="queue", exit_on_error=False)
    def _queue_worker(self, kind: str, label: str, change, queue) -> None:
        try:
            change(queue)
        except BaseException as exc:  # noqa: BLE001
            try:
                queue.refresh()  # a refusal may come from what another process queued: show it at once
            except Exception:  # noqa: BLE001 (the refusal is what the person must see)
                pass
            self.post_message(QueueChanged(kind, label, exc))
        else:
            self.post_message(QueueChanged(kind, label))

    def on_queue_changed(self, message: QueueChanged) -> None:
        self.queue_changes -= 1
        self.queue_pane.change_done(message.kind, message.label, message.error)
        self._commit_if_waiting(message.kind if message.error is not None else None)
        if message.error is not None:
            if not (message.kind in ("add", "replace") and isinstance(message.error, KeditError)):
                self.notify(error_text(message.error), title=f"queue {message.kind} failed", severity="error")
            return
        if message.kind == "remove":
            self.notify(f"removed {message.label}", timeout=3)
        elif message.kind in ("load", "clear"):
            self.notify(message.label, timeout=4)

    # -- queries ------------------------------------------------------------------------------

    @on(QueryPane.Asked)
    def _asked(self, message: QueryPane.Asked) -> None:
        self.run_query(message.prompt)

    def run_query(self, prompt: str) -> None:
        """Ask the model ``prompt`` in the ``query`` worker (cancelling a running query)."""
        if self.session is None:
            self.notify(self.busy or "no session is open", severity="warning")
            return
        self.last_prompt = prompt
        self.query_seq += 1
        self.query_pane.show_running(prompt)
        self._query_worker(self.query_seq, prompt)

    @work(thread=True, exclusive=True, group="query", exit_on_error=False)
    def _query_worker(self, seq: int, prompt: str) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        t = time.perf_counter()
        try:
            result = self.session.query(prompt, top_k=5, chat=self.query_pane.chat)
        except BaseException as exc:  # noqa: BLE001
            if not worker.is_cancelled:
                self.post_message(WorkFailed("query", exc))
            return
        if not worker.is_cancelled:
            self.post_message(QueryAnswered(seq, result, time.perf_counter() - t))

    def action_toggle_chat(self) -> None:
        """Ask the query pane's prompts as chat turns (the model's chat template), or as plain text."""
        on = not self.query_pane.chat
        if on and self.session is not None:
            from kedit.editing.chat import has_chat_template

            if not has_chat_template(self.session.lm.tokenizer):
                self.notify("this model has no chat template: prompts stay plain text", severity="warning")
                return
        self.query_pane.set_chat(on)
        self.notify("chat mode: prompts are chat turns" if on else "plain prompts", timeout=3)
        if self.last_prompt and self.session is not None:
            self.run_query(self.last_prompt)

    def on_query_answered(self, message: QueryAnswered) -> None:
        if message.seq != self.query_seq:
            return  # a newer query replaced this one
        self.query_pane.show_result(message.result, message.seconds)

    # -- commit -------------------------------------------------------------------------------

    def action_commit(self) -> None:
        if self.busy:
            self.notify(self.busy, severity="warning")
            return
        if self.queue_changes == 0:
            fact = self.queue_pane.validate_form()  # a complete fact still in the form joins the batch
            if fact is not None:
                self.queue_pane.submit_fact(fact)
        if self.queue_changes:
            # Enter (or the line above) sent a fact to the queue and it is not saved yet: commit
            # when it is, so the batch holds what the person saw queued.
            self.commit_waiting = True
            return
        n = len(self.session.queue)
        if n == 0:
            self.notify("the queue is empty: add a fact first", severity="warning")
            return
        self.committing = True
        self._stop = threading.Event()
        self.progress_view.start(n)
        self.status.set_state("committing")
        self.refresh_bindings()
        self._commit_worker(self._stop)

    def _commit_if_waiting(self, failed_kind: str | None) -> None:
        """A queue change came back (``failed_kind``: it failed): start the commit Ctrl+S asked
        for once none is left on its way, unless one of them failed."""
        if not self.commit_waiting:
            return
        if failed_kind is not None and self.failed_while_waiting is None:
            self.failed_while_waiting = ("the fact in the form could not be queued" if failed_kind in ("add", "replace")
                                         else "the queue could not be changed")
        if self.queue_changes:
            return
        self.commit_waiting = False
        failed, self.failed_while_waiting = self.failed_while_waiting, None
        if failed is not None:  # the form or a notice says why; the person fixes it and presses Ctrl+S again
            self.notify(f"nothing committed: {failed}", severity="warning")
            return
        self.action_commit()

    @work(thread=True, exclusive=True, group="commit", exit_on_error=False)
    def _commit_worker(self, stop: threading.Event) -> None:
        t = time.perf_counter()
        try:
            got = self.session.commit_queue(
                progress=lambda p: self.post_message(CommitProgressed(p)), should_stop=stop.is_set
            )
        except EditCancelled as exc:
            self.post_message(CommitCancelled(str(exc) if isinstance(exc, PartlyCommitted) else None))
        except BaseException as exc:  # noqa: BLE001
            self.post_message(WorkFailed("commit", exc))
        else:
            self.post_message(CommitFinished(got, time.perf_counter() - t))

    def action_cancel_commit(self) -> None:
        if self.committing and self._stop is not None and not self._stop.is_set():
            self._stop.set()
            self.progress_view.cancelling()
            self.status.set_state("cancelling")

    def on_commit_progressed(self, message: CommitProgressed) -> None:
        if self.committing:
            self.progress_view.report(message.progress)

    def _commit_over(self) -> None:
        self.committing = False
        self._stop = None
        self.progress_view.stop()
        self.queue_pane.refresh_queue()
        self.queue_pane.validate_form()
        self.refresh_journal()
        self.refresh_bindings()

    def on_commit_finished(self, message: CommitFinished) -> None:
        from kedit.session.session import in_context_note

        self._commit_over()
        got = message.result
        for entry in got.kept:
            self.notify(
                f"committed {jv.n_facts(entry)} fact(s) in {jv.seconds(entry):.1f}s · efficacy {jv.efficacy(entry)}",
                title=f"commit {jv.number(entry)}",
                timeout=6,
            )
            for fact in self.session.edited_in_context(entry):
                self.notify(in_context_note(fact), title="edited in context", timeout=12)
            drift = self.log_pane.drifts.get(entry.seq)
            if drift is not None and drift.flagged:
                self.notify(f"{drift.describe()}: more than this session's threshold. Ctrl+Z undoes the commit.",
                            title="the model may be damaged", severity="warning", timeout=12)
        for held in got.held_back:
            self.notify(f"{held.item.text} → {held.item.target}: on its own it moved held-out perplexity by "
                        f"{held.step:+.1%}, more than this session's threshold. It stays in the queue.",
                        title="held back by the guard", severity="warning", timeout=12)
        prompt = self.last_prompt or (jv.first_prompt(got.kept[0]) if got.kept else None)
        if prompt:
            self.query_one("#query-input", Input).value = prompt
            self.run_query(prompt)

    def on_commit_cancelled(self, message: CommitCancelled) -> None:
        self._commit_over()
        self.notify(message.partly or "commit cancelled: no weight changed, the facts stay queued", severity="warning")

    # -- undo ---------------------------------------------------------------------------------

    def action_undo(self) -> None:
        if self.busy:
            self.notify(self.busy, severity="warning")
            return
        active = list(self.session.active_commits())
        if not active:
            self.notify("nothing to undo", severity="warning")
            return
        last = active[-1]
        detail = "\n".join(f"• {line}" for line in jv.fact_lines(last))

        def answer(yes: bool | None) -> None:
            if yes:
                self.status.set_state("undoing")
                self._undo_worker()

        self.push_screen(ConfirmScreen(f"Undo commit {jv.number(last)}?", detail), answer)

    @work(thread=True, exclusive=True, group="commit", exit_on_error=False)
    def _undo_worker(self) -> None:
        try:
            entry = self.session.undo()
        except BaseException as exc:  # noqa: BLE001
            self.post_message(WorkFailed("undo", exc))
        else:
            self.post_message(UndoFinished(entry))

    def on_undo_finished(self, message: UndoFinished) -> None:
        self.refresh_journal()
        self.notify(f"undid commit {jv.undone_number(message.entry)}", timeout=4)
        if self.last_prompt:
            self.run_query(self.last_prompt)

    # -- log ----------------------------------------------------------------------------------

    @on(LogPane.Opened)
    def _open_entry(self, message: LogPane.Opened) -> None:
        self.push_screen(EntryScreen(message.entry, jv.undone_ids(self.log_pane.entries),
                                     self.log_pane.drifts.get(message.entry.seq)))

    # -- palette actions ----------------------------------------------------------------------

    def action_export(self) -> None:
        if self.busy:
            self.notify(self.busy, severity="warning")
            return
        default = str(Path("exports") / self.session.name)

        def go(folder: str | None) -> None:
            if folder:
                self.exporting = True
                self.status.set_state("exporting")
                self._export_worker(Path(folder).expanduser())

        self.push_screen(AskScreen("Export", "Folder for the edited Hugging Face checkpoint:", default), go)

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export_worker(self, folder: Path) -> None:
        try:
            path = self.session.export(folder, progress=lambda p: self.post_message(ExportProgressed(p)))
        except BaseException as exc:  # noqa: BLE001
            self.post_message(WorkFailed("export", exc))
        else:
            self.post_message(ExportFinished(Path(path)))

    def on_export_progressed(self, message: ExportProgressed) -> None:
        p = message.progress
        self.status.set_state(f"exporting {p.done}/{p.total}" if p.total else "exporting")

    def on_export_finished(self, message: ExportFinished) -> None:
        self.exporting = False
        self.status.set_state("ready")
        self.notify(f"exported to {message.path}", title="export", timeout=8)

    def action_change_method(self) -> None:
        if self.busy:
            self.notify(self.busy, severity="warning")
            return

        def go(method: str | None) -> None:
            if method:
                # a one-layer method after several layers: back to its preset's layer (the
                # notification says which); otherwise the chosen layers stay
                several = len(self.session.hparams.layers) > 1 and method != "memit"
                self._set_method(method, None, preset_layers=several)

        self.push_screen(ChooseScreen("Method", METHOD_CHOICES, self.session.hparams.method), go)

    def action_change_layers(self) -> None:
        if self.busy:
            self.notify(self.busy, severity="warning")
            return
        now = ",".join(str(l) for l in self.session.hparams.layers)

        def go(text: str | None) -> None:
            if not text:
                return
            from kedit.choices import parse_layers

            try:
                layers = parse_layers(text)
            except KeditError as exc:
                self.notify(error_text(exc), severity="error")
                return
            self._set_method(self.session.hparams.method, layers)

        self.push_screen(AskScreen("Layers", "Layer(s) the next commits edit, e.g. 4 or 4,5,6:", now), go)

    def action_toggle_guard(self) -> None:
        if self.busy:
            self.notify(self.busy, severity="warning")
            return
        on = not self.session.settings.guard
        try:
            self.session.set_guard(on)
        except KeditError as exc:
            self.notify(error_text(exc), title="settings", severity="error", timeout=8)
            return
        self.status.show_session(self.session)
        self.notify("guard on: a commit that would be flagged is taken back and committed in halves; a fact flagged "
                    "on its own stays queued" if on else "guard off: flagged commits are kept and marked ⚠", timeout=6)

    def _set_method(self, method: str, layers, preset_layers: bool = False) -> None:
        try:
            self.session.set_method(method, layers, preset_layers)
        except KeditError as exc:
            self.notify(error_text(exc), title="settings", severity="error", timeout=8)
            return
        self.status.show_session(self.session)
        hp = self.session.hparams
        self.notify(f"next commits: {hp.method} on layer(s) {','.join(map(str, hp.layers))}", timeout=4)

    def action_open_session(self) -> None:
        if self.committing or self.exporting:
            self.notify(self.busy, severity="warning")
            return

        def go(target: str | None) -> None:
            if target:
                # an existing session loads its own model and settings; a new one starts on the
                # current model (the command line's method, layers, quantisation were for the first)
                model = self.session.lm.name if self.session is not None else self.open_args.get("model")
                self.open_args = {"model": model, "device": self.open_args.get("device"),
                                  "dtype": self.open_args.get("dtype")}
                self.query_seq += 1  # drop answers of the old session
                self._start_loading(target)

        self.push_screen(AskScreen("Open session", "Session name or folder (created when new):"), go)

    def action_load_facts(self) -> None:
        if self.queue is None:
            self.notify(self.busy or "no session is open", severity="warning")
            return

        def go(path: str | None) -> None:
            if not path:
                return
            from kedit.session.factfile import read_facts

            try:
                facts = read_facts(Path(path).expanduser())
            except KeditError as exc:
                self.notify(error_text(exc), title="load facts", severity="error", timeout=10)
                return
            self.change_queue("load", f"queued {len(facts)} fact(s) from {path}", lambda q: q.add_many(facts))

        self.push_screen(AskScreen("Load facts", "A .jsonl or .csv file of facts (subject, prompt, target):"), go)

    def action_clear_queue(self) -> None:
        if self.queue is None:
            self.notify(self.busy or "no session is open", severity="warning")
            return
        n = len(self.queue.facts)
        if not n:
            self.notify("the queue is already empty")
            return

        def go(yes: bool | None) -> None:
            if yes:
                self.change_queue("clear", f"dropped {n} queued fact(s)", lambda q: q.clear_queue())

        self.push_screen(ConfirmScreen(f"Drop the {n} queued fact(s)?"), go)

    # -- errors -------------------------------------------------------------------------------

    def on_work_failed(self, message: WorkFailed) -> None:
        if message.action == "commit":
            self._commit_over()
        elif message.action == "load":
            self._set_loading(False)
            self.loading_session = False
            if self.session is None:
                self.status.show_loading("no session open — Ctrl+P ‘Open another session’ or Ctrl+Q")
                self.status.set_state("failed")
            else:
                self.status.show_session(self.session)
        elif message.action == "query":
            self.query_pane.show_failed()
        if message.action == "export":
            self.exporting = False
        elif self.session is not None:
            self.status.show_session(self.session)
        self.notify(error_text(message.error), title=f"{message.action} failed", severity="error", timeout=12)


def _file_marks(folder) -> tuple:
    """(size, mtime) of the journal, the queue and the settings: cheap to take once a second."""
    marks = []
    for p in (folder.journal_file, folder.queue_file, folder.settings_file):
        try:
            st = p.stat()
            marks.append((st.st_size, st.st_mtime_ns))
        except OSError:
            marks.append(None)
    return tuple(marks)
