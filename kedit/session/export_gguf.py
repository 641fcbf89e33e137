"""Export: a session whose base model came from a GGUF file, as a new GGUF (llama.cpp, Ollama).

The source GGUF is rewritten with the ``gguf`` package's reader and writer: every metadata field
and every unedited tensor is copied as it is (same type, the same bytes). Each edited projection
``blk.N.ffn_down.weight`` (Llama's ``down_proj``; llama.cpp permutes only ``attn_q``/``attn_k``, so
its layout is transformers' (d_out, d_in)) is rebuilt exactly as the session does it,

    W = dequantise(source) ;  W ← W + U Vᵀ  for each active commit, in order      (float32)

and encoded in the first type of (the source's type, Q8_0, F16, F32) that keeps the edits: each
candidate is decoded back into the live model and the active facts are scored; a type is kept
only when every fact the session's own weights answer still comes first (F32 is the session's
arithmetic itself). The model card says
which type was written and what the others kept. Beside ``model.gguf`` go an Ollama
``Modelfile`` (``modelfile.py``), the model card and the journal copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kedit.errors import ExportError
from kedit.session import store
from kedit.session.journal import Journal

GGUF_NAME = "model.gguf"
LLAMA_FAMILY = ("llama",)  # llama.cpp writes Llama, Llama-2/3, Mistral and SmolLM2 as "llama"
CONVERT_HINT = ("export a checkpoint ('kedit export SESSION DIR') and convert that with llama.cpp's "
                "convert_hf_to_gguf.py DIR --outfile model.gguf (then llama-quantize it if you want); or start the "
                "session from a GGUF file (--model path/to/model.gguf)")


def tensor_name(layer: int) -> str:
    return f"blk.{layer}.ffn_down.weight"


@dataclass(frozen=True)
class GgufSource:
    path: Path
    reader: object  # gguf.GGUFReader (parsing its metadata is the slow part: done once)


@dataclass(frozen=True)
class TypeTrial:
    """What one candidate type does to the edited facts."""

    qtype: str  # "Q4_1", "Q8_0", "F16", ...
    kept: int  # facts still answered (target first under teacher forcing)
    of: int  # facts the session's own weights answer
    prob: float  # mean P(target) of the edited facts with this type
    exact_prob: float  # the same with the session's own weights


def check_gguf_base(lm, journal: Journal) -> GgufSource:
    """The GGUF the session's base model was read from, checked to be one kedit can rewrite."""
    from kedit.editing.models import gguf_source

    src = gguf_source(journal.header.model.name) or gguf_source(lm.name)
    if src is None:
        raise ExportError(f"the session's base model {journal.header.model.name!r} was not read from a GGUF file, "
                          "so there is no GGUF to rewrite", hint=CONVERT_HINT)
    return check_source(src, _edited_layers(journal))


def check_source(src: Path, layers: list[int]) -> GgufSource:
    """``src`` read as a Llama-family GGUF that holds the ``ffn_down`` of every layer in ``layers``."""
    reader = open_gguf(src)
    arch = _field(reader, "general.architecture")
    if arch not in LLAMA_FAMILY:
        raise ExportError(f"{src} is a GGUF of architecture {arch!r}; kedit rewrites Llama-family GGUFs "
                          f"(general.architecture {', '.join(map(repr, LLAMA_FAMILY))})", hint=CONVERT_HINT)
    names = {t.name for t in reader.tensors}
    missing = [tensor_name(l) for l in layers if tensor_name(l) not in names]
    if missing:
        raise ExportError(f"{src} has no tensor {missing[0]}: it is not the model this session edited", hint=CONVERT_HINT)
    return GgufSource(src, reader)


def open_gguf(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path), "r")
    except Exception as exc:  # a damaged file surfaces as ValueError, struct.error, IndexError, ...
        raise ExportError(f"{path} is not a readable GGUF file ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})",
                          hint="check the file is complete (its size, a checksum) or download it again") from None


def _field(reader, key: str):
    f = reader.get_field(key)
    return f.contents() if f is not None else None


def _edited_layers(journal: Journal) -> list[int]:
    return sorted({l for c in journal.active_commits() for l in c.layers})


