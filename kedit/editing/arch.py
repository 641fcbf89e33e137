"""Architecture adapters: where a model keeps its MLP key→value memory.

The editable matrix is the MLP output projection. Its input at a token is the key ``k`` (d_in =
MLP width) and its output the value ``v`` (d_out = d_model). We always reason about the weight as
``W`` of shape (d_out, d_in); GPT-2's ``Conv1D`` stores it transposed, which ``weight_view``
hides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kedit.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Arch:
    family: str
    layers_path: str  # dotted path to the ModuleList of decoder blocks
    mlp_out: str  # dotted path, relative to a block, of the output projection
    transposed: bool  # True when the weight is stored (d_in, d_out) (GPT-2 Conv1D)
    # Relative dotted path of the module whose input is the residual stream before the MLP, where
    # the block's output is that stream plus the output projection's output (None: it is not, as
    # with Gemma-2's norm after the MLP or GPT-J's parallel block). ``keys.splits`` checks it.
    mlp_in: str | None = None


_LLAMA_LIKE = Arch("llama", "model.layers", "mlp.down_proj", transposed=False, mlp_in="post_attention_layernorm")

ARCHES: dict[str, Arch] = {
    "llama": _LLAMA_LIKE,
    "mistral": Arch("mistral", "model.layers", "mlp.down_proj", False, "post_attention_layernorm"),
    "mixtral": None,  # type: ignore[dict-item]  # MoE: no single MLP memory; refused below
    "qwen2": Arch("qwen2", "model.layers", "mlp.down_proj", False, "post_attention_layernorm"),
    "qwen3": Arch("qwen3", "model.layers", "mlp.down_proj", False, "post_attention_layernorm"),
    "gemma": Arch("gemma", "model.layers", "mlp.down_proj", False, "post_attention_layernorm"),
    "gemma2": Arch("gemma2", "model.layers", "mlp.down_proj", False),
    "phi3": None,  # type: ignore[dict-item]  # fused gate_up + down_proj: fine, but untested
    "gpt2": Arch("gpt2", "transformer.h", "mlp.c_proj", transposed=True, mlp_in="ln_2"),
    "gptj": Arch("gptj", "transformer.h", "mlp.fc_out", transposed=False),
}
SUPPORTED = sorted(k for k, v in ARCHES.items() if v is not None)


def _get(root: nn.Module, dotted: str) -> nn.Module:
    mod = root
    for part in dotted.split("."):
        mod = getattr(mod, part)
    return mod


def arch_of(model: nn.Module) -> Arch:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ARCHES.get(model_type) if model_type else None
    if arch is None:
        raise UnsupportedArchitectureError(
            f"kedit cannot edit models of type {model_type!r}",
            hint=f"supported model types: {', '.join(SUPPORTED)}",
        )
    return arch


def blocks(model: nn.Module) -> nn.ModuleList:
    return _get(model, arch_of(model).layers_path)  # type: ignore[return-value]


def num_layers(model: nn.Module) -> int:
    return len(blocks(model))


def mlp_out_name(model: nn.Module, layer: int) -> str:
    """Full parameter-module name, e.g. ``model.layers.4.mlp.down_proj``."""
    arch = arch_of(model)
    return f"{arch.layers_path}.{layer}.{arch.mlp_out}"


def mlp_out_module(model: nn.Module, layer: int) -> nn.Module:
    n = num_layers(model)
    if not 0 <= layer < n:
        raise UnsupportedArchitectureError(
            f"layer {layer} does not exist: the model has layers 0..{n - 1}"
        )
    return _get(blocks(model)[layer], arch_of(model).mlp_out)


def mlp_in_module(model: nn.Module, layer: int) -> nn.Module | None:
    """The module whose input is block ``layer``'s residual stream before its MLP (``Arch.mlp_in``)."""
    path = arch_of(model).mlp_in
    return _get(blocks(model)[layer], path) if path else None


def weight_param(model: nn.Module, layer: int) -> torch.Tensor:
    """The stored weight of the projection (in its own layout): the tensor forward passes read and
    edits write, also when accelerate offloaded the module (``placement.held_weight``)."""
    from kedit.editing.placement import held_weight

    return held_weight(mlp_out_module(model, layer))


def read_weight(model: nn.Module, layer: int) -> torch.Tensor:
    """The projection's stored values (own layout), without keeping an offloaded copy in memory."""
    from kedit.editing.placement import read_weight as read

    return read(mlp_out_module(model, layer))


def weight_view(model: nn.Module, layer: int) -> torch.Tensor:
    """The projection weight as (d_out, d_in), a view sharing storage with the model."""
    w = weight_param(model, layer)
    return w.T if arch_of(model).transposed else w


def dims(model: nn.Module, layer: int) -> tuple[int, int]:
    """(d_out, d_in) of the editable projection."""
    shape = mlp_out_module(model, layer).weight.shape  # also known for an offloaded (meta) weight
    d_out, d_in = reversed(shape) if arch_of(model).transposed else shape
    return int(d_out), int(d_in)


def output_embeddings(model: nn.Module) -> nn.Module:
    """The LM head; tied models (SmolLM2, GPT-2) have no separate ``lm_head.weight``."""
    head = model.get_output_embeddings()
    assert head is not None, f"{type(model).__name__} has no output embeddings"
    return head


def logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits from final hidden states (..., d_model) -> (..., V), as the model's own
    forward computes them: the LM head, then Gemma-2's soft-capping ``c·tanh(z/c)`` if configured."""
    z = output_embeddings(model)(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(z / cap) * cap if cap else z


def base_model(model: nn.Module) -> nn.Module:
    """The decoder without the LM head (LlamaModel, GPT2Model, ...)."""
    return model.base_model
