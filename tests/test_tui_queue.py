"""The fact queue pane on a tiny-model session: typing, inline validation, edit, delete, load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kedit.facts import Fact
from kedit.tui.messages import QueueChanged
from tui_support import RecordingApp, tiny, tiny_session, type_into, wait_until  # noqa: F401 (tiny: a fixture)


@pytest.fixture
def session(tiny):
    """The module's tiny session with an empty queue (the queue is all these tests touch)."""
    tiny.clear_queue()
    yield tiny
    tiny.clear_queue()


def message_text(app) -> str:
    return str(app.query_one("#fact-message").render())


async def test_type_a_fact_and_see_it_queued(session):
    seen = []
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        assert app.focused.id == "subject"
        await pilot.press(*"Eiffel Tower", "enter")
        assert app.focused.id == "prompt"  # Enter walks the form while the fact is incomplete
        await pilot.press(*"The Eiffel Tower is located in the city of", "enter")
        assert app.focused.id == "target"
        assert "target is empty" in message_text(app)
        await pilot.press(*"London")
        assert "Enter to queue: The {} is located in the city of → London" in message_text(app)
        await pilot.press("enter")
        await wait_until(pilot, lambda: any(isinstance(m, QueueChanged) for m in seen), what="the queue change")
        assert session.queue == (Fact("Eiffel Tower", "The {} is located in the city of", "London"),)
        table = app.query_one("#queue-table")
        assert table.row_count == 1
        assert [str(c) for c in table.get_row_at(0)] == ["1", "Eiffel Tower", "London", "The {} is located in the city of"]
        assert app.queue_pane.form_values() == ("", "", "")  # the form is cleared for the next fact
        assert app.focused.id == "subject"


@pytest.mark.parametrize(
    "subject, prompt, target, expected",
    [
        ("Eiffel Tower", "The tower is located in", "London", "the subject is not in the prompt"),
        ("Eiffel Tower", "The {} is located in", "", "the target is empty"),
        ("", "The {} is located in", "Rome", "the subject is empty"),
        ("Colosseum", "The {} is located in", "Paris", "already queued as #1"),
        ("Colosseum", "The {} is located in", "Berlin", "conflicts with the queued"),
    ],
)
async def test_invalid_fact_is_shown_at_once_and_not_queued(session, subject, prompt, target, expected):
    session.add(Fact("Colosseum", "The {} is located in", "Paris"))
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#subject", subject)
        await type_into(pilot, "#prompt", prompt)
        await type_into(pilot, "#target", target)
        # shown while typing, before any commit or Enter
        assert expected in message_text(app)
        assert app.query_one("#fact-message").has_class("-error")
        await pilot.press("enter")
        await pilot.pause()
        await app.workers.wait_for_complete()
        assert len(session.queue) == 1  # nothing was added
        assert expected in message_text(app)


async def test_edit_and_delete_a_queued_fact(session):
    session.add_many([Fact("Colosseum", "The {} is located in", "Paris"), Fact("Louvre", "The {} is in", "Rome")])
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one("#queue-table")
        table.focus()
        await pilot.press("down", "e")  # edit the second fact
        assert app.queue_pane.editing == 1
        assert app.focused.id == "target"
        await pilot.press("ctrl+u", *"Berlin", "enter")
        await wait_until(pilot, lambda: app.queue_pane.editing is None, what="the replace")
        assert session.queue[1] == Fact("Louvre", "The {} is in", "Berlin")
        table.focus()
        await pilot.press("up", "delete")
        await wait_until(pilot, lambda: len(session.queue) == 1, what="the removal")
        assert session.queue == (Fact("Louvre", "The {} is in", "Berlin"),)
        assert app.query_one("#queue-table").row_count == 1
        assert any("removed" in text for text, _ in app.notes)


async def test_escape_leaves_an_edit_without_changing_the_queue(session):
    session.add(Fact("Louvre", "The {} is in", "Rome"))
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        app.query_one("#queue-table").focus()
        await pilot.press("enter")
        assert app.queue_pane.editing == 0
        await pilot.press("ctrl+u", *"Oslo", "escape")
        assert app.queue_pane.editing is None
        assert app.queue_pane.form_values() == ("", "", "")
        assert session.queue == (Fact("Louvre", "The {} is in", "Rome"),)


