"""The TUI end to end on the real default model (SmolLM2-135M): type a fact, commit, see the log
entry and the changed answer, undo; Esc cancels a running commit without touching a weight."""

from __future__ import annotations

import threading

import pytest
import torch

from kedit.editing import arch
from kedit.facts import Fact
from kedit.tui.messages import CommitCancelled, CommitFinished, CommitProgressed, QueryAnswered, UndoFinished
from tui_support import RecordingApp, type_into, wait_until

pytestmark = pytest.mark.model

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def session(tmp_path_factory, default_lm):
    from kedit.session import Session

    s = Session.attach(tmp_path_factory.mktemp("tui-edit") / "edit", default_lm)
    yield s
    while s.active_commits():  # the default model is shared by the whole test run: leave it as found
        s.undo()


def answers(seen):
    return [m for m in seen if isinstance(m, QueryAnswered)]


def row(app, selector: str, index: int) -> list[str]:
    return [str(c) for c in app.query_one(selector).get_row_at(index)]


async def test_commit_changes_the_answer_and_undo_restores_it(session):
    seen = []
    base_fp = session.fingerprint()
    app = RecordingApp(session=session)
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        # the unedited answer
        await type_into(pilot, "#query-input", PROMPT)
        await pilot.press("enter")
        await wait_until(pilot, lambda: answers(seen), timeout=300, what="the first answer")
        first = answers(seen)[-1].result
        assert first.continuation.strip().startswith("Paris")
        assert first.base_continuation is None  # no edit touches the prompt yet

        # the fact, typed with the subject written into the prompt
        await type_into(pilot, "#subject", "Eiffel Tower")
        await pilot.press("enter", *PROMPT, "enter", *"London", "enter")
        await wait_until(pilot, lambda: len(session.queue) == 1, what="the queued fact")
        assert session.queue[0] == Fact("Eiffel Tower", "The {} is located in the city of", "London")

        shown = []  # (committing, progress shown) each time a progress report reaches the view
        real_report = app.progress_view.report
        app.progress_view.report = lambda p: (shown.append((app.committing, app.progress_view.display)), real_report(p))
        await pilot.press("ctrl+s")  # the commit can finish before the press returns: check what the reports saw
        await wait_until(pilot, lambda: any(isinstance(m, CommitFinished) for m in seen), timeout=600, what="the commit")
        assert shown and all(c and d for c, d in shown), shown
        phases = {m.progress.phase for m in seen if isinstance(m, CommitProgressed)}
        assert {"values", "keys", "solve", "apply"} <= phases
        assert not app.committing and not app.progress_view.display
        assert session.queue == () and app.query_one("#queue-table").row_count == 0

        # the log entry, newest first
        entry = session.active_commits()[-1]
        assert app.query_one("#log-table").row_count == 1
        r = row(app, "#log-table", 0)
        assert r[:5] == [f"#{entry.seq}", "commit", "Eiffel Tower → London", "emmet", str(session.layers[0])]
        assert r[6] == "✓ 1/1"  # efficacy: London is now the top answer
        assert "1 edit ·" in str(app.status.render())

        # the query pane re-ran the last prompt: the edited answer next to the base one
        await wait_until(pilot, lambda: len(answers(seen)) >= 2 and app.query_pane.result is answers(seen)[-1].result,
                         timeout=300, what="the answer after the commit")
        after = app.query_pane.result
        assert after.prompt == PROMPT
        assert after.continuation.strip().startswith("London")
        assert after.base_continuation.strip().startswith("Paris")
        assert after.top[0].token.strip() == "London"

        # details and clipboard
        app.query_one("#log-table").focus()
        await pilot.press("enter")
        assert app.screen.__class__.__name__ == "EntryScreen"
        details = str(app.screen.query_one("#entry-details").render())
        assert "The Eiffel Tower is located in the city of → London" in details
        await pilot.press("c")
        assert '"kind": "commit"' in app.clipboard and '"London"' in app.clipboard
        await pilot.press("escape")
        assert len(app.screen_stack) == 1

        # undo asks first; "n" keeps the commit
        await pilot.press("ctrl+z")
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("n")
        await pilot.pause()
        assert len(session.active_commits()) == 1
        n = len(answers(seen))  # the undo re-asks the last prompt: one answer more than now
        await pilot.press("ctrl+z", "y")
        await wait_until(pilot, lambda: any(isinstance(m, UndoFinished) for m in seen), timeout=300, what="the undo")
        assert session.active_commits() == []
        assert session.fingerprint() == base_fp  # bit-identical to before the commit
        assert app.query_one("#log-table").row_count == 2
        assert row(app, "#log-table", 0)[1] == "undo" and row(app, "#log-table", 1)[1] == "commit (undone)"
        assert "0 edits" in str(app.status.render())
        await wait_until(pilot, lambda: len(answers(seen)) > n, timeout=300, what="the answer after the undo")
        assert answers(seen)[-1].result.continuation.strip().startswith("Paris")
        assert answers(seen)[-1].result.base_continuation is None


async def test_escape_cancels_a_running_commit_and_no_weight_changes(session, monkeypatch):
    seen = []
    layer = session.layers[0]
    weight = arch.weight_param(session.lm.model, layer)
    before = weight.detach().clone()
    entries, deltas = len(session.entries()), sorted(session.path.glob("deltas/*"))
    session.add(Fact("Colosseum", "The {} is located in the city of", "Berlin"))
    # A one-fact edit can finish in well under a second: hold the real commit at its first value
    # step until Esc has been pressed, so the test does not race it.
    gate, real_commit = threading.Event(), session.commit

    def gated_commit(progress=None, should_stop=None):
        def held(p):
            progress(p)
            if p.phase == "values":
                gate.wait(timeout=300)
        return real_commit(progress=held, should_stop=should_stop)

    monkeypatch.setattr(session, "commit", gated_commit)
    app = RecordingApp(session=session)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("ctrl+s")
        await wait_until(
            pilot, lambda: any(isinstance(m, CommitProgressed) and m.progress.phase == "values" for m in seen),
            timeout=600, what="the value optimisation to start",
        )
        await pilot.press("escape")
        gate.set()
        await wait_until(pilot, lambda: any(isinstance(m, CommitCancelled) for m in seen), timeout=300, what="the cancel")
        assert not any(isinstance(m, CommitFinished) for m in seen)
        assert not app.committing and not app.progress_view.display
        assert torch.equal(weight.detach(), before)  # bit-identical
        assert len(session.entries()) == entries
        assert sorted(session.path.glob("deltas/*")) == deltas  # nothing written
        assert session.queue == (Fact("Colosseum", "The {} is located in the city of", "Berlin"),)  # still queued
        assert any("cancelled" in text for text, _ in app.notes)
        assert app.query_one("#queue-table").row_count == 1
    session.clear_queue()
