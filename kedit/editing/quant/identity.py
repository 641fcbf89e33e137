"""The identity of a quantised-loaded base model.

A quantised load does not hold every editable projection in full precision; those layers count
in every fingerprint with the digests of their checkpoint tensors (cast to the model's dtype),
so the base model's identity does not depend on ``--load``.
"""

from __future__ import annotations

from kedit.editing import arch
from kedit.editing.checkpoint import open_checkpoint
from kedit.editing.quant.modules import is_quantized_module, quant_mode_of


def base_layer_digests(lm) -> dict[int, str]:
    """Digests of the base editable projections that a quantised load does not hold in full
    precision, read from the checkpoint and cast to ``lm.dtype``: what a full-precision load in
    that dtype has there. Empty for a plain model. These layers are never edited (only the layers
    kept in full precision are), so the digests stand for them in every fingerprint."""
    model = lm.model
    if quant_mode_of(model) == "none":
        return {}
    n = arch.num_layers(model)
    names = {l: arch.mlp_out_name(model, l) + ".weight" for l in range(n)}
    need = {l for l in range(n) if is_quantized_module(arch.mlp_out_module(model, l))}
    key = (str(lm.path), str(lm.dtype), tuple(sorted(need)))
    if key not in _DIGESTS:  # the checkpoint is read once per process (opening a session asks three times)
        _DIGESTS[key] = _checkpoint_digests(lm, names, need)
    return dict(_DIGESTS[key])


_DIGESTS: dict[tuple, dict[int, str]] = {}


def _checkpoint_digests(lm, names: dict[int, str], need: set[int]) -> dict[int, str]:
    from kedit.editing.delta import tensor_digest

    prefix = getattr(lm.model, "base_model_prefix", "")
    stored = open_checkpoint(lm.path).read([names[l] for l in sorted(need)], prefix)
    return {l: tensor_digest(stored[names[l]].to(lm.dtype)) for l in sorted(need)}


def base_fingerprint(lm, digests: dict[int, str] | None = None) -> str:
    """``model_fingerprint`` of the base model, also for a quantised-loaded one: the quantised
    layers count with their checkpoint digests (``base_layer_digests``), so the base model's
    identity does not depend on ``--load``."""
    from kedit.editing.models import model_fingerprint

    return model_fingerprint(lm.model, base_layer_digests(lm) if digests is None else digests)


