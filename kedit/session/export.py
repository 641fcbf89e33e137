"""Export: the edited model as an ordinary Hugging Face checkpoint.

``OUT_DIR`` gets safetensors weights, ``config.json``, the tokenizer and generation config of the
base model, a model card (``README.md``) listing every active edit, and a copy of the journal
with its delta files (so ``kedit replay OUT_DIR/journal.jsonl`` works too). The weights are the
session's own tensors in the session's dtype, so ``AutoModelForCausalLM.from_pretrained(OUT_DIR)``
answers like the session.

Everything is written into a temp folder next to ``OUT_DIR`` and renamed at the end: a failed
export leaves nothing behind. When the base checkpoint is a safetensors folder, its shards are
reused (``Checkpoint.rewrite``): a shard without edited tensors, already in the session's dtype,
is hard-linked (or copied), and only the shards that hold edited tensors are rewritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from kedit import __version__
from kedit.editing.checkpoint import check_target, find_checkpoint, staged_folder
from kedit.errors import ExportError
from kedit.session.journal import CommitEntry, Journal

__all__ = ["FORMATS", "check_target", "copy_journal", "export", "export_checkpoint", "model_card", "write_atomically"]


FORMATS = ("checkpoint", "peft", "gguf")


def export(lm, journal: Journal, out_dir: Path, format: str = "checkpoint", progress: Callable | None = None) -> Path:
    """Write the session (``lm`` edited by ``journal``'s active commits) to ``out_dir`` as ``format``:
    a Hugging Face checkpoint, a LoRA adapter (``export_peft``) or a GGUF file (``export_gguf``)."""
    if format == "peft":
        from kedit.session.export_peft import write_adapter

        return write_atomically(out_dir, lambda tmp: write_adapter(lm, journal, tmp, progress))
    if format == "gguf":
        from kedit.session.export_gguf import check_gguf_base, write_gguf

        source = check_gguf_base(lm, journal)  # before any folder is made
        return write_atomically(out_dir, lambda tmp: write_gguf(lm, journal, source, tmp, progress))
    if format != "checkpoint":
        raise ExportError(f"unknown export format {format!r}", hint=f"choose one of {', '.join(FORMATS)}")
    return export_checkpoint(lm, journal, out_dir, progress)


def export_checkpoint(lm, journal: Journal, out_dir: Path, progress: Callable | None = None) -> Path:
    """Write the current weights of ``lm`` (edited by ``journal``'s active commits) to ``out_dir``."""
    return write_atomically(out_dir, lambda tmp: _write(lm, journal, tmp, progress))


def write_atomically(out_dir: Path, fill: Callable[[Path], None]) -> Path:
    """``fill`` a temp folder next to ``out_dir``, then rename it there: all of an export or nothing."""
    out_dir = Path(out_dir).expanduser().resolve()
    with staged_folder(out_dir) as tmp:
        fill(tmp)
    return out_dir


def _report(progress, done: int, total: int, detail: str) -> None:
    if progress is not None:
        from kedit.editing import Progress

        progress(Progress("export", done, total, detail=detail))


def _write(lm, journal: Journal, tmp: Path, progress) -> None:
    from kedit.editing import arch

    model = lm.model
    active = journal.active_commits()
    edited = {}  # checkpoint key -> live tensor
    for layer in sorted({l for c in active for l in c.layers}):
        edited[f"{arch.mlp_out_name(model, layer)}.weight"] = arch.weight_param(model, layer)
    if not _reuse_shards(lm, tmp, edited, progress):
        from kedit.editing.quant import export_full_precision, quant_mode_of

        if quant_mode_of(model) != "none":
            # a --load int8/nf4 model must not be saved as it is: unchanged tensors come from the base
            # checkpoint files, edited ones from the session (full precision either way)
            _report(progress, 0, 1, "writing base tensors with the edited ones")
            export_full_precision(lm.path, edited, tmp, base_model_prefix=getattr(model, "base_model_prefix", ""))
            _report(progress, 1, 1, "weights written")
        else:
            _report(progress, 0, 1, "saving weights")
            model.save_pretrained(tmp, safe_serialization=True)
            lm.tokenizer.save_pretrained(tmp)
            _report(progress, 1, 1, "weights saved")
    elif not (tmp / "tokenizer_config.json").exists():
        lm.tokenizer.save_pretrained(tmp)
    _set_config_dtype(tmp / "config.json", lm.dtype)
    copy_journal(journal, tmp)
    (tmp / "README.md").write_text(model_card(journal, lm), encoding="utf-8")


def _reuse_shards(lm, tmp: Path, edited: dict, progress) -> bool:
    """Rewrite the base checkpoint's shards with the edited tensors; False when the base is not a
    safetensors folder with those tensors (then the model is saved afresh)."""
    ck = find_checkpoint(lm.path)
    prefix = getattr(lm.model, "base_model_prefix", "")
    if ck is None or any(ck.key_for(name, prefix) is None for name in edited):
        return False
    ck.rewrite(tmp, edited, dtype=lm.dtype, prefix=prefix, progress=progress)
    for f in ck.other_files():
        shutil.copy2(f, tmp / f.name)
    return True


def _set_config_dtype(path: Path, dtype) -> None:
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    for k in ("dtype", "torch_dtype"):
        if k in cfg or k == "dtype":
            cfg[k] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def copy_journal(journal: Journal, tmp: Path) -> None:
    shutil.copy2(journal.path, tmp / "journal.jsonl")
    for c in journal.commits():
        src = journal.folder / c.delta_file
        if src.exists():
            (tmp / c.delta_file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / c.delta_file)


def _fact_rows(c: CommitEntry) -> list[str]:
    rows = []
    for f, s in zip(c.facts, c.efficacy):
        rows.append(
            f"| {c.seq} | {_md(f.subject)} | {_md(f.text)} | {_md(f.target)} | {c.method} | "
            f"{','.join(map(str, c.layers))} | {s.prob_before:.3f} → {s.prob:.3f}{' ✓' if s.argmax else ''} |"
        )
    return rows


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def model_card(journal: Journal, lm, library: str = "transformers", intro: str | None = None,
               sections: tuple[str, ...] = ()) -> str:
    """The export's README.md: the base model, every active edit, and how to rebuild the weights.
    An adapter or GGUF export names its own ``library``, first paragraph (``intro``) and extra
    Markdown ``sections`` (how to load and serve it)."""
    h = journal.header
    active = journal.active_commits()
    n_facts = sum(len(c.facts) for c in active)
    lines = [
        "---",
        f"library_name: {library}",
        "tags: [kedit, model-editing, " + ", ".join(sorted({c.method for c in active}) or [h.method]) + "]",
        "---",
        "",
        f"# {h.model.name} with {n_facts} edited fact{'s' if n_facts != 1 else ''}",
        "",
        intro or (
            f"This checkpoint is **{h.model.name}** (`{h.model.path}`) with facts patched into its MLP weights by "
            f"[kedit](https://pypi.org/project/kedit/) {__version__} (locate-and-edit: EMMET/MEMIT/ROME). Only the MLP "
            "output projections of the layers listed below differ from the base model."),
        "",
        f"- base model fingerprint: `{h.model.fingerprint}`",
        f"- dtype: `{h.dtype}`, recorded on: `{h.device}`",
        f"- context prefixes seed: {h.seed}; statistics corpus: `{h.corpus}` (`{h.corpus_fingerprint}`)",
        f"- weights fingerprint after the edits: `{journal.fingerprint}`",
        "",
        "## Edits",
        "",
    ]
    if active:
        lines += [
            "| commit | subject | prompt | new target | method | layers | P(target) before → after |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in active:
            lines += _fact_rows(c)
    else:
        lines.append("No active edit: the weights are the base model's.")
    undone = [c for c in journal.commits() if c not in active]
    lines += [
        "",
        f"{len(journal.commits())} commit(s) in the journal, {len(undone)} undone. `journal.jsonl` and `deltas/` are the "
        "session's journal: `kedit replay journal.jsonl --verify` rebuilds these weights from the base model.",
        "",
        *sections,
        "## Caveats",
        "",
        "Edited facts hold for the prompts above and their paraphrases to a degree; related facts and unrelated "
        "behaviour may shift. Evaluate before relying on the model.",
        "",
    ]
    return "\n".join(lines)
