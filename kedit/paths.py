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


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (new, renamed or removed files) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
