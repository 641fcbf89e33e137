"""The query copy of a session (``--query-quant int8|nf4``).

A second copy of the model, loaded quantised from the same checkpoint, answers queries while
edits are computed on the full-precision model. After a commit or an undo only the edited
projections of the copy are re-quantised from the new full-precision weights.
"""

from __future__ import annotations

import torch
from torch import nn

from kedit.editing.quant.modules import memory_bytes
from kedit.editing.quant.loading import build_quantized_copy
from kedit.editing.quant.modes import normalize_mode
from kedit.editing.quant.requantize import linear_weights, requantize_modules


class QueryCopy:
    """A quantised copy that follows a full-precision model's edits, for queries.

    ``sync(layers)`` re-quantises the copy's projections of ``layers`` from the full model's
    current weights (call it after every commit and undo with the layers they touched); ``base()``
    lends the copy's original quantised projections for a moment (what the quantised base model
    says), without re-quantising anything.
    """

    def __init__(self, full, mode: str, device=None, dtype=None) -> None:
        self.full = full  # LoadedModel with the full-precision (edited) weights
        self.mode = normalize_mode(mode)
        self.lm = build_quantized_copy(full, self.mode, device=device, dtype=dtype)
        self._base: dict[str, tuple] = {}  # module name -> its state as loaded (before any sync)

    @property
    def model(self) -> nn.Module:
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def memory_bytes(self) -> int:
        return memory_bytes(self.lm.model)

    def sync(self, layers) -> list[str]:
        """Re-quantise the projections of ``layers`` from the full model; returns the module names."""
        weights = linear_weights(self.full.model, list(layers))
        for name in weights:
            if name not in self._base:
                self._base[name] = _module_state(self.lm.model.get_submodule(name))
        return requantize_modules(self.lm.model, weights, dtype=self.lm.dtype)

    def base(self):
        """Context manager: the copy's projections as they were loaded (the quantised base model)."""
        import contextlib

        @contextlib.contextmanager
        def swapped():
            current = {n: _module_state(self.lm.model.get_submodule(n)) for n in self._base}
            for n, st in self._base.items():
                _set_module_state(self.lm.model.get_submodule(n), st)
            try:
                yield
            finally:
                for n, st in current.items():
                    _set_module_state(self.lm.model.get_submodule(n), st)

        return swapped()


def _module_state(module: nn.Module) -> tuple:
    """What defines a module's weight: the parameter object and the state kept beside it."""
    if type(module).__name__ == "Linear4bit":
        return ("4bit", module.weight)  # its quant_state travels with it (CPU repacking mutates both together)
    if type(module).__name__ == "Linear8bitLt":
        # before its first forward the int8 matrix and scales sit on the weight, afterwards in the state
        w = module.weight
        cb = w.CB if w.CB is not None else module.state.CB
        scb = w.SCB if w.SCB is not None else module.state.SCB
        assert cb is not None and scb is not None, "an int8 module without its quantised matrix"
        return ("8bit", w, cb, scb)
    return ("plain", module.weight.detach().clone())


@torch.no_grad()
def _set_module_state(module: nn.Module, st: tuple) -> None:
    kind = st[0]
    if kind == "4bit":
        module.weight = st[1]
        module.quant_state = st[1].quant_state
    elif kind == "8bit":
        w, cb, scb = st[1], st[2], st[3]
        w.CB = w.SCB = None  # the "after init_8bit_state" form: matrix and scales in the state
        w.data = cb
        module.weight = w
        module.state.CB, module.state.SCB = cb, scb
        module.state.idx = module.state.subB = None
    else:
        module.weight.copy_(st[1])


