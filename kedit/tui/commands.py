"""The command palette (Ctrl+P) for rare actions: export, method, layers, open another session,
load facts, clear the queue, the commit guard, undo, help."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, app action)
COMMANDS = (
    ("Export edited model", "write the edited model as a Hugging Face checkpoint", "export"),
    ("Change method", "emmet, memit or rome for the next commits", "change_method"),
    ("Change layers", "the layer(s) the next commits edit", "change_layers"),
    ("Open another session", "switch to another session (and its model)", "open_session"),
    ("Load facts from file", "queue the facts of a jsonl/csv file", "load_facts"),
    ("Clear queue", "drop every queued fact", "clear_queue"),
    ("Guard commits on/off", "take back a commit that would raise perplexity too much; commit its facts in halves",
     "toggle_guard"),
    ("Commit queued facts", "edit the model with the queued facts as one batch", "commit"),
    ("Undo last commit", "restore the weights before the last active commit", "undo"),
    ("Help", "keys and how to use kedit", "help"),
)


class KeditCommands(Provider):
    async def discover(self) -> Hits:
        for title, help_text, action in COMMANDS:
            yield DiscoveryHit(title, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self.app.run_action, action), help=help_text)