async def test_load_facts_from_a_file(session, tmp_path):
    path = tmp_path / "facts.jsonl"
    rows = [{"subject": "Louvre", "prompt": "The {} is in", "target": "Rome"},
            {"subject": "Big Ben", "prompt": "Big Ben is a clock in", "target": "Paris"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "X", "prompt": "no subject here", "target": "Y"}\n')
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+o")
        assert app.screen.__class__.__name__ == "AskScreen"
        await pilot.press(*str(bad), "enter")
        await pilot.pause()
        assert any("bad.jsonl:1" in text and sev == "error" for text, sev in app.notes)
        assert session.queue == ()
        await pilot.press("ctrl+o")
        await pilot.press(*str(path), "enter")
        await wait_until(pilot, lambda: len(session.queue) == 2, what="the facts to load")
        assert session.queue[1] == Fact("Big Ben", "{} is a clock in", "Paris")  # template derived
        await pilot.pause()
        assert app.query_one("#queue-table").row_count == 2


async def test_commit_with_an_empty_queue_says_so(session):
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+s")
        assert not app.committing
        assert ("the queue is empty: add a fact first", "warning") in app.notes
        await pilot.press("ctrl+z")
        assert ("nothing to undo", "warning") in app.notes


async def test_clear_queue_from_the_palette_asks_first(session):
    session.add_many([Fact("Colosseum", "The {} is located in", "Paris"), Fact("Louvre", "The {} is in", "Rome")])
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p", *"Clear queue")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("n")
        assert len(session.queue) == 2
        await pilot.press("ctrl+p", *"Clear queue")
        await pilot.pause(0.3)
        await pilot.press("enter", "y")
        await wait_until(pilot, lambda: session.queue == (), what="the queue to clear")
        await pilot.pause()
        assert app.query_one("#queue-table").row_count == 0
        assert ("dropped 2 queued fact(s)", "information") in app.notes


# Another process holds the session folder's lock until told; a line on its stdin is a fact
# (subject|prompt|target) it queues itself before letting go.
HOLD_THE_FOLDER = """
import sys
from pathlib import Path
from kedit.facts import Fact
from kedit.session.folder import SessionFolder
from kedit.session.queue_view import SessionQueue

folder = SessionFolder(Path(sys.argv[1]))
with folder.folder_lock("a test holding the folder", wait=10):
    print("held", flush=True)
    line = sys.stdin.readline().strip()
    if line:
        SessionQueue(folder).add(Fact(*line.split("|")))
"""


@pytest.fixture
def own_session(tmp_path, tokenizer):
    """A tiny-model session of the test's own (these tests commit to it)."""
    return tiny_session(tmp_path / "s", tokenizer)


def hold_the_folder(session):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_FOLDER, str(session.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def release(holder, line: str = "") -> None:
    holder.stdin.write(line + "\n")
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


async def test_ctrl_s_right_after_enter_commits_the_fact_on_its_way_to_the_queue(own_session):
    """Enter hands the fact to a worker; a Ctrl+S before it is saved waits for it instead of
    finding the queue empty (or committing the batch without it)."""
    session = own_session
    fact = Fact("Eiffel Tower", "The {} is located in the city of", "London")
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        holder = hold_the_folder(session)  # the fact cannot be saved until the holder lets go
        await type_into(pilot, "#subject", fact.subject)
        await type_into(pilot, "#prompt", fact.prompt)
        await type_into(pilot, "#target", fact.target)
        await pilot.press("enter", "ctrl+s")
        await pilot.pause(0.2)
        assert session.queue == () and app.commit_waiting and not app.committing
        await pilot.press("ctrl+s")  # a second press while it waits commits nothing twice
        assert ("the commit starts once the queued fact is saved", "warning") in app.notes
        release(holder)
        await wait_until(pilot, lambda: session.active_commits() and not app.committing, timeout=120,
                         what="the commit")
        assert not any("queue is empty" in text for text, _ in app.notes)
    assert [e.facts for e in session.active_commits()] == [(fact,)]
    assert session.queue == ()


async def test_ctrl_s_commits_a_complete_fact_still_in_the_form(own_session):
    session = own_session
    queued = Fact("Colosseum", "The {} stands in", "Berlin")
    session.add(queued)
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#subject", "Louvre")
        await type_into(pilot, "#prompt", "The {} is in")
        await type_into(pilot, "#target", "Rome")  # no Enter
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: session.active_commits() and not app.committing, timeout=120,
                         what="the commit")
        assert app.queue_pane.form_values() == ("", "", "")
    assert [e.facts for e in session.active_commits()] == [(queued, Fact("Louvre", "The {} is in", "Rome"))]


async def test_a_fact_that_cannot_be_queued_stops_the_commit_it_was_meant_for(own_session):
    """Another process queues a conflicting fact first: the form's fact is refused, and the
    commit does not go ahead without it."""
    session = own_session
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        holder = hold_the_folder(session)
        await type_into(pilot, "#subject", "Louvre")
        await type_into(pilot, "#prompt", "The {} is in")
        await type_into(pilot, "#target", "Rome")
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        assert app.commit_waiting
        release(holder, "Louvre|The {} is in|Paris")
        await wait_until(pilot, lambda: not app.commit_waiting, timeout=30, what="the refused fact")
        await pilot.pause()
        assert ("nothing committed: the fact in the form could not be queued", "warning") in app.notes
        assert "conflicts with the queued" in message_text(app)
        assert app.queue_pane.form_values() == ("Louvre", "The {} is in", "Rome")  # kept for fixing
        assert not app.committing
    assert session.active_commits() == [] and session.queue == (Fact("Louvre", "The {} is in", "Paris"),)


async def test_a_guarded_commit_keeps_the_harmful_fact_queued_and_says_why(own_session, monkeypatch):
    """The guard in the TUI: real edits on the tiny model, the held-out NLL scripted (every applied
    edit of "Japan" raises it by 10%), the session's setting turned on as ``kedit settings --guard`` does."""
    import dataclasses
    import math

    from kedit.session.folder import SessionFolder

    session = own_session
    japan = lambda: sum(f.subject == "Japan" for facts in session._stack.remembered for f in facts)  # noqa: E731
    monkeypatch.setattr("kedit.editing.health.session_nll", lambda model, tok: 3.0 + math.log(1.1) * japan())
    SessionFolder(session.path).change_settings(lambda st: dataclasses.replace(st, guard=True))
    harmless, harmful = Fact("Eiffel Tower", "The {} is located in the city of", "London"), Fact(
        "Japan", "The capital of {} is", "Paris")
    session.add(harmless)
    session.add(harmful)
    app = RecordingApp(session=session)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: session.active_commits() and not app.committing, timeout=120,
                         what="the guarded commit")
        held = [text for text, severity in app.notes if "stays in the queue" in text]
        assert held == ["The capital of Japan is → Paris: on its own it moved held-out perplexity by +10.0%, more "
                        "than this session's threshold. It stays in the queue."]
        assert app.query_one("#queue-table").row_count == 1 and "guarded" in str(app.status.render())
    assert [e.facts for e in session.active_commits()] == [(harmless,)] and session.queue == (harmful,)
