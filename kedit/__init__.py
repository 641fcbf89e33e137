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
    "SessionError", "UsageError", "__version__",
]
