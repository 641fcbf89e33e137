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
    from kedit import show

    err = show.console(stderr=True)
    err.print(f"[bold red]error:[/] {show.markup(exc)}", markup=True)  # the message may quote user text
    if exc.hint:
        err.print(f"[dim]hint:[/] {show.markup(exc.hint)}", markup=True)
    return exc.exit_code


def main(argv: list[str] | None = None) -> None:
    """The ``kedit`` entry point: run the command line and exit with its code."""
    sys.exit(run(sys.argv[1:] if argv is None else list(argv)))


def run(args: list[str]) -> int:
    """Run one command line in this process; returns its exit code (tests call this directly)."""
    debug = os.environ.get("KEDIT_DEBUG") == "1"
    try:
        check_arguments(args)
        # Not standalone: click returns the code of a typer.Exit instead of exiting.
        code = app(args=args, prog_name="kedit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except KeditError as exc:
        if debug:
            raise
        return report(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:  # raised by commands to set the code
        return exc.exit_code
    except typer.Abort:
        return 130
    except OSError as exc:  # the file system said no (disk full, permissions, ...): not a kedit bug
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        return report(KeditError(f"{exc.strerror or exc}{where}", hint="KEDIT_DEBUG=1 shows where it happened"))
    except Exception as exc:  # the command line's own usage errors (typer vendors click)
        if isinstance(exc, typer.TyperException) and callable(getattr(exc, "show", None)):
            import io

            from kedit.show import terminal_safe

            text = io.StringIO()
            exc.show(file=text)  # it quotes the argument as typed: no raw control characters
            sys.stderr.write(terminal_safe(text.getvalue()))
            return getattr(exc, "exit_code", 2)
        raise


def check_arguments(args: list[str]) -> None:
    """Refuse arguments that are not UTF-8 text before any command runs (nothing is created)."""
    for a in args:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
            from kedit.errors import UsageError
            from kedit.show import visible

            shown = visible("".join(_byte_or_char(c) for c in a))
            raise UsageError(f"the argument '{shown}' is not UTF-8 text", hint="kedit reads its arguments as UTF-8") from None


def _byte_or_char(c: str) -> str:
    """A character of an argument; a byte that was not UTF-8 (a surrogate escape) as ``\\xNN``."""
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xDC00:02x}"
    if "\ud800" <= c <= "\udfff":
        return f"\\u{ord(c):04x}"
    return c
