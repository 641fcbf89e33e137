"""Startup, the command palette's rare actions (method, layers, export, open another session)
and worker errors, on tiny models: a loading worker, palette screens, notifications not crashes."""

from __future__ import annotations

import json

import pytest

from kedit.tui.messages import ExportFinished, QueryAnswered, SessionReady, WorkFailed
from tui_support import RecordingApp, tiny, type_into, wait_until  # noqa: F401 (tiny: a fixture)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a Hugging Face folder (loads through the real loader)."""
    from conftest import make_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-model") / "tiny-llama"
    make_tiny_llama().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


async def palette(pilot, command: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.press(*command)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause()


async def test_startup_loads_in_a_worker_then_opens_another_session(tmp_path, tiny_model_dir):
    seen = []
    app = RecordingApp(target=str(tmp_path / "first"), model=str(tiny_model_dir))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        # the loading state: the UI is up while the model loads
        assert app.session is None and app.loading_session
        assert "loading" in str(app.status.render())
        assert app.query_one("#log-table").loading
        await wait_until(pilot, lambda: app.session is not None, timeout=120, what="the session to load")
        assert app.session.name == "first" and not app.query_one("#log-table").loading
        assert "● ready" in str(app.status.render()) and "tiny-llama" in str(app.status.render())

        await palette(pilot, "Open another")
        assert app.screen.__class__.__name__ == "AskScreen"
        await pilot.press(*str(tmp_path / "second"), "enter")
        await wait_until(pilot, lambda: sum(isinstance(m, SessionReady) for m in seen) == 2, timeout=120,
                         what="the second session")
        assert app.session.name == "second"
        assert app.session.header.model.name == str(tiny_model_dir)  # a new session starts on the current model
        assert "second" in str(app.status.render())


async def test_change_method_and_layers_from_the_palette(tiny):
    app = RecordingApp(session=tiny)
    async with app.run_test(size=(80, 24)) as pilot:
        await palette(pilot, "Change method")
        assert app.screen.__class__.__name__ == "ChooseScreen"
        await pilot.press("down", "enter")  # emmet → memit
        assert tiny.method == "memit"
        assert "memit" in str(app.status.render())

        await palette(pilot, "Change layers")
        await pilot.press("ctrl+u", *"2,3", "enter")
        assert tiny.layers == (2, 3)
        assert "L2,3" in str(app.status.render())

        await palette(pilot, "Change layers")
        await pilot.press("ctrl+u", *"99", "enter")  # the tiny model has 4 layers
        assert tiny.layers == (2, 3)
        assert any(sev == "error" for _, sev in app.notes)

        await palette(pilot, "Change method")
        await pilot.press("up", "enter")  # back to emmet (one layer: the preset's)
        assert tiny.method == "emmet" and len(tiny.layers) == 1
        assert app.is_running

        await palette(pilot, "Guard commits")
        assert tiny.settings.guard and "guarded" in str(app.status.render())
        assert json.loads((tiny.path / "session.json").read_text())["guard"] is True
        await palette(pilot, "Guard commits")
        assert not tiny.settings.guard and "guarded" not in str(app.status.render())


async def test_export_from_the_palette_and_an_export_error_is_a_notification(tiny, tmp_path):
    seen = []
    app = RecordingApp(session=tiny)
    out = tmp_path / "exported"
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await palette(pilot, "Export")
        assert app.screen.__class__.__name__ == "AskScreen"
        await pilot.press("ctrl+u", *str(out), "enter")
        await wait_until(pilot, lambda: any(isinstance(m, ExportFinished) for m in seen), timeout=120, what="the export")
        assert (out / "config.json").exists()
        assert any(f"exported to {out}" in text for text, _ in app.notes)
        assert not app.exporting

        await palette(pilot, "Export")  # the folder is not empty now: refused, reported, no crash
        await pilot.press("ctrl+u", *str(out), "enter")
        await wait_until(pilot, lambda: any(isinstance(m, WorkFailed) for m in seen), timeout=60, what="the refusal")
        assert any(sev == "error" for _, sev in app.notes)
        assert app.is_running and not app.exporting


async def test_a_new_query_cancels_the_running_one(tiny):
    from textual.worker import Worker, WorkerState

    seen = []
    app = RecordingApp(session=tiny)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        # Hold the session's model lock (as a running commit would), so the first query is still
        # waiting for the model when the second one is asked; the UI must stay responsive.
        with tiny._lock:
            await type_into(pilot, "#query-input", "Paris is")
            await pilot.press("enter", "ctrl+u", *"Rome is", "enter")
            assert app.query_one("#query-input").value == "Rome is"  # typing went on meanwhile
            await wait_until(pilot, lambda: any(isinstance(m, Worker.StateChanged) and m.state == WorkerState.CANCELLED
                                                for m in seen), timeout=30, what="the first query to be cancelled")
        await wait_until(pilot, lambda: app.query_pane.result is not None, timeout=60, what="the answer")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.query_pane.result.prompt == "Rome is"
        assert [m.result.prompt for m in seen if isinstance(m, QueryAnswered)] == ["Rome is"]  # the first never came back


async def test_a_failing_load_is_a_notification_not_a_crash(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    seen = []
    app = RecordingApp(target=str(tmp_path / "s"), model=str(empty))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: any(sev == "error" for _, sev in app.notes), timeout=60, what="the error")
        text, _ = next(n for n in app.notes if n[1] == "error")
        assert "has no config.json" in text
        assert app.is_running and app.session is None
        assert "failed" in str(app.status.render())
        await pilot.press("ctrl+s")  # still alive, and says why nothing happens
        assert ("no session is open: Ctrl+P → Open another session", "warning") in app.notes
