"""The edit log pane: every commit and undo of the session's journal, newest first.

Rows come from ``Session.entries()``; Enter on a row opens its details (``EntryScreen``), ``c``
copies the entry (as the journal's JSON line) to the clipboard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable

from kedit.show import cell
from kedit.tui import journal_view as jv


class LogTable(DataTable):
    BINDINGS = [
        Binding("enter", "details", "Details", id="log.details"),
        Binding("c,y", "copy_entry", "Copy", id="log.copy"),
    ]

    def action_details(self) -> None:
        self.query_ancestor(LogPane).open_selected()

    def action_copy_entry(self) -> None:
        self.query_ancestor(LogPane).copy_selected()


class LogPane(Vertical):
    BORDER_TITLE = "Edit log"

    @dataclass
    class Opened(Message):
        """The person asked for the details of ``entry``."""

        entry: object

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.entries: list = []  # newest first, as shown
        self.drifts: dict = {}

    def compose(self) -> ComposeResult:
        table = LogTable(id="log-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("#", "kind", "facts", "method", "layers", "time", "efficacy")
        yield table

    def set_entries(self, entries, drifts: dict | None = None) -> None:
        """``drifts``: seq → ``session.drift.Drift`` of each commit (flagged ones are marked)."""
        self.entries = list(reversed(list(entries)))
        self.drifts = drifts or {}
        table = self.query_one(LogTable)
        table.clear()
        undone = jv.undone_ids(self.entries)
        for e in self.entries:
            v = jv.view(e, undone, self.drifts.get(e.seq))
            table.add_row(*(cell(c) for c in (v.number, v.kind, v.facts, v.method, v.layers, v.time, v.efficacy)))
        if self.entries:
            table.move_cursor(row=0)
        commits = sum(1 for e in self.entries if jv.is_commit(e))
        n = len(self.entries)
        self.border_subtitle = (
            f"{n} {'entry' if n == 1 else 'entries'}, {commits} {'commit' if commits == 1 else 'commits'}"
            + self._health() if self.entries else "no edits yet"
        )

    def _health(self) -> str:
        """Held-out perplexity of the model now against the base model, when measured."""
        undone = jv.undone_ids(self.entries)
        for e in self.entries:  # newest first: the last active commit is the model now
            if jv.is_commit(e) and e.seq not in undone:
                d = self.drifts.get(e.seq)
                return f" · perplexity {d.since_base:+.1%}" if d is not None and d.since_base is not None else ""
        return ""

    def selected(self):
        if not self.entries:
            return None
        row = self.query_one(LogTable).cursor_row
        return self.entries[min(max(row, 0), len(self.entries) - 1)]

    def open_selected(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.post_message(self.Opened(entry))

    def copy_selected(self) -> None:
        entry = self.selected()
        if entry is None:
            self.app.notify("the log is empty", severity="warning")
            return
        text = json.dumps(jv.as_dict(entry), ensure_ascii=False, indent=2)
        self.app.copy_to_clipboard(text)
        self.app.notify(f"copied entry {jv.number(entry)} to the clipboard", timeout=3)
