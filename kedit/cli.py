"""The ``kedit`` command line (Typer): a thin shell over ``kedit.session`` and ``kedit.editing``.

Heavy imports (torch, transformers, textual) happen inside the commands, so ``kedit --help``
answers at once. Every ``KeditError`` becomes one line on stderr with a hint and its exit code:

    0 ok · 1 error · 2 bad input · 3 missing package/model/device · 4 edit refused (weights
    untouched) · 5 session or journal problem · 130 cancelled
"""

from __future__ import annotations

import os
import sys

import typer

from kedit.errors import KeditError

app = typer.Typer(
    name="kedit",
    help="Patch facts inside a local language model (EMMET, MEMIT, ROME).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module adds its commands to ``app``; they import torch only when a command runs.
from kedit.commands import session_cmds  # noqa: E402,F401
from kedit.commands import eval_cmds  # noqa: E402,F401
from kedit.commands import tui_cmd  # noqa: E402,F401


def report(exc: KeditError) -> int:
    """Print a user error as one line (plus a hint) and return its exit code."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {exc.hint}", markup=True, soft_wrap=True)
    return exc.exit_code


def main() -> None:
    debug = os.environ.get("KEDIT_DEBUG") == "1"
    try:
        # Not standalone: click returns the code of a typer.Exit instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except KeditError as exc:
        if debug:
            raise
        sys.exit(report(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:  # raised by commands to set the code
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # the command line's own usage errors (typer vendors click)
        show = getattr(exc, "show", None)
        if isinstance(exc, typer.TyperException) and callable(show):
            show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