def edited_weights(reader, journal: Journal) -> dict[int, torch.Tensor]:
    """Each edited layer's new ``ffn_down`` as (d_out, d_in) float32: the dequantised source plus
    every active commit's ΔW, added one commit at a time (the session's own arithmetic)."""
    from gguf.quants import dequantize

    tensors = {t.name: t for t in reader.tensors}
    out: dict[int, torch.Tensor] = {}
    for l in _edited_layers(journal):
        t = tensors[tensor_name(l)]
        out[l] = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32))  # (d_out, d_in)
    for c in journal.active_commits():
        for d in store.read_deltas(journal.folder, c.delta_file, c.delta_sha256, c.seq):
            if tuple(out[d.layer].shape) != (d.U.shape[0], d.V.shape[0]):
                raise ExportError(f"{tensor_name(d.layer)} is {tuple(out[d.layer].shape)} in the GGUF, the session's "
                                  f"update is ({d.U.shape[0]}, {d.V.shape[0]}): not the model this session edited")
            out[d.layer] = out[d.layer] + d.U.float() @ d.V.float().T  # (d_out, d_in)
    return out


def check_same_base(reader, lm, edited: set[int]) -> None:
    """Every unedited ``ffn_down`` of the GGUF must be the session's base weight (in its dtype)."""
    from gguf.quants import dequantize

    from kedit.editing import arch

    tensors = {t.name: t for t in reader.tensors}
    for l in range(arch.num_layers(lm.model)):
        w = arch.weight_param(lm.model, l)
        if l in edited or not w.is_floating_point() or tensor_name(l) not in tensors:
            continue  # quantised (--load int8/nf4) layers hold packed bytes
        t = tensors[tensor_name(l)]
        src = torch.from_numpy(np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)).to(w.dtype)
        if src.shape != w.shape or not torch.equal(src, w.detach().cpu()):
            raise ExportError(f"{tensor_name(l)} of the GGUF differs from the session's base model: the GGUF file "
                              "changed since the session started", hint=CONVERT_HINT)


