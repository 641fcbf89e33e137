"""The query pane's chat mode (Ctrl+T) on a tiny-model session: the prompt goes through the chat
template, the pane says so, and toggling back asks plain text again."""

from __future__ import annotations

from kedit.tui.messages import QueryAnswered
from tui_support import RecordingApp, tiny, type_into, wait_until  # noqa: F401


async def test_ctrl_t_asks_the_prompt_as_a_chat_turn(tiny):  # noqa: F811
    seen = []
    app = RecordingApp(session=tiny)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        answers = lambda: [m.result for m in seen if isinstance(m, QueryAnswered)]  # noqa: E731
        await type_into(pilot, "#query-input", "The capital of Japan is")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(answers()) == 1, what="the plain answer")
        assert answers()[0].chat is False and app.query_pane.border_title == "Query"

        await pilot.press("ctrl+t")  # chat mode re-asks the last prompt as a chat turn
        await wait_until(pilot, lambda: len(answers()) == 2, what="the chat answer")
        assert answers()[1].chat is True and answers()[1].prompt == "The capital of Japan is"
        assert app.query_pane.border_title == "Query · chat"
        assert "assistant" in str(app.query_pane.query_one("#answer").render())
        assert ("chat mode: prompts are chat turns", "information") in app.notes

        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: len(answers()) == 3, what="the plain answer again")
        assert answers()[2].chat is False and app.query_pane.border_title == "Query"
