"""The fact queue pane: a three-field form with inline validation, and the queued facts.

The queue itself lives in the session folder (``kedit.session.queue_view.SessionQueue``: it needs
no model, so facts can be queued while the model is still loading, and changes are made under the
folder's lock, so facts another process queues are kept); this pane only reads ``queue.facts`` and
forwards what the person types. Validation runs on every keystroke (``Fact.from_text`` plus
``SessionQueue.check`` for duplicates and conflicts with the queue), so a bad fact is reported at
once rather than on commit.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Static

from kedit.errors import KeditError
from kedit.facts import Fact
from kedit.show import cell, plain
from kedit.tui import journal_view as jv

FIELDS = ("subject", "prompt", "target")
HINT = "Enter: next field / queue the fact"


def short_error(exc: KeditError) -> str:
    """The reason of a fact error without the leading ``fact ('..', '..', '..'): `` echo."""
    msg = str(exc)
    if msg.startswith("fact (") and "): " in msg:
        msg = msg.split("): ", 1)[1]
    return msg


class QueuePane(Vertical):
    """Form + table over a ``SessionQueue``."""

    BORDER_TITLE = "Queue"

    BINDINGS = [
        Binding("escape", "cancel_edit", "Cancel edit", show=False),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.queue = None  # kedit.session.queue_view.SessionQueue
        self.editing: int | None = None  # queue index the form is editing, if any
        self.last_error: str | None = None  # what the message line shows when the form is invalid

    def compose(self) -> ComposeResult:
        for name, placeholder in (
            ("subject", "e.g. Eiffel Tower"),
            ("prompt", "The {} is in… (or the subject written in)"),
            ("target", "new answer, e.g. London"),
        ):
            with Horizontal(classes="form-row"):
                yield Label(name, classes="form-label")
                yield Input(placeholder=placeholder, id=name, compact=True)
        yield Static("", id="fact-message")
        table = QueueTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("#", "subject", "target", "prompt")
        yield table

    def on_mount(self) -> None:
        self.query_one("#queue-table", DataTable).border_title = "queued facts"
        self._show_message(HINT, "")

    # -- session ------------------------------------------------------------------------------

    def set_queue(self, queue) -> None:
        """Show ``queue`` (a ``SessionQueue``: the session's, or the folder's while it loads)."""
        if queue is self.queue:
            self.refresh_queue()
            return
        self.queue = queue
        self.editing = None  # an edit in progress belonged to the previous session's queue
        self.remove_class("-editing")
        self.refresh_queue()
        self.validate_form()

    def refresh_queue(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        keep = table.cursor_row
        table.clear()
        queue = self.queue.facts if self.queue is not None else ()
        for i, f in enumerate(queue):
            table.add_row(str(i + 1), cell(f.subject), cell(f.target), cell(f.prompt), key=str(i))
        if queue:
            table.move_cursor(row=min(max(keep, 0), len(queue) - 1))
        self.border_subtitle = f"{len(queue)} queued" if queue else "empty"

    # -- the form -----------------------------------------------------------------------------

    def form_values(self) -> tuple[str, str, str]:
        return tuple(self.query_one(f"#{n}", Input).value for n in FIELDS)  # type: ignore[return-value]

    def set_form(self, subject: str = "", prompt: str = "", target: str = "") -> None:
        for name, value in zip(FIELDS, (subject, prompt, target)):
            self.query_one(f"#{name}", Input).value = value
        self.validate_form()

    def validate_form(self) -> Fact | None:
        """The fact the form describes, or ``None`` (and the reason on the message line)."""
        subject, prompt, target = self.form_values()
        if not (subject.strip() or prompt.strip() or target.strip()):
            self.last_error = None
            self._show_message(HINT, "")
            return None
        try:
            fact = Fact.from_text(subject, prompt, target)
            duplicate = self._check(fact)
        except KeditError as exc:
            self.last_error = short_error(exc)
            self._show_message(f"✗ {self.last_error}", "-error")
            return None
        if duplicate is not None:
            self.last_error = f"already queued as #{duplicate + 1}"
            self._show_message(f"✗ {self.last_error}", "-error")
            return None
        self.last_error = None
        verb = f"replace #{self.editing + 1}" if self.editing is not None else "queue"
        self._show_message(f"✓ Enter to {verb}: {fact.prompt} → {fact.target}", "-ok")
        return fact

    def _check(self, fact: Fact) -> int | None:
        """Raise if the session refuses ``fact``; the index of an identical queued fact, if any."""
        if self.queue is None:
            return None
        queue = list(self.queue.facts)
        if self.editing is None:
            self.queue.check(fact)
        else:
            from kedit.session.queue import check_against

            del queue[self.editing]  # the fact being edited does not conflict with itself
            check_against(tuple(queue), fact)
        if fact in queue:
            i = queue.index(fact)
            return i + 1 if self.editing is not None and i >= self.editing else i
        return None

    def _show_message(self, text: str, cls: str) -> None:
        msg = self.query_one("#fact-message", Static)
        msg.update(plain(text))  # it quotes what the person typed: never markup
        msg.set_class(cls == "-error", "-error")
        msg.set_class(cls == "-ok", "-ok")

    @on(Input.Changed, "#subject, #prompt, #target")
    def _changed(self, event: Input.Changed) -> None:
        self.validate_form()

    @on(Input.Submitted, "#subject, #prompt, #target")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        fact = self.validate_form()
        if fact is None:
            # Not complete yet: go to the next empty field (Enter walks the form).
            values = self.form_values()
            for name, value in zip(FIELDS, values):
                if not value.strip():
                    self.query_one(f"#{name}", Input).focus()
                    return
            if event.input.id != "target":
                nxt = FIELDS[FIELDS.index(event.input.id) + 1]
                self.query_one(f"#{nxt}", Input).focus()
            return
        self.submit_fact(fact)

    def submit_fact(self, fact: Fact) -> bool:
        """Add (or replace, when editing) ``fact`` in the session's queue (in a worker)."""
        if self.queue is None:
            self.app.notify("no session is open; the fact stays in the form", severity="warning")
            return False
        if self.editing is not None:
            index = self.editing
            self.app.change_queue("replace", f"#{index + 1} → {jv.fact_label(fact)}", lambda q: q.replace(index, fact))
        else:
            self.app.change_queue("add", jv.fact_label(fact), lambda q: q.add(fact))
        self._show_message("queuing…", "")
        return True

    def change_done(self, kind: str, label: str, error: BaseException | None) -> None:
        """A queue change (``QueueChanged``) came back from the worker."""
        self.refresh_queue()
        if error is not None:
            if kind in ("add", "replace") and isinstance(error, KeditError):
                self.last_error = short_error(error)
                self._show_message(f"✗ {self.last_error}", "-error")
            return
        if kind in ("add", "replace"):
            self.editing = None
            self.remove_class("-editing")
            self.set_form()
            self.query_one("#subject", Input).focus()
        else:
            self.validate_form()

    # -- the table ----------------------------------------------------------------------------

    def delete_selected(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        if self.queue is None or not self.queue.facts:
            return
        index = table.cursor_row
        fact = self.queue.facts[index]
        if self.editing is not None:
            self.action_cancel_edit()
        self.app.change_queue("remove", jv.fact_label(fact), lambda q: q.remove(index))

    def edit_selected(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        if self.queue is None or not self.queue.facts:
            return
        index = table.cursor_row
        f = self.queue.facts[index]
        self.editing = index
        self.add_class("-editing")
        self.set_form(f.subject, f.prompt, f.target)
        self.query_one("#target", Input).focus()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel_edit":
            return self.editing is not None  # otherwise Esc falls through to the app
        return True

    def action_cancel_edit(self) -> None:
        if self.editing is None:
            return
        self.editing = None
        self.remove_class("-editing")
        self.set_form()
        self.query_one("#subject", Input).focus()


class QueueTable(DataTable):
    """The queued facts; Delete removes the highlighted one, Enter or ``e`` edits it."""

    BINDINGS = [
        Binding("delete,backspace,d", "delete_fact", "Delete", id="queue.delete"),
        Binding("enter,e", "edit_fact", "Edit", id="queue.edit"),
    ]

    def action_delete_fact(self) -> None:
        self.query_ancestor(QueuePane).delete_selected()

    def action_edit_fact(self) -> None:
        self.query_ancestor(QueuePane).edit_selected()