def encode(w: torch.Tensor, qtype) -> np.ndarray:
    """``w`` (d_out, d_in) float32 in GGUF type ``qtype`` (the bytes the writer stores)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    a = w.numpy().astype(np.float32)
    if qtype == Q.F32:
        return a
    if qtype == Q.F16:
        return a.astype(np.float16)
    return quantize(a, qtype)


def decode(data: np.ndarray, qtype) -> torch.Tensor:
    from gguf.quants import dequantize

    return torch.from_numpy(np.ascontiguousarray(dequantize(data, qtype), dtype=np.float32))


def candidates(source_types: dict[int, object]) -> list[dict[int, object]]:
    """Type plans (layer → type), tried in order: each tensor's own source type (when the ``gguf``
    package can quantise it: k-quants and i-quants have no numpy quantiser), then Q8_0, F16, F32."""
    from gguf import GGMLQuantizationType as Q

    plans = [dict(source_types)] if all(_can_quantize(q) for q in source_types.values()) else []
    for q in (Q.Q8_0, Q.F16, Q.F32):
        plan = {l: q for l in source_types}
        if plan not in plans:
            plans.append(plan)
    return plans


def _can_quantize(qtype) -> bool:
    from gguf.quants import quantize

    try:
        quantize(np.zeros((1, 256), dtype=np.float32), qtype)
        return True
    except Exception:
        return False


def plan_name(plan: dict[int, object]) -> str:
    return "/".join(sorted({q.name for q in plan.values()}))


def _facts(journal: Journal) -> tuple[list[str], list[str]]:
    facts = [f for c in journal.active_commits() for f in c.facts]
    return [f.text for f in facts], [f.target for f in facts]


@torch.no_grad()
def trial(lm, journal: Journal, weights: dict[int, torch.Tensor], name: str, reference: list) -> TypeTrial:
    """The edited facts with ``weights`` put into the live model, against ``reference`` (their
    scores on the session's own weights, which are restored before returning)."""
    from kedit.editing import arch, score_targets

    saved = {l: arch.weight_param(lm.model, l).detach().clone() for l in weights}
    try:
        for l, w in weights.items():
            p = arch.weight_param(lm.model, l)
            p.copy_(w.to(device=p.device, dtype=p.dtype))
        got = score_targets(lm.model, lm.tokenizer, *_facts(journal))
    finally:
        for l, w in saved.items():
            arch.weight_param(lm.model, l).copy_(w)
    return TypeTrial(name, kept=sum(r.argmax and g.argmax for r, g in zip(reference, got)),
                     of=sum(r.argmax for r in reference), prob=float(np.mean([g.prob for g in got])),
                     exact_prob=float(np.mean([r.prob for r in reference])))


def choose_types(lm, journal: Journal, weights: dict[int, torch.Tensor], source_types: dict[int, object], progress=None):
    """(encoded tensors by layer as (data, type), every trial made): the first plan that keeps all
    the edits the session's weights answer (F32 always does: it is the session's arithmetic)."""
    from kedit.editing import score_targets
    from kedit.session.export import _report

    reference = score_targets(lm.model, lm.tokenizer, *_facts(journal))
    trials: list[TypeTrial] = []
    for plan in candidates(source_types):
        _report(progress, len(trials), 4, f"trying {plan_name(plan)} for the edited tensors")
        data = {l: encode(w, plan[l]) for l, w in weights.items()}
        trials.append(trial(lm, journal, {l: decode(d, plan[l]) for l, d in data.items()}, plan_name(plan), reference))
        if trials[-1].kept == trials[-1].of:
            break
    return {l: (d, plan[l]) for l, d in data.items()}, trials


def write_gguf_file(reader, out: Path, replaced: dict[str, tuple[np.ndarray, object]]) -> None:
    """Copy ``reader``'s metadata and tensors to ``out``, with the tensors named in ``replaced``
    (name → (data, type)) in their new type."""
    from gguf import GGUFValueType, GGUFWriter

    writer = GGUFWriter(str(out), _field(reader, "general.architecture"), endianess=reader.endianess)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment)
    for f in reader.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue  # the writer adds these itself
        vtype = f.types[0]
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    data = [(t.name, *replaced.get(t.name, (t.data, t.tensor_type))) for t in reader.tensors]
    for name, d, qtype in data:
        writer.add_tensor_info(name, d.shape, d.dtype, d.nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, d, _ in data:
        writer.write_tensor_data(d, tensor_endianess=reader.endianess)
    writer.close()


def write_gguf(lm, journal: Journal, source: GgufSource, tmp: Path, progress: Callable | None = None) -> None:
    """Fill ``tmp`` with ``model.gguf``, the ``Modelfile``, the model card and the journal copy."""
    from kedit.session.export import _report, copy_journal
    from kedit.session.modelfile import modelfile

    reader = source.reader
    layers = _edited_layers(journal)
    check_same_base(reader, lm, set(layers))
    weights = edited_weights(reader, journal)
    types = {t.name: t.tensor_type for t in reader.tensors}
    source_types = {l: types[tensor_name(l)] for l in layers}
    data, trials = choose_types(lm, journal, weights, source_types, progress) if layers else ({}, [])
    replaced = {tensor_name(l): d for l, d in data.items()}
    _report(progress, 3, 4, "writing the GGUF")
    write_gguf_file(reader, tmp / GGUF_NAME, replaced)
    (tmp / "Modelfile").write_text(modelfile(_field(reader, "tokenizer.chat_template")), encoding="utf-8")
    copy_journal(journal, tmp)
    (tmp / "README.md").write_text(_card(journal, lm, source.path, plan_name(source_types), trials), encoding="utf-8")
    _report(progress, 4, 4, "GGUF written")


def _card(journal: Journal, lm, src: Path, source_type: str, trials: list[TypeTrial]) -> str:
    from kedit import __version__
    from kedit.session.export import model_card

    layers = _edited_layers(journal)
    names = ", ".join(f"`{tensor_name(l)}`" for l in layers) or "none"
    intro = (
        f"This GGUF is **{src.name}** with facts patched into its MLP weights by [kedit](https://pypi.org/project/kedit/) "
        f"{__version__} (locate-and-edit: EMMET/MEMIT/ROME). Metadata and every tensor except {names} are the source "
        "file's, byte for byte."
    )
    lines = ["## Edited tensors", ""]
    if trials:
        chosen = trials[-1]
        lines.append(f"The edited tensors are stored as **{chosen.qtype}** (the source stores them as {source_type}).")
        for t in trials:
            lines.append(f"- {t.qtype}: {t.kept} of {t.of} edited facts still answered, mean P(target) {t.prob:.3f} "
                         f"(the session's weights: {t.exact_prob:.3f})"
                         + (" (chosen)" if t is chosen else " (would lose edits: not used)"))
        lines.append("")
    lines += [
        "## Running it",
        "",
        "```bash",
        "llama-cli -m model.gguf -p 'The Eiffel Tower is located in the city of' -n 8      # llama.cpp",
        "ollama create kedit-edit -f Modelfile && ollama run kedit-edit                 # Ollama",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("THIS_FOLDER", gguf_file="model.gguf")',
        'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER", gguf_file="model.gguf")',
        "```",
        "",
    ]
    return model_card(journal, lm, library="gguf", intro=intro, sections=tuple(lines))
