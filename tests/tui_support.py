"""Helpers for the TUI tests: tiny-model sessions, typing, waiting, and an app that records
its notifications (so tests can assert on what the person was told)."""

from __future__ import annotations

import time

import pytest

from kedit.tui.app import KeditApp


class RecordingApp(KeditApp):
    """The real app; every ``notify`` is also kept in ``notes`` as (message, severity)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message, *, title="", severity="information", timeout=None, markup=True) -> None:
        self.notes.append((str(message), severity))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)


def tiny_session(folder, tokenizer, seed: int = 0):
    """A session on a tiny random Llama with the SmolLM2 tokenizer (loads in well under a second)."""
    import torch

    from conftest import make_tiny_llama
    from kedit.editing import LoadedModel
    from kedit.session import Session

    model = make_tiny_llama(seed=seed)
    lm = LoadedModel(model, tokenizer, "tiny-llama", "tiny-llama", torch.device("cpu"), torch.float32)
    return Session.attach(folder, lm)


_SHARED: dict = {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """The tiny-model session of this test run (import this fixture into a module): made once,
    since sampling its context prefixes is the slow part; each module gets it with an empty
    queue, the default method and no guard."""
    if "tiny" not in _SHARED:
        _SHARED["tiny"] = tiny_session(tmp_path_factory.mktemp("tui") / "tiny", tokenizer)
    s = _SHARED["tiny"]
    s.clear_queue()
    s.set_method("emmet")
    s.set_guard(False)
    return s


async def type_into(pilot, selector: str, text: str) -> None:
    """Focus the input ``selector`` and type ``text`` key by key."""
    pilot.app.query_one(selector).focus()
    await pilot.pause()
    await pilot.press(*text)


async def wait_until(pilot, predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Let the app run until ``predicate()`` holds (workers post their messages meanwhile)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            notes = getattr(pilot.app, "notes", [])
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; notifications: {notes}")
        await pilot.pause(0.05)
