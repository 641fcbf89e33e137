"""Showing text that came from a user (facts, prompts, paths, file contents) on a terminal.

User text is data, never markup or terminal control: ``[/x]`` must not crash a print, ``[red]``
or ``[citation needed]`` must not vanish, and an ESC sequence in a fact must not clear the
screen. This module is the one owner of that rule, for the command line and the TUI:

* ``visible(text)`` writes control characters (C0, DEL, C1, bidirectional overrides) as escapes
  (``\\x1b``, ``\\n``, ``\\u202e``): one line, nothing the terminal acts on;
* ``markup(text)`` is ``visible`` plus Rich markup escaping, for a user value put into a
  markup string;
* ``plain(text)`` / ``cell(text)`` wrap the visible text as a Rich ``Text`` for a widget or a
  table cell (never markup);
* ``console()`` is a Rich console whose ``print`` never reads markup unless asked
  (``markup=True``) and shows control characters in any string it is given (newlines and tabs
  of kedit's own messages stay).
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape
from rich.text import Text

# C0 controls, DEL, C1 controls, and the bidirectional overrides/isolates that reorder a line
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def visible(text: object) -> str:
    """``text`` on one line with every control character written as an escape (``\\x1b``)."""
    return _CONTROL.sub(_escape_char, str(text))


def markup(text: object) -> str:
    """``text`` made visible and escaped for a Rich markup string."""
    return escape(visible(text))


def plain(text: object) -> Text:
    """A Rich ``Text`` of ``text`` made visible: never read as markup (tables, TUI widgets)."""
    return Text(visible(text))


def cell(text: object) -> Text:
    """A table cell (Rich or Textual ``DataTable``) of user text: visible, never markup."""
    return Text(visible(text), end="", no_wrap=True)


def terminal_safe(text: str) -> str:
    """Like ``visible`` but keeps newlines and tabs (a whole message of several lines)."""
    return _CONTROL_KEEP_LINES.sub(_escape_char, text)


class SafeConsole(Console):
    """A Rich console for output that holds user text: no markup unless ``markup=True`` is passed
    (then the caller escapes user values with ``markup()``), control characters always visible."""

    def print(self, *objects, **kwargs) -> None:  # noqa: A003 - Console's name
        kwargs.setdefault("markup", False)
        super().print(*(terminal_safe(o) if isinstance(o, str) else o for o in objects), **kwargs)


def console(stderr: bool = False) -> SafeConsole:
    return SafeConsole(stderr=stderr, highlight=False, soft_wrap=True, markup=False)
