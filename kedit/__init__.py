"""kedit: interactive knowledge patching of local language models.

The top level stays light (no torch import) so ``kedit --help`` is instant; the editing engine
lives in ``kedit.editing`` and sessions in ``kedit.session``.
"""

from kedit.errors import (
    ConflictingFactsError,
    EditCancelled,
    EditError,
    InvalidFactError,
    KeditError,
    SessionError,
    UsageError,
)
from kedit.facts import Fact

__version__ = "0.1.0"

__all__ = [
    "ConflictingFactsError", "EditCancelled", "EditError", "Fact", "InvalidFactError", "KeditError",
    "Session", "SessionError", "UsageError", "__version__",
]


def __getattr__(name: str):
    # ``kedit.Session`` without importing the session package (or torch) at ``import kedit``.
    if name == "Session":
        from kedit.session import Session

        return Session
    raise AttributeError(f"module 'kedit' has no attribute {name!r}")
