"""Re-quantising edited projections of a quantised model from new full-precision weights.

The same bitsandbytes calls transformers uses when it loads, so a re-quantised module is
bit-identical to a fresh quantisation of that weight.
"""

from __future__ import annotations

import torch
from torch import nn

from kedit.editing import arch
from kedit.errors import UsageError


def _quantized_weight_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    # transformers casts the checkpoint tensor to the model dtype before quantising it
    return getattr(module, "_kedit_source_dtype", None) or fallback


@torch.no_grad()
def requantize_modules(qmodel: nn.Module, weights: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> list[str]:
    """Replace the weights of the named modules of ``qmodel`` with ``weights`` (re-quantising).

    ``weights`` maps a module name (``model.layers.3.mlp.down_proj``) to its new full-precision
    weight in ``nn.Linear`` layout, (out_features, in_features). ``Linear4bit``/``Linear8bitLt``
    modules get a new ``Params4bit``/``Int8Params`` built and quantised exactly as transformers
    does when it loads (weight cast to ``dtype``, the model's dtype, first); plain modules (skip
    modules, unquantised copies) are copied into. Only these modules change. Returns the names.
    """
    from bitsandbytes.nn import Int8Params, Linear4bit, Linear8bitLt, Params4bit

    if dtype is None:
        dtype = getattr(qmodel, "dtype", torch.float32)
    done = []
    for name, new in weights.items():
        try:
            module = qmodel.get_submodule(name)
        except AttributeError:
            raise UsageError(f"the quantised model has no module {name!r}") from None
        new = new.detach()
        if isinstance(module, Linear4bit):
            old = module.weight
            device = old.device
            assert tuple(new.shape) == (module.out_features, module.in_features), (
                f"{name}: new weight {tuple(new.shape)} vs Linear4bit ({module.out_features}, {module.in_features})"
            )
            src = new.to(dtype=_quantized_weight_dtype(module, dtype)).contiguous()
            param = Params4bit(src.cpu(), requires_grad=False, blocksize=old.blocksize,
                               compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                               quant_storage=old.quant_storage, module=module, bnb_quantized=False)
            param = param.to(device)  # quantises (Params4bit._quantize), sets module.quant_state
            module.weight = param
            module.quant_state = param.quant_state
        elif isinstance(module, Linear8bitLt):
            device = module.weight.device
            assert tuple(new.shape) == (module.out_features, module.in_features), (
                f"{name}: new weight {tuple(new.shape)} vs Linear8bitLt ({module.out_features}, {module.in_features})"
            )
            src = new.to(dtype=_quantized_weight_dtype(module, dtype)).contiguous().cpu()
            param = Int8Params(src, requires_grad=False, has_fp16_weights=module.state.has_fp16_weights)
            param = param.to(device)  # quantises (Int8Params._quantize): CB, SCB
            module.weight = param
            # the forward moves CB/SCB from the weight into the matmul state; drop the stale ones
            module.state.CB = None
            module.state.SCB = None
            module.state.idx = None
            module.state.subB = None
        else:
            w = module.weight
            target = new.T if _is_conv1d(module) else new
            assert tuple(target.shape) == tuple(w.shape), f"{name}: new weight {tuple(new.shape)} vs {tuple(w.shape)}"
            w.copy_(target.to(device=w.device, dtype=w.dtype))
        done.append(name)
    return done


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def linear_weights(model: nn.Module, layers: list[int]) -> dict[str, torch.Tensor]:
    """{module name: weight in nn.Linear layout (d_out, d_in)} of the editable projections."""
    return {arch.mlp_out_name(model, l): arch.weight_view(model, l).detach() for l in sorted(set(layers))}


def sync_layers(qmodel: nn.Module, full_model: nn.Module, layers: list[int], dtype: torch.dtype | None = None) -> list[str]:
    """Make ``qmodel``'s projections of ``layers`` the re-quantised weights of ``full_model``."""
    return requantize_modules(qmodel, linear_weights(full_model, layers), dtype=dtype)


