"""Modal screens: help, confirm, entry details, and the small forms of the command palette
(export folder, method, layers, open another session, load facts from a file).

Every modal closes with Esc (answer ``None``/``False``) and is driven by the keyboard alone.
"""

from __future__ import annotations

import json

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from kedit.show import plain
from kedit.tui import journal_view as jv

HELP = """\
# kedit — keys

**Add a fact** — type the *subject*, the *prompt* (with `{}` for the subject, or with the
subject written in) and the new *target*; Enter walks the form and queues the fact once it is
valid. Problems (subject not in the prompt, empty target, duplicate or conflicting fact) show
under the form as you type.

| key | what |
|---|---|
| Ctrl+S | commit the queued facts as one batch (a complete fact still in the form joins it) |
| Esc | cancel a running commit (no weight changes) · leave a form being edited |
| Ctrl+Z | undo the last commit (asks first) |
| Ctrl+O | load facts from a file (jsonl / csv) |
| Ctrl+T | chat mode: ask the query as a chat turn (instruct models) |
| Ctrl+P | command palette: export, method, layers, open session, clear queue… |
| F2 / F3 / F4 | focus queue form / query / edit log |
| Tab / Shift+Tab | next / previous field |
| Enter (queue table) | edit the fact · Delete removes it |
| Enter (edit log) | details of the entry · c copies it to the clipboard |
| F1 | this help |
| Ctrl+Q | quit |

**Query** — type a prompt in the query pane and press Enter: the greedy continuation and the
top next tokens. For a prompt an edit touched, the base model's answer shows beside the
current one. After each commit and undo the last prompt is asked again. **Ctrl+T** switches to
chat mode: the prompt goes through the model's chat template as a user turn, and the pane shows
the assistant's answer and its first tokens, before and after the edits.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss_help", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="modal-box"):
            yield Markdown(HELP)

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; ``y``/Enter says yes, ``n``/Esc no."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="modal-box"):
            yield Label(plain(self.question), id="confirm-question")
            if self.detail:
                yield Static(Text(self.detail), id="confirm-detail")  # fact lines: text, never markup
            yield Label("[b]y[/b]/Enter yes · [b]n[/b]/Esc no", classes="modal-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class EntryScreen(ModalScreen[None]):
    """The details of one journal entry; ``c`` copies it."""

    BINDINGS = [
        Binding("escape,q", "close", "Close", id="entry.close"),
        Binding("c,y", "copy", "Copy", id="entry.copy"),
    ]

    def __init__(self, entry, undone: set | None = None, drift=None) -> None:
        super().__init__()
        self.entry, self.undone, self.drift = entry, undone or set(), drift

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="entry-box", classes="modal-box"):
            yield Static(jv.details(self.entry, self.undone, self.drift), id="entry-details")
            yield Label("[b]c[/b] copy to clipboard · [b]Esc[/b] close", classes="modal-keys")

    def on_mount(self) -> None:
        self.query_one("#entry-box").border_title = f"Journal entry {jv.number(self.entry)}"

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(json.dumps(jv.as_dict(self.entry), ensure_ascii=False, indent=2))
        self.notify(f"copied entry {jv.number(self.entry)} to the clipboard", timeout=3)

    def action_close(self) -> None:
        self.dismiss(None)


class AskScreen(ModalScreen[str | None]):
    """One line of text (a folder, a file, layers, a session name); Enter answers, Esc drops."""

    BINDINGS = [Binding("escape", "drop", "Cancel", id="ask.cancel")]

    def __init__(self, title: str, explain: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text, self.explain, self.value, self.placeholder = title, explain, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="ask-box", classes="modal-box"):
            yield Static(self.explain, id="ask-explain")
            yield Input(value=self.value, placeholder=self.placeholder, id="ask-input")
            yield Label("[b]Enter[/b] ok · [b]Esc[/b] cancel", classes="modal-keys")

    def on_mount(self) -> None:
        self.query_one("#ask-box").border_title = self.title_text
        self.query_one("#ask-input", Input).focus()

    @on(Input.Submitted, "#ask-input")
    def _ok(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_drop(self) -> None:
        self.dismiss(None)


class ChooseScreen(ModalScreen[str | None]):
    """Pick one of a few options (the editing method)."""

    BINDINGS = [Binding("escape", "drop", "Cancel", id="choose.cancel")]

    def __init__(self, title: str, options: list[tuple[str, str]], current: str | None = None) -> None:
        super().__init__()
        self.title_text, self.options, self.current = title, options, current

    def compose(self) -> ComposeResult:
        with Vertical(id="choose-box", classes="modal-box"):
            yield OptionList(*[Option(Text(label), id=key) for key, label in self.options], id="choose-list")
            yield Label("[b]Enter[/b] choose · [b]Esc[/b] cancel", classes="modal-keys")

    def on_mount(self) -> None:
        self.query_one("#choose-box").border_title = self.title_text
        ol = self.query_one(OptionList)
        keys = [k for k, _ in self.options]
        if self.current in keys:
            ol.highlighted = keys.index(self.current)
        ol.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_drop(self) -> None:
        self.dismiss(None)
