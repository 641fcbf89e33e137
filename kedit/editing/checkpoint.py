"""Safetensors checkpoints on disk: reading their shards, and writing a copy with tensors replaced.

This is the one place kedit rewrites a checkpoint's shards. ``Checkpoint.rewrite`` writes the
base checkpoint's weights into a folder with some tensors replaced (the edited projections):
a shard without replaced tensors is hard-linked (or copied) byte for byte, only the shards that
hold replaced tensors (or that a dtype change touches) are written again, and the shard index
follows. ``Checkpoint.tensors`` yields the same tensors one by one, for writers of other formats.
``staged_folder`` is how every export writes a folder: into a temporary folder next to it,
renamed at the end, so a failed export leaves nothing behind.

Tensor names: callers pass parameter names as the model has them
(``model.layers.3.mlp.down_proj.weight``); a checkpoint saved without the base model's prefix
(``layers.3.mlp.down_proj.weight``) is matched too, and its own keys are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from kedit.errors import ExportError
from kedit.paths import fsync_dir

INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
NOT_COPIED = {INDEX, "pytorch_model.bin.index.json", "README.md", ".gitattributes"}
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
_FLOAT_NAMES = {"F32", "BF16", "F16", "F64", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class RewriteReport:
    replaced: tuple[str, ...]  # checkpoint keys written from the replacements
    rewritten: tuple[str, ...]  # shard files written again
    linked: tuple[str, ...]  # shard files reused byte for byte


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    shards: dict[str, tuple[str, ...]]  # shard file -> its tensor keys
    index: dict | None  # the parsed shard index of a sharded checkpoint

    @property
    def keys(self) -> set[str]:
        return {k for ks in self.shards.values() for k in ks}

    def key_for(self, name: str, prefix: str = "") -> str | None:
        """The checkpoint key of parameter ``name`` (with or without the base model ``prefix``)."""
        keys = self.keys
        if name in keys:
            return name
        short = name.removeprefix(prefix + ".") if prefix else name
        return short if short in keys else None

    def resolve(self, names, prefix: str = "") -> dict[str, str]:
        """{parameter name: checkpoint key}; an ``ExportError`` names every parameter it lacks."""
        found = {n: self.key_for(n, prefix) for n in names}
        missing = sorted(n for n, k in found.items() if k is None)
        if missing:
            raise ExportError(f"the base checkpoint {self.folder} has no tensor {', '.join(missing)}")
        return found  # type: ignore[return-value]

    def read(self, names, prefix: str = "") -> dict[str, torch.Tensor]:
        """{parameter name: its stored tensor} for ``names`` (CPU, stored dtype)."""
        from safetensors import safe_open

        keys = self.resolve(names, prefix)
        out: dict[str, torch.Tensor] = {}
        for f, ks in sorted(self.shards.items()):
            wanted = [n for n, k in keys.items() if k in set(ks)]
            if wanted:
                with safe_open(str(self.folder / f), framework="pt") as sf:
                    out.update({n: sf.get_tensor(keys[n]) for n in wanted})
        return out

    def other_files(self) -> list[Path]:
        """Config, tokenizer and generation files: what an export copies beside the weights."""
        return [f for f in sorted(self.folder.iterdir())
                if f.is_file() and f.name not in NOT_COPIED and not f.name.startswith(".")
                and not f.name.endswith(WEIGHT_SUFFIXES)]

    def tensors(self, replace: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        """(checkpoint key, CPU tensor) for every tensor, ``replace``'s instead of the stored ones.

        ``dtype``: cast every floating tensor to it; ``None`` keeps the stored dtypes (a
        replacement takes the dtype of the tensor it replaces).
        """
        from safetensors import safe_open

        by_key = _by_key(self, replace or {}, prefix)

        for f, ks in sorted(self.shards.items()):
            with safe_open(str(self.folder / f), framework="pt") as sf:
                for k in ks:
                    yield k, _cast(sf.get_tensor(k), by_key.get(k), dtype, k)

    def rewrite(self, out: Path, replace: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
                prefix: str = "", progress: Callable | None = None) -> RewriteReport:
        """Write the weights (shards and index) into the existing folder ``out``; see the module doc."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        by_key = _by_key(self, replace, prefix)
        want = _DTYPE_NAMES.get(dtype) if dtype is not None else None
        rewritten, linked, sizes = [], [], {}
        for i, (f, ks) in enumerate(sorted(self.shards.items())):
            with safe_open(str(self.folder / f), framework="pt") as sf:
                stored = {k: sf.get_slice(k).get_dtype() for k in ks}
                recast = want is not None and any(d in _FLOAT_NAMES and d != want for d in stored.values())
                if not recast and not any(k in by_key for k in ks):
                    _link_or_copy(self.folder / f, out / f)
                    linked.append(f)
                    sizes[f] = _stored_bytes(sf, ks)
                    _report(progress, i + 1, len(self.shards), f"{f}: unchanged, linked")
                    continue
                meta = {"format": "pt", **(sf.metadata() or {})}
                tensors = {k: _cast(sf.get_tensor(k), by_key.get(k), dtype, k) for k in ks}
            save_file(tensors, str(out / f), metadata=meta)
            rewritten.append(f)
            sizes[f] = sum(t.numel() * t.element_size() for t in tensors.values())
            _report(progress, i + 1, len(self.shards), f"{f}: rewritten")
        if self.index is not None:
            index = json.loads(json.dumps(self.index))
            index.setdefault("metadata", {})["total_size"] = sum(sizes.values())
            (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return RewriteReport(replaced=tuple(sorted(by_key)), rewritten=tuple(rewritten), linked=tuple(linked))


def find_checkpoint(path: str | Path) -> Checkpoint | None:
    """The safetensors checkpoint in folder ``path``, or ``None`` when there is none."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / INDEX).exists():
        index = json.loads((folder / INDEX).read_text())
        shards: dict[str, list[str]] = {}
        for key, f in index["weight_map"].items():
            shards.setdefault(f, []).append(key)
        return Checkpoint(folder, {f: tuple(ks) for f, ks in shards.items()}, index)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shards = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            shards[f.name] = list(sf.keys())
    return Checkpoint(folder, {f: tuple(ks) for f, ks in shards.items()}, None)


def open_checkpoint(path: str) -> Checkpoint:
    """The safetensors checkpoint of a folder or a locally cached hub id; ``ExportError`` if none."""
    folder = local_folder(path)
    ck = find_checkpoint(folder)
    if ck is None:
        raise ExportError(f"{folder} has no safetensors weights",
                          hint="convert the base checkpoint to safetensors (save_pretrained) first")
    return ck


def check_target(out: Path) -> None:
    """Refuse an export folder that exists and is not empty, or a place no folder can be made
    (a kernel file system, under a file, not writable): checked before any model loads."""
    from kedit.paths import check_new_place

    check_new_place(out, "an export", ExportError)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"{out} exists and is not an empty folder; not writing into it",
            hint="choose a new folder (kedit never mixes an export with other files)",
        )


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out`` (fsynced) when the block succeeds."""
    out = Path(out).expanduser().resolve()
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.kedit-export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        check_target(out)  # nobody wrote there meanwhile
        if out.exists():
            out.rmdir()  # empty: replaced by the finished export
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.stat().st_nlink > 1:
                continue  # a hard link to the base checkpoint: already durable
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def local_folder(path: str) -> Path:
    """The folder of a model: ``path`` itself, or the local snapshot of a hub id."""
    p = Path(path)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception as exc:
        raise ExportError(f"cannot find the files of base model {path!r} locally: {exc}") from None


def _by_key(ck: Checkpoint, replace: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    keys = ck.resolve(replace, prefix)
    return {keys[n]: t for n, t in replace.items()}


def _cast(stored: torch.Tensor, new: torch.Tensor | None, dtype: torch.dtype | None, key: str) -> torch.Tensor:
    if new is not None:
        if tuple(new.shape) != tuple(stored.shape):
            raise ExportError(f"{key}: session tensor {tuple(new.shape)} vs checkpoint {tuple(stored.shape)}")
        # a copy of its own: the live parameter keeps changing, the file must not share its memory
        return new.detach().to(device="cpu", dtype=dtype or stored.dtype).contiguous().clone()
    if dtype is not None and stored.is_floating_point() and stored.dtype != dtype:
        return stored.to(dtype)
    return stored


def _stored_bytes(sf, keys) -> int:
    sizes = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
    total = 0
    for k in keys:
        s = sf.get_slice(k)
        n = 1
        for d in s.get_shape():
            n *= d
        total += n * sizes.get(s.get_dtype(), 1)
    return total


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _report(progress, done: int, total: int, detail: str) -> None:
    if progress is not None:
        from kedit.editing.edit import Progress

        progress(Progress("export", done, total, detail=detail))
