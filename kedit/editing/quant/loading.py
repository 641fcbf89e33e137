"""Loading a model quantised: the query copy's model, and a model for quantised editing.

Quantised editing (``--load int8|nf4``): every linear layer is a bitsandbytes module except the
edit layers' MLP output projections and the LM head (bitsandbytes skip modules), which stay
plain ``nn.Linear``/``Conv1D`` in full precision. Keys, values and C0 are computed through the
quantised layers; gradients only flow to δ.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from kedit.editing import arch
from kedit.editing.quant.modules import is_quantized_module, set_cpu_packing
from kedit.editing.quant.modes import _quiet_bnb, bnb_config, check_quant_support, normalize_mode
from kedit.editing.quant.requantize import sync_layers
from kedit.errors import UsageError


def build_quantized_copy(source, mode: str, device: str | torch.device | None = None,
                         dtype: torch.dtype | str | None = None, sync_layers_from_source: list[int] | None = None):
    """A bitsandbytes-quantised second copy of a model, as a ``LoadedModel``.

    ``source`` is a ``LoadedModel`` (the copy is read from the same checkpoint, in its dtype and
    on its device unless given) or a model name/path. With ``sync_layers_from_source`` the copy's
    projections of those layers are re-quantised from ``source.model``'s current (edited)
    weights, so a copy built mid-session answers like the session.
    """
    from kedit.editing.models import LoadedModel, load_model, pick_device, pick_dtype

    mode = normalize_mode(mode)
    if mode == "none":
        raise UsageError("build_quantized_copy needs int8 or nf4")
    if isinstance(source, LoadedModel):
        name, tok = source.path, source.tokenizer
        dev = torch.device(device) if device is not None else source.device
        dt = pick_dtype(dtype, dev) if dtype is not None else source.dtype
    else:
        name, tok = str(source), None
        dev = pick_device(str(device) if device is not None else None)
        dt = pick_dtype(dtype, dev)
    check_quant_support(mode, dev)
    _quiet_bnb()
    lm = load_model(name, device=str(dev), dtype=dt, quantization_config=bnb_config(mode, dt))
    _mark_source_dtype(lm.model, dt)
    if tok is not None:
        lm = LoadedModel(model=lm.model, tokenizer=tok, name=source.name, path=lm.path, device=lm.device, dtype=lm.dtype)
    if sync_layers_from_source:
        assert isinstance(source, LoadedModel), "sync_layers_from_source needs a LoadedModel source"
        sync_layers(lm.model, source.model, sync_layers_from_source, dtype=dt)
    return lm


def _mark_source_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    for m in model.modules():
        if is_quantized_module(m):
            m._kedit_source_dtype = dtype


def mlp_out_names_from_config(name_or_path: str, layers: list[int]) -> list[str]:
    """Module names of the editable projections of ``layers``, from the config alone (no weights)."""
    from transformers import AutoConfig

    from kedit.editing.models import resolve

    path, local = resolve(name_or_path)
    cfg = AutoConfig.from_pretrained(path, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    a = arch.ARCHES.get(cfg.model_type)
    if a is None:
        raise arch.UnsupportedArchitectureError(
            f"kedit cannot edit models of type {cfg.model_type!r}", hint=f"supported model types: {', '.join(arch.SUPPORTED)}"
        )
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for l in layers:
        if n is not None and not 0 <= l < n:
            raise arch.UnsupportedArchitectureError(f"layer {l} does not exist: the model has layers 0..{n - 1}")
    return [f"{a.layers_path}.{l}.{a.mlp_out}" for l in sorted(set(layers))]


def load_quantized_for_editing(name: str, mode: str, edit_layers: list[int], device: str | None = None,
                               dtype: str | torch.dtype | None = None):
    """Load ``name`` quantised (``int8``/``nf4``) except the edit layers' MLP output projections.

    Those projections and the LM head stay plain modules in ``dtype``, so ``Editor`` reads and
    writes them as usual; every other linear layer is a bitsandbytes module whose weights never
    change. CPU repacking is disabled so gradients through the 4-bit layers are exact.
    """
    from kedit.editing.models import load_model, pick_device, pick_dtype

    mode = normalize_mode(mode, option="--load")
    if mode == "none":
        raise UsageError("load_quantized_for_editing needs int8 or nf4")
    if not edit_layers:
        raise UsageError("--load int8|nf4 needs the edit layers, which stay in full precision")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    check_quant_support(mode, dev)
    _quiet_bnb()
    skip = mlp_out_names_from_config(name, edit_layers)
    lm = load_model(name, device=str(dev), dtype=dt, quantization_config=bnb_config(mode, dt, skip))
    _mark_source_dtype(lm.model, dt)
    for l in edit_layers:
        mod = arch.mlp_out_module(lm.model, l)
        assert not is_quantized_module(mod), f"{arch.mlp_out_name(lm.model, l)} was quantised despite the skip list"
    if mode == "nf4":
        set_cpu_packing(lm.model, False)
    return lm


def num_layers_from_config(name_or_path: str) -> int:
    """Number of decoder blocks, from the config alone (no weights)."""
    from transformers import AutoConfig

    from kedit.editing.models import resolve

    path, local = resolve(name_or_path)
    cfg = AutoConfig.from_pretrained(path, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if n is None:
        raise arch.UnsupportedArchitectureError(f"cannot tell the number of layers of {name_or_path!r} from its config")
    return int(n)
