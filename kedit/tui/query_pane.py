"""The live query pane: a prompt, the model's greedy continuation and its top-k next tokens.

When an active edit touched the prompt the session also returns the base model's answer, and the
pane shows it next to the current one (before → after). In chat mode (the app's Ctrl+T) the prompt
is asked as a chat turn through the model's chat template and the answer is the assistant's. The
query itself runs in the app's ``query`` worker group; this pane only asks and renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from kedit.show import terminal_safe


def show_token(token: str) -> str:
    """A token as a person reads it: leading space as ``␣``, control characters escaped."""
    text = token.encode("unicode_escape").decode("ascii", "backslashreplace") if not token.isprintable() else token
    if text.startswith(" "):
        text = "␣" + text[1:]
    return text or "∅"


def answer_text(result) -> Text:
    """The greedy continuation; when an edit touched the prompt, the base model's beside it."""
    out = Text()
    base = getattr(result, "base_continuation", None)
    lead = "" if getattr(result, "chat", False) else "…"  # a chat answer stands alone
    if base is None:
        out.append("assistant " if lead == "" else "answer ", style="bold")
        out.append(lead + terminal_safe(result.continuation.rstrip()), style="bold")
        return out
    out.append("now    ", style="bold")
    out.append(lead + terminal_safe(result.continuation.rstrip()), style="bold green")
    out.append("\nbefore ", style="bold")
    out.append(lead + terminal_safe(base.rstrip()), style="yellow")
    if base == result.continuation:
        out.append("  (unchanged)", style="dim")
    return out


def topk_table(result) -> Table:
    """Top next tokens with probabilities (now, and base when the edit touched the prompt)."""
    base_top = getattr(result, "base_top", None)
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False, padding=(0, 1))
    table.add_column("#", style="dim", justify="right")
    table.add_column("next" if base_top is None else "now", overflow="ellipsis", no_wrap=True, max_width=12)
    table.add_column("p", justify="right", min_width=5, no_wrap=True)
    if base_top is not None:
        table.add_column("before", overflow="ellipsis", no_wrap=True, max_width=12)
        table.add_column("p", justify="right", min_width=5, no_wrap=True)
    for i, tp in enumerate(result.top):
        row = [str(i + 1), show_token(tp.token), f"{tp.prob:.0%}"]
        if base_top is not None:
            if i < len(base_top):
                row += [show_token(base_top[i].token), f"{base_top[i].prob:.0%}"]
            else:
                row += ["", ""]
        table.add_row(*row)
    return table


class QueryPane(Vertical):
    """Prompt input + answer + top-k."""

    BORDER_TITLE = "Query"

    @dataclass
    class Asked(Message):
        """The person submitted ``prompt`` (the app runs it in a worker)."""

        prompt: str

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.result = None  # the QueryResult on screen
        self.chat = False  # prompts are asked as chat turns

    def set_chat(self, on: bool) -> None:
        self.chat = on
        self.border_title = "Query · chat" if on else self.BORDER_TITLE
        self.query_one("#query-input", Input).placeholder = (
            "message to the assistant, then Enter" if on else "prompt to ask the model, then Enter")

    def compose(self) -> ComposeResult:
        yield Input(placeholder="prompt to ask the model, then Enter", id="query-input", compact=True)
        yield Static("Type a prompt and press Enter to see what the model answers.", id="answer")
        yield Static("", id="topk")

    @on(Input.Submitted, "#query-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        prompt = event.value.strip()
        if prompt:
            self.post_message(self.Asked(prompt))

    def show_running(self, prompt: str) -> None:
        self.border_subtitle = "asking…"
        self.add_class("-running")

    def show_result(self, result, seconds: float) -> None:
        self.result = result
        self.remove_class("-running")
        self.border_subtitle = f"{seconds:.1f}s"
        self.query_one("#answer", Static).update(answer_text(result))
        self.query_one("#topk", Static).update(topk_table(result))

    def show_failed(self) -> None:
        self.remove_class("-running")
        self.border_subtitle = "failed"
