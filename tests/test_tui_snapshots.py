"""SVG snapshots of the TUI at fixed sizes (pytest-textual-snapshot), on a tiny-model session.

Only deterministic content is drawn: no timings, no model probabilities of a random model. The
query and progress snapshots feed the real widgets fixed values of the session's own types.
"""

from __future__ import annotations

import pytest

from kedit.editing import Progress, TokenProb
from kedit.facts import Fact
from tui_support import RecordingApp, tiny, type_into  # noqa: F401 (tiny: a fixture)


@pytest.fixture
def session(tiny):
    tiny.clear_queue()
    tiny.add_many([
        Fact("Eiffel Tower", "The {} is located in the city of", "London"),
        Fact("Colosseum", "The {} is in", "Berlin"),
    ])
    yield tiny
    tiny.clear_queue()


async def invalid_fact(pilot):
    await type_into(pilot, "#subject", "Louvre")
    await type_into(pilot, "#prompt", "The museum is in")
    await type_into(pilot, "#target", "Rome")


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_main_screen_with_queue_and_invalid_fact(snap_compare, session, size):
    assert snap_compare(RecordingApp(session=session), terminal_size=size, run_before=invalid_fact)


def test_help_screen(snap_compare, session):
    assert snap_compare(RecordingApp(session=session), terminal_size=(80, 24), press=["f1"])


def test_answer_before_and_after_and_commit_progress(snap_compare, session):
    from kedit.session import QueryResult

    result = QueryResult(
        prompt="The Eiffel Tower is located in the city of",
        continuation=" London, England.",
        top=[TokenProb(" London", 0.76), TokenProb(" Paris", 0.06), TokenProb(" New", 0.05)],
        base_continuation=" Paris, France.",
        base_top=[TokenProb(" Paris", 0.69), TokenProb(" Mont", 0.03), TokenProb(" Mar", 0.03)],
    )

    async def show(pilot):
        app = pilot.app
        app.query_one("#query-input").value = result.prompt
        app.query_pane.show_result(result, seconds=0.5)
        app.progress_view.start(2)
        for p in (Progress("statistics", 30_000, 30_000), Progress("values", 7, 25, loss=1.234, detail="1/2 facts done")):
            app.progress_view.report(p)
        await pilot.pause()

    assert snap_compare(RecordingApp(session=session), terminal_size=(80, 24), run_before=show)
