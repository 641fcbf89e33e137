"""The commit progress display: the phases of an edit, a bar and the live loss/step count.

It is fed ``kedit.editing.Progress`` reports (through ``CommitProgressed`` messages) and knows
nothing about how the edit is made. Esc (an app binding) cancels the commit while it shows.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

PHASES = ("statistics", "keys", "values", "solve", "apply")


class CommitProgress(Vertical):
    """Hidden until a commit starts."""

    BORDER_TITLE = "Commit"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.states: dict[str, str] = {}
        self.last = None  # the last Progress shown
        self.reports = 0

    def compose(self) -> ComposeResult:
        yield Static("", id="phases")
        yield ProgressBar(total=None, show_eta=False, id="commit-bar")
        yield Static("", id="commit-detail")

    def start(self, n_facts: int) -> None:
        self.states = {p: "pending" for p in PHASES}
        self.last, self.reports = None, 0
        self.border_title = f"Commit {n_facts} fact{'s' if n_facts != 1 else ''}"
        self.border_subtitle = "Esc cancels"
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one("#commit-detail", Static).update("starting…")
        self._render_phases()
        self.display = True

    def stop(self) -> None:
        self.display = False

    def cancelling(self) -> None:
        self.border_subtitle = "cancelling…"
        self.query_one("#commit-detail", Static).update("cancelling: waiting for the current step to end")

    def report(self, p) -> None:
        self.reports += 1
        self.last = p
        if p.phase in self.states:
            for name, state in self.states.items():
                if state == "running" and name != p.phase:
                    self.states[name] = "done"
            if p.phase != "statistics" and self.states["statistics"] == "pending":
                self.states["statistics"] = "done"  # cached on disk: nothing to report
            self.states[p.phase] = "running"
        self._render_phases()
        bar = self.query_one(ProgressBar)
        if p.total:
            bar.update(total=p.total, progress=p.done)
        else:
            bar.update(total=None)
        parts = [p.phase]
        if p.total:
            parts.append(f"step {p.done}/{p.total}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.3f}")
        if p.detail:
            parts.append(p.detail)
        self.query_one("#commit-detail", Static).update(" · ".join(parts))

    def _render_phases(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        marks = {"pending": ("·", "dim"), "running": ("▶", "bold magenta"), "done": ("✓", "green")}
        for i, name in enumerate(PHASES):
            mark, style = marks[self.states.get(name, "pending")]
            if i:
                t.append("  ")
            t.append(f"{mark} {name}", style=style)
        self.query_one("#phases", Static).update(t)
