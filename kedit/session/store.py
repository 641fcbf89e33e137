"""Delta files: the rank-E factors of one commit, as safetensors.

``deltas/NNNN.safetensors`` (NNNN = the commit's journal ``seq``) holds ``layer{l}.U`` (d_out×E)
and ``layer{l}.V`` (d_in×E) in float32 for every edited layer, with the module names in the
metadata. Written through a temp file, fsync and rename *before* the journal line that names it,
so a delta file without a journal line is an orphan from an interrupted commit (``orphans``),
removed by the next writer that holds the session's locks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from kedit.errors import JournalError
from kedit.session.journal import fsync_dir

_NAME = re.compile(r"^(\d{4,})\.safetensors$")


def delta_name(seq: int) -> str:
    return f"deltas/{seq:04d}.safetensors"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_deltas(folder: Path, seq: int, deltas) -> tuple[str, str]:
    """Write one commit's deltas; returns (relative file name, sha256)."""
    from safetensors.torch import save_file

    rel = delta_name(seq)
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, modules = {}, {}
    for d in deltas:
        tensors[f"layer{d.layer}.U"] = d.U.detach().float().contiguous().cpu()
        tensors[f"layer{d.layer}.V"] = d.V.detach().float().contiguous().cpu()
        modules[str(d.layer)] = d.module
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"kedit": "delta", "modules": json.dumps(modules), "order": json.dumps([d.layer for d in deltas])})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return rel, file_sha256(path)


def read_deltas(folder: Path, rel: str, sha256: str, seq: int):
    """The deltas of commit ``seq``, after checking the file's sha256 against the journal."""
    from safetensors import safe_open

    from kedit.editing.delta import Delta

    path = folder / rel
    if not path.exists():
        raise JournalError(
            f"commit #{seq}: its delta file {path} is missing",
            hint="restore the session's deltas/ folder, or replay with --recompute",
        )
    actual = file_sha256(path)
    if actual != sha256:
        raise JournalError(
            f"commit #{seq}: {path} has sha256 {actual[:16]}…, the journal recorded {sha256[:16]}…",
            hint="the delta file was changed or damaged; replay with --recompute to rebuild from the facts",
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        modules = json.loads(meta.get("modules", "{}"))
        order = json.loads(meta.get("order", "[]")) or sorted(int(k) for k in modules)
        return [
            Delta(layer=int(l), module=modules[str(l)], U=f.get_tensor(f"layer{l}.U"), V=f.get_tensor(f"layer{l}.V"))
            for l in order
        ]


def delta_problems(folder: Path, commits) -> list[str]:
    """What is wrong with the commits' delta files (missing, or not the recorded bytes); [] when all is well."""
    out = []
    for c in commits:
        path = folder / c.delta_file
        if not path.is_file():
            out.append(f"commit #{c.seq}: its delta file {c.delta_file} is missing")
        elif file_sha256(path) != c.delta_sha256:
            out.append(f"commit #{c.seq}: its delta file {c.delta_file} was changed (its sha256 is not the journal's)")
    return out


def orphans(folder: Path, known: set[str]) -> list[Path]:
    """Delta files (and temp files) that no journal line names: leftovers of interrupted commits."""
    d = folder / "deltas"
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        rel = f"deltas/{p.name}"
        if p.name.startswith(".") and ".tmp" in p.name:
            out.append(p)
        elif _NAME.match(p.name) and rel not in known:
            out.append(p)
    return out
