"""User text is shown as typed, never read as markup or sent to the terminal as control codes:
``[/note]`` in a target must not turn a successful commit into exit 1, ``[red]`` and ``[citation
needed]`` must not vanish, and ESC sequences must show as ``\\x1b``, in the command line (real
subprocesses on a tiny model) and in the TUI (the real app driven by Pilot)."""

from __future__ import annotations

import json
import os

import pytest

from cli_support import kedit, kedit_here, one_error_line, snapshot
from kedit import show
from kedit.facts import Fact

ESC = "\x1b[2J"
TARGET = f"Lon[/note]don {ESC}[red]x[/red]"  # a closing tag, a screen clear, a style
SUBJECT = "Eiffel [citation needed] Tower"
SHOWN_TARGET = "Lon[/note]don \\x1b[2J[red]x[/red]"


def test_visible_escapes_control_characters_only():
    assert show.visible("a\x1b[2Jb\x07\x9b\u202e\n\tc [red]é") == "a\\x1b[2Jb\\x07\\x9b\\u202e\\n\\tc [red]é"
    assert show.markup("[red]x[/red] \x1b") == "\\[red]x\\[/red] \\x1b"
    assert show.terminal_safe("line\nnext\x1b") == "line\nnext\\x1b"


def test_the_console_prints_markup_and_escapes_literally(capsys):
    show.console().print(f"{TARGET} [bold]")
    assert capsys.readouterr().out == f"{SHOWN_TARGET} [bold]\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from test_session_tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", tokenizer)


@pytest.fixture
def tiny_session(tmp_path, tiny_dir, monkeypatch):
    """A session folder on the tiny model with fast hyper-parameters pinned in its settings."""
    from kedit.editing import load_model
    from kedit.session import Session
    from test_session_tiny import TEXT, fast_hparams

    monkeypatch.setenv("KEDIT_CACHE_DIR", str(tmp_path / "cache"))  # the tiny model's statistics stay private
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    return Session.attach(tmp_path / "s", lm, corpus=str(corpus), hparams=fast_hparams(tiny_dir))


def no_raw_control(text: str) -> bool:
    return not any(c in text for c in "\x1b\x9b\x07")


def test_markup_and_escapes_in_facts_through_the_command_line(tiny_session):
    s = tiny_session.path
    p = kedit("add", s, "-s", SUBJECT, "-p", "The {} is located in the city of", "-t", TARGET)
    assert p.returncode == 0, p.stderr
    p = kedit("queue", s, env=dict(os.environ, COLUMNS="200"))  # a wide table: no cell wraps
    assert p.returncode == 0 and SUBJECT in p.stdout and "Lon[/note]don" in p.stdout and "\\x1b[2J" in p.stdout
    assert no_raw_control(p.stdout + p.stderr)
    # the headline: the commit succeeds and says so (it used to exit 1 after writing commit #1)
    p = kedit("commit", s)
    assert p.returncode == 0, p.stderr
    assert f"The {SUBJECT} is located in the city of → {SHOWN_TARGET}" in p.stdout
    assert no_raw_control(p.stdout + p.stderr)
    p = kedit("log", s)
    assert p.returncode == 0 and f"→ {SHOWN_TARGET}" in p.stdout and no_raw_control(p.stdout)
    p = kedit("log", s, "--json")
    assert json.loads(p.stdout)["entries"][0]["facts"][0]["target"] == TARGET.strip()  # the data itself is kept as typed
    assert no_raw_control(p.stdout)


def test_markup_in_error_lines_is_shown(tmp_path, capsys):
    s = tmp_path / "s"
    r = kedit_here(capsys, "add", s, "-s", "[citation needed]", "-p", "no subject [b]here", "-t", "[red]Rome\x1b[2J")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "'[citation needed]'" in line and "[b]here" in line and "[red]Rome\\x1b[2J" in line
    assert not s.exists()
    assert kedit_here(capsys, "add", s, "-s", "Japan", "-p", "The capital of {} is", "-t", "[red]Paris").returncode == 0
    before = snapshot(s)
    r = kedit_here(capsys, "add", s, "-s", "Japan", "-p", "The capital of {} is", "-t", "[/x]Rome")
    assert r.returncode == 2 and "[/x]Rome" in one_error_line(r.stderr) and "[red]Paris" in r.stderr
    assert snapshot(s) == before
    r = kedit_here(capsys, "queue", s)
    assert "[red]Paris" in r.stdout


async def test_markup_and_escapes_in_facts_in_the_tui(tiny_session):
    from rich.text import Text

    from kedit.tui import journal_view as jv
    from kedit.tui.screens import ConfirmScreen, EntryScreen
    from tui_support import RecordingApp, wait_until

    s = tiny_session
    s.add(Fact(SUBJECT, "The {} is located in the city of", TARGET))
    entry = s.commit()
    s.add(Fact("Japan", "The capital of {} is", "[red]Paris[/red]\x1b[31m"))
    app = RecordingApp(session=s)
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await pilot.pause()
        row = [str(c) for c in app.query_one("#queue-table").get_row_at(0)]
        assert row == ["1", "Japan", "[red]Paris[/red]\\x1b[31m", "The capital of {} is"]
        log_row = [str(c) for c in app.query_one("#log-table").get_row_at(0)]
        assert log_row[2] == f"{SUBJECT} → {SHOWN_TARGET}"
        # the form's message line quotes what was typed
        app.queue_pane.set_form("Japan", "The capital of {} is", "[/b]Rome")
        await pilot.pause()
        assert "conflicts" in str(app.query_one("#fact-message").render())
        assert "[/b]Rome" in str(app.query_one("#fact-message").render())
        # entry details and the undo question show the fact as typed
        details = jv.details(entry)
        assert isinstance(details, Text) and f"{SUBJECT} is located in the city of → {SHOWN_TARGET}" in details.plain
        await app.push_screen(EntryScreen(entry))
        await pilot.pause()
        assert SHOWN_TARGET in str(app.screen.query_one("#entry-details").render())
        app.screen.dismiss(None)
        app.action_undo()
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert SHOWN_TARGET in str(app.screen.query_one("#confirm-detail").render())
        await pilot.press("n")
        # a notification quoting user text: shown as typed, not as markup
        app.queue_pane.set_form()
        app.query_one("#queue-table").focus()
        await pilot.press("delete")
        await wait_until(pilot, lambda: not s.queue, what="the removal")
        await wait_until(pilot, lambda: app.screen.query("Toast"), what="the notification")
        toasts = [str(t.render()) for t in app.screen.query("Toast")]
        assert any("[red]Paris[/red]\\x1b[31m" in t for t in toasts), (toasts, app.notes)
