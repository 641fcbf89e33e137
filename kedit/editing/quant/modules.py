"""Looking into a quantised model: which modules are quantised, its size, and CPU repacking.

On a CPU with AVX512-BF16 bitsandbytes repacks 4-bit weights at the first inference forward
for a faster kernel that has **no autograd**: gradients through a repacked layer are silently
wrong (measured: cosine 0.07 with the true gradient). Models used for editing therefore never
repack (``set_cpu_packing(model, False)``); the query copy may.
"""

from __future__ import annotations

import torch
from torch import nn


def is_quantized_module(module: nn.Module) -> bool:
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def quant_mode_of(model: nn.Module) -> str:
    """``nf4``, ``int8`` or ``none``, from the modules the model actually holds."""
    kinds = {type(m).__name__ for m in model.modules()}
    if "Linear4bit" in kinds:
        return "nf4"
    if "Linear8bitLt" in kinds:
        return "int8"
    return "none"


def memory_bytes(model: nn.Module) -> int:
    """Bytes held by the model: parameters, buffers and bitsandbytes scales (each storage once).

    ``get_memory_footprint`` counts parameters and buffers only; the 4-bit absmax and the 8-bit
    row scales live outside them, so they are added here (a few percent of a 4-bit model).
    """
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is None or not isinstance(t, torch.Tensor):
            return
        key = t.untyped_storage().data_ptr()
        if key in seen:
            return
        seen.add(key)
        total += t.untyped_storage().nbytes()

    for p in model.parameters():
        add(p.data)
    for b in model.buffers():
        add(b)
    for m in model.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            add(qs.absmax)
            add(qs.code)
            if getattr(qs, "state2", None) is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
        state = getattr(m, "state", None)
        if is_quantized_module(m) and state is not None:
            add(getattr(state, "SCB", None))
            add(getattr(m.weight, "SCB", None))
    return total


def set_cpu_packing(model: nn.Module, enabled: bool) -> None:
    """Allow or forbid bitsandbytes' inference-only CPU repacking of 4-bit weights.

    Forbidding it also undoes a repacking that already happened, so a model that answered
    queries can afterwards be differentiated through.
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from bitsandbytes.nn import Linear4bit, Params4bit

    for m in model.modules():
        if not isinstance(m, Linear4bit):
            continue
        if not enabled:
            qs = m.weight.quant_state
            if qs is not None and getattr(qs, "packing_format_for_cpu", False):
                data, qs = _convert_weight_packed_for_cpu_inverse(m.weight.data, qs)
                if qs.absmax.dim() == 2:
                    # bitsandbytes 0.50 restores the block scales' layout only for nested
                    # (double-quantised) states; the packed layout is (K/blocksize, N), transposed
                    qs.absmax = qs.absmax.T.reshape(-1).float().contiguous()
                m.weight = Params4bit(data, requires_grad=False, quant_state=qs, blocksize=m.weight.blocksize,
                                      compress_statistics=m.weight.compress_statistics, quant_type=m.weight.quant_type,
                                      quant_storage=m.weight.quant_storage, module=m, bnb_quantized=True)
                m.quant_state = qs
            m.support_avx512bf16_for_cpu = False
        else:
            from bitsandbytes.functional import has_avx512bf16

            m.support_avx512bf16_for_cpu = has_avx512bf16()


