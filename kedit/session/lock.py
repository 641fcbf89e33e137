"""The locks of a session folder: one process changes a session at a time.

Two locks, both ``filelock`` locks (``flock(2)`` on Linux and macOS) on files in the folder:

* ``.journal.lock`` — held by whatever writes the journal or the deltas: ``commit`` (for the whole
  edit, so a second committer is refused at once instead of computing an edit it could not
  record), ``undo`` and ``repair``.
* ``.folder.lock`` — held for the milliseconds a change of ``queue.json`` or ``session.json``, the
  creation of the folder or of the journal header, or the writing of a commit's files takes.

A process always takes the journal lock before the folder lock, never the other way, so the two
cannot deadlock. Beside each lock a small JSON file (``.journal.lock.holder``) says who holds it:
pid, host, command line, what it is doing and since when; a process that cannot get the lock
names the holder in its error (``SessionBusyError``, exit code 5). The operating system releases
a lock when its process dies, even by SIGKILL, so a crash never leaves a session locked; a stale
holder file is simply overwritten.

A lock is held per operation, never for the life of a process: ``kedit add`` from another terminal
works while a TUI has the session open. Inside one process the same lock can be taken again by
the thread that holds it (a commit changes the queue under its own folder lock).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kedit.errors import SessionBusyError

JOURNAL_LOCK = ".journal.lock"
FOLDER_LOCK = ".folder.lock"
FOLDER_PATIENCE = 60.0  # seconds a queue/settings change waits by default (each holder needs milliseconds)

_held: dict[str, tuple[int, int]] = {}  # lock path -> (owning thread id, depth) in this process
_held_guard = threading.Lock()


def command_line() -> str:
    """How this process was started, as a person would type it."""
    argv = list(sys.argv)
    if not argv or argv[0] in ("-c", "-m", "") or Path(argv[0]).name in ("kedit", "__main__.py"):
        return " ".join(["kedit", *argv[1:]])
    return " ".join([Path(argv[0]).name, *argv[1:]])


def holder_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def read_holder(lock_path: Path) -> dict | None:
    try:
        d = json.loads(holder_file(lock_path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def describe_holder(lock_path: Path) -> str:
    h = read_holder(lock_path)
    if h is None:
        return "another kedit process"
    since = h.get("since", 0.0)
    ago = max(0.0, time.time() - since) if isinstance(since, (int, float)) else 0.0
    when = time.strftime("%H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    host = f" on {h['host']}" if h.get("host") and h.get("host") != socket.gethostname() else ""
    return (f"pid {h.get('pid', '?')}{host} ({h.get('command', '?')}), {h.get('action', 'busy')} "
            f"since {when} ({ago:.0f}s)")


@contextmanager
def hold(lock_path: Path, action: str, wait: float | None, default_wait: float) -> Iterator[None]:
    """Hold the lock at ``lock_path`` for the ``with`` block; wait up to ``wait`` seconds
    (``None``: ``default_wait``), then raise ``SessionBusyError`` naming the holder."""
    key = str(lock_path)
    me = threading.get_ident()
    with _held_guard:
        owner = _held.get(key)
        if owner is not None and owner[0] == me:  # the same thread again: already ours
            _held[key] = (me, owner[1] + 1)
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _held_guard:
                tid, depth = _held[key]
                _held[key] = (tid, depth - 1)
        return

    from filelock import FileLock, Timeout

    patience = default_wait if wait is None else max(0.0, float(wait))
    lock = FileLock(str(lock_path), thread_local=False, poll_interval=0.01)
    try:
        lock.acquire(timeout=patience)
    except Timeout:
        what = "the journal" if lock_path.name == JOURNAL_LOCK else "the session folder"
        waited = f" (waited {patience:g}s)" if patience else ""
        raise SessionBusyError(
            f"session {lock_path.parent} is busy{waited}: {what} is locked by {describe_holder(lock_path)}",
            hint="try again when it is done, or pass --wait SECONDS to wait for it",
        ) from None
    try:
        with _held_guard:
            _held[key] = (me, 1)
        _write_holder(lock_path, action)
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        try:
            holder_file(lock_path).unlink()
        except OSError:
            pass
        lock.release()


def _write_holder(lock_path: Path, action: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(), "action": action,
            "since": time.time()}
    tmp = holder_file(lock_path).with_name(holder_file(lock_path).name + f".{os.getpid()}")
    try:
        tmp.write_text(json.dumps(info), "utf-8")
        os.replace(tmp, holder_file(lock_path))
    except OSError:  # the holder note is a courtesy; the lock itself is what matters
        pass
