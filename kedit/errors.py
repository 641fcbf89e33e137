"""One exception hierarchy for kedit.

Every leaf carries a user-facing message (``str(exc)``) and an optional ``hint``; the CLI maps
them to an exit code (``exit_code``) and prints one line, and the TUI shows them as notifications.
Anything that is *not* a ``KeditError`` is a bug in kedit and gets a traceback.
"""

from __future__ import annotations


class KeditError(Exception):
    """Base of every error kedit reports to a user."""

    exit_code: int = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


# -- bad input from the user (exit 2) ---------------------------------------------------------


class UsageError(KeditError):
    """Arguments or input files that cannot be used as given."""

    exit_code = 2


class InvalidFactError(UsageError):
    """A fact that cannot be edited: no ``{}`` in the prompt, empty target, ..."""


class ConflictingFactsError(InvalidFactError):
    """Two facts of one batch share subject and prompt but want different targets."""


class FactFileError(UsageError):
    """A facts file (jsonl/csv) or records file with a bad row."""


class UnsupportedArchitectureError(UsageError):
    """The model's architecture has no adapter (we do not know where its MLP memory is)."""


class ExportError(UsageError):
    """An export that cannot be written (non-empty target folder, ...)."""


# -- environment (exit 3) -----------------------------------------------------------------------


class EnvironmentProblem(KeditError):
    """Something missing on the machine: a package, a model, a device."""

    exit_code = 3


class MissingDependencyError(EnvironmentProblem):
    """An optional package is not installed."""


class ModelNotFoundError(EnvironmentProblem):
    """The model name/path cannot be resolved to weights."""


class DeviceError(EnvironmentProblem):
    """The requested device or mode is not available here."""


# -- the edit itself could not be made (exit 4) -------------------------------------------------


class EditError(KeditError):
    """The maths refused: the model is left untouched."""

    exit_code = 4


class SingularSolveError(EditError):
    """The batch's key system is singular or produced non-finite weights."""


class HeldBackError(EditError):
    """The commit guard held back every queued fact: nothing was committed, the queue is unchanged."""


class EditCancelled(EditError):
    """The user cancelled an edit before any weight changed."""

    exit_code = 130


class PartlyCommitted(EditCancelled):
    """A guarded commit was cancelled after some of its parts were committed (they stay committed;
    the rest of the queue stays queued)."""


# -- sessions and journals (exit 5) -------------------------------------------------------------


class SessionError(KeditError):
    """A session folder that cannot be used."""

    exit_code = 5


class SessionBusyError(SessionError):
    """Another process is changing the session right now (its lock is held)."""


class JournalError(SessionError):
    """A journal that cannot be read or does not match."""


class CorruptJournalError(JournalError):
    """A journal line that is not valid (torn write, hand edit, ...)."""


class BaseModelMismatchError(JournalError):
    """A journal recorded on another base model."""


class VerificationError(JournalError):
    """Replayed weights differ from the fingerprints the journal recorded."""
