"""Export: a session's active commits as a LoRA adapter in PEFT's own layout.

A commit of E facts on one layer is ΔW = U Vᵀ (U: d_out×E, V: d_in×E, ``kedit.editing.delta``),
which is exactly a LoRA update ``lora_B @ lora_A`` with ``lora_B = U``, ``lora_A = Vᵀ`` and scale
``lora_alpha / r = 1``. Several commits on a layer add up, so their factors are concatenated:

    ΔW_layer = [U₁ U₂ …] [V₁ V₂ …]ᵀ          rank r_layer = E₁ + E₂ + …

``OUT_DIR`` gets ``adapter_config.json`` and ``adapter_model.safetensors`` (keys
``base_model.model.<module>.lora_A.weight`` (r, d_in) and ``….lora_B.weight`` (d_out, r), float32),
the model card and the journal copy. ``target_modules`` names only the edited projections; the
config's ``r`` and ``lora_alpha`` are the largest layer rank and ``rank_pattern``/``alpha_pattern``
give every other layer its own rank with alpha equal to it, so every layer's scale is 1 both in
PEFT (per-layer patterns) and in vLLM (which reads the global ``lora_alpha / r`` and each layer's
rank from the tensor shapes). GPT-2's ``Conv1D`` stores its weight transposed: the factors are the
same and ``fan_in_fan_out`` tells PEFT so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kedit.errors import ExportError
from kedit.session import store
from kedit.session.journal import Journal

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


@dataclass(frozen=True)
class LoraFactors:
    module: str  # e.g. "model.layers.1.mlp.down_proj"
    A: torch.Tensor  # (r, d_in) float32: Vᵀ of every commit on this layer, stacked
    B: torch.Tensor  # (d_out, r) float32: U of every commit on this layer, side by side

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def lora_factors(journal: Journal) -> list[LoraFactors]:
    """The active commits' deltas, concatenated per module (in commit order), as LoRA factors."""
    us: dict[str, list[torch.Tensor]] = {}
    vs: dict[str, list[torch.Tensor]] = {}
    for c in journal.active_commits():
        for d in store.read_deltas(journal.folder, c.delta_file, c.delta_sha256, c.seq):
            us.setdefault(d.module, []).append(d.U.float())  # (d_out, E)
            vs.setdefault(d.module, []).append(d.V.float())  # (d_in, E)
    return [
        LoraFactors(m, A=torch.cat(vs[m], dim=1).T.contiguous(), B=torch.cat(us[m], dim=1).contiguous())
        for m in sorted(us, key=_layer_order)
    ]


def _layer_order(module: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in module.split("."))


def adapter_config(factors: list[LoraFactors], base: str, fan_in_fan_out: bool):
    """PEFT's ``LoraConfig`` for ``factors`` (scale 1 on every layer)."""
    from peft import LoraConfig

    r = max(f.rank for f in factors)
    other = {f.module: f.rank for f in factors if f.rank != r}
    cfg = LoraConfig(
        r=r, lora_alpha=r, target_modules=[f.module for f in factors], rank_pattern=other, alpha_pattern=dict(other),
        lora_dropout=0.0, bias="none", fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM",
        base_model_name_or_path=base, inference_mode=True,
    )
    return cfg


def write_adapter(lm, journal: Journal, tmp: Path, progress: Callable | None = None) -> None:
    """Fill ``tmp`` with the adapter, its model card and the journal copy."""
    from safetensors.torch import save_file

    from kedit.editing import arch
    from kedit.session.export import _report, copy_journal, model_card

    factors = lora_factors(journal)
    if not factors:
        raise ExportError("the session has no active commit: an adapter would change nothing",
                          hint="commit facts first, or export --format checkpoint for the base weights")
    _report(progress, 0, 1, "writing the adapter")
    cfg = adapter_config(factors, str(lm.path), fan_in_fan_out=arch.arch_of(lm.model).transposed)
    cfg.save_pretrained(str(tmp))  # PEFT's own adapter_config.json
    tensors = {}
    for f in factors:
        tensors[f"base_model.model.{f.module}.lora_A.weight"] = f.A  # (r, d_in)
        tensors[f"base_model.model.{f.module}.lora_B.weight"] = f.B  # (d_out, r)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    copy_journal(journal, tmp)
    (tmp / "README.md").write_text(_card(journal, lm, factors, cfg), encoding="utf-8")
    _report(progress, 1, 1, "adapter written")


def vllm_max_rank(r: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds rank ``r``."""
    return next((v for v in VLLM_RANKS if v >= r), r)


def _card(journal: Journal, lm, factors: list[LoraFactors], cfg) -> str:
    from kedit import __version__
    from kedit.session.export import model_card

    h = journal.header
    size = sum(f.A.numel() + f.B.numel() for f in factors) * 4
    layers = ", ".join(f"`{f.module}` (rank {f.rank})" for f in factors)
    intro = (
        f"This is a LoRA adapter for **{h.model.name}** (`{lm.path}`) made by [kedit](https://pypi.org/project/kedit/) "
        f"{__version__}: the facts below, patched into MLP output projections by locate-and-edit (EMMET/MEMIT/ROME), "
        f"written as low-rank updates with scale 1 (lora_alpha = r). Adapted modules: {layers}; "
        f"{size / 1e6:.2f} MB of float32 factors."
    )
    usage = [
        "## Using the adapter",
        "",
        "With PEFT (the base model in float32 applies the update exactly as kedit's merged checkpoint does):",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f'base = AutoModelForCausalLM.from_pretrained("{lm.path}", dtype="float32")',
        'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
        "```",
        "",
        "With vLLM (the adapter's rank is per layer; vLLM reads it from the tensors):",
        "",
        "```bash",
        f"vllm serve {lm.path} --enable-lora --max-lora-rank {vllm_max_rank(cfg.r)} --lora-modules kedit=THIS_FOLDER",
        "```",
        "",
        "and ask for the model `kedit`.",
        "",
    ]
    return model_card(journal, lm, library="peft", intro=intro, sections=tuple(usage))
