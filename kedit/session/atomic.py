"""Atomic file writes: a temp file beside the target, fsync, rename, fsync of the folder.

A crash leaves the old file or the new one, never half of one; the temp file
(``.NAME.tmpPID``) it may leave is removed by the next writer that holds the session's lock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kedit.session.journal import fsync_dir


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
