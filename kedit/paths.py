"""Where kedit keeps its files (platformdirs, with environment overrides), and making a folder's
entries durable (``fsync_dir``).

* ``KEDIT_CACHE_DIR``: converted default model and cached key statistics (C0).
* ``KEDIT_SESSIONS_DIR``: where a bare session name goes (default ``./sessions``).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("KEDIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kedit", appauthor=False))


def default_model_cache() -> Path:
    """Where the embedded default model is kept once converted to safetensors."""
    return cache_dir() / "models" / "smollm2-135m-instruct"


def sessions_dir() -> Path:
    env = os.environ.get("KEDIT_SESSIONS_DIR")
    return Path(env).expanduser() if env else Path.cwd() / "sessions"


KERNEL_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


def check_new_place(path: Path, what: str, error: type[Exception]) -> None:
    """Raise ``error`` (a ``KeditError``) when a new ``what`` (a session folder, an export) cannot be
    made at ``path``: on a kernel file system, under a file, or in a folder this user cannot write.

    Checked before any work, so nothing is loaded or half-made for a place that cannot take it.
    """
    path = Path(path).absolute()
    for kfs in KERNEL_FILE_SYSTEMS:
        if path == Path(kfs) or Path(kfs) in path.parents:
            raise error(f"{path} is on a kernel file system ({kfs}): not a place for {what}",
                        hint="choose a folder under your home or working directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise error(f"{path} is a file, not a folder for {what}", hint="choose another path")
    if not existing.is_dir():
        raise error(f"{path} is under {existing}, which is a file: not a place for {what}", hint="choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"cannot create {what} at {path}: {existing} is not writable", hint="choose a folder you can write")


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (new, renamed or removed files) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
