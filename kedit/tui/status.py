"""The status line: session, model, device, dtype, method, layers, edits so far, and state."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from kedit.show import visible


def _short_model(name: str) -> str:
    # a local folder shows as its last part; hub ids and "default" as they are
    p = Path(name)
    return p.name if (p.is_absolute() or name.startswith(".")) and p.name else name


class StatusLine(Static):
    """One line docked at the top."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.state = "loading"
        self.fields: dict[str, str] = {}

    def show_loading(self, what: str) -> None:
        self.state = "loading"
        self.fields = {"loading": what}
        self._redraw()

    def show_session(self, session, state: str = "ready") -> None:
        lm, hp = session.lm, session.hparams
        self.state = state
        edits = sum(len(c.facts) for c in session.active_commits())
        # most useful first: a narrow terminal cuts the end of the line
        self.fields = {
            "session": session.name,
            "model": _short_model(lm.name),
            "method": f"{hp.method} L{','.join(str(l) for l in hp.layers)}",
            "edits": f"{edits} edit{'s' if edits != 1 else ''}",
            "device": f"{lm.device} {str(lm.dtype).removeprefix('torch.')}",
        }
        settings = getattr(session, "settings", None)
        quant = getattr(settings, "query_quant", "none")
        if quant and quant != "none":
            self.fields["query"] = f"query {quant}"
        if getattr(settings, "guard", False):
            self.fields["guard"] = "guarded"
        self._redraw()

    def set_state(self, state: str) -> None:
        self.state = state
        self._redraw()

    def _redraw(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" kedit ", style="bold reverse")
        style = {"ready": "green", "loading": "yellow", "committing": "magenta", "failed": "red"}.get(
            self.state.split()[0], "cyan"
        )
        t.append(" ● ", style=style)
        t.append(self.state, style=f"bold {style}")
        for i, (key, value) in enumerate(self.fields.items()):
            t.append("  " if i == 0 else " · ", style="dim")
            t.append(visible(value), style="bold" if key in ("session", "edits") else "")
        self.update(t)
