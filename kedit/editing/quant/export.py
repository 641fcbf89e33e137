"""Full-precision export of a quantised-loaded model: the base checkpoint with the edits.

A ``--load int8|nf4`` model must never be saved as it is; its export is the base checkpoint's
tensors in their own dtypes, with the edited projections replaced.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from kedit.editing.checkpoint import open_checkpoint, staged_folder
from kedit.errors import ExportError


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    replaced: tuple[str, ...]  # checkpoint keys written from the session
    files: tuple[str, ...]


def export_full_precision(base_path: str, edited: dict[str, torch.Tensor], out_dir: str | Path,
                          base_model_prefix: str = "model") -> ExportReport:
    """Write a full-precision checkpoint: the base files, with ``edited`` tensors replaced.

    ``edited`` maps parameter names (``model.layers.3.mlp.down_proj.weight``) to tensors in the
    checkpoint's own layout; each is cast to the dtype the checkpoint stores that tensor in. Every
    other tensor is copied from the base checkpoint unchanged (untouched shards linked, the index
    kept), and so are config, tokenizer and generation files (``Checkpoint.rewrite`` in a
    ``staged_folder``: a failed export leaves nothing half-written).
    """
    out = Path(out_dir).expanduser()
    ck = open_checkpoint(base_path)
    ck.resolve(edited, base_model_prefix)  # every edited tensor has its place, or nothing is written
    config = ck.folder / "config.json"
    if config.exists() and "quantization_config" in json.loads(config.read_text()):
        raise ExportError(f"the base checkpoint {ck.folder} is itself quantised; cannot export full precision")
    with staged_folder(out) as tmp:
        for f in ck.other_files():
            shutil.copy2(f, tmp / f.name)
        rep = ck.rewrite(tmp, edited, dtype=None, prefix=base_model_prefix)
    return ExportReport(folder=out, replaced=rep.replaced, files=tuple(sorted(ck.shards)))
