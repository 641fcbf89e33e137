"""Ring 3: the Textual face of kedit (``kedit tui``), a thin shell over ``kedit.session``.

Nothing here computes an edit or keeps facts of its own: the panes show the session's queue,
journal and answers, and long work (loading, queries, commits, undo, export) runs in thread
workers that post the dataclass messages of ``kedit.tui.messages`` back to the app.
"""

from kedit.tui.app import KeditApp

__all__ = ["KeditApp"]
