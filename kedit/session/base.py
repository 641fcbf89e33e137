"""The base model of a journal: describing it in the header, and loading it back (checked).

A journal only makes sense on the exact base weights it was recorded on: loading checks the
model's fingerprint (config + every editable projection, in the journal's dtype) against the
header and refuses a mismatch, naming both fingerprints.
"""

from __future__ import annotations

from kedit.errors import BaseModelMismatchError
from kedit.session.journal import BaseModelRef, JournalHeader


def describe(lm) -> BaseModelRef:
    """The base model as a journal header records it (the same with or without ``--load``)."""
    from kedit.editing import arch
    from kedit.editing.delta import fingerprint
    from kedit.editing.models import config_hash
    from kedit.editing.quant import base_fingerprint, base_layer_digests

    n = arch.num_layers(lm.model)
    digests = base_layer_digests(lm)
    return BaseModelRef(
        name=lm.name, path=str(lm.path), config_hash=config_hash(lm.model), fingerprint=base_fingerprint(lm, digests),
        editable_fingerprint=fingerprint(lm.model, list(range(n)), digests), model_type=lm.model.config.model_type,
        num_layers=n,
    )


def device_kind(device) -> str:
    return getattr(device, "type", str(device)).split(":")[0]


def pick_device_for(recorded: str, device: str | None) -> str | None:
    """The recorded device kind when no device is asked for and it exists here; else auto."""
    if device not in (None, "auto"):
        return device
    import torch

    if recorded == "cuda" and torch.cuda.is_available():
        return "cuda"
    if recorded == "cpu":
        return "cpu"
    return None


def check_base(lm, header: JournalHeader, journal_path) -> str:
    """The loaded model's fingerprint; raises ``BaseModelMismatchError`` if it is not the header's."""
    from kedit.editing.models import dtype_name
    from kedit.editing.quant import base_fingerprint

    fp = base_fingerprint(lm)
    if fp != header.model.fingerprint:
        hint = "replay it on the model it was recorded on (--model PATH if it moved)"
        if dtype_name(lm.dtype) != header.dtype:
            hint = f"the journal was recorded in {header.dtype}, the model is loaded in {dtype_name(lm.dtype)}: use --dtype {header.dtype}"
        raise BaseModelMismatchError(
            f"{journal_path} was recorded on base model {header.model.name!r} with fingerprint "
            f"{header.model.fingerprint}, but {lm.name!r} has fingerprint {fp}",
            hint=hint,
        )
    return fp


def load_for(header: JournalHeader, journal_path, model: str | None = None, device: str | None = None,
             dtype: str | None = None, load: str | None = None, keep_layers=()):
    """Load the journal's base model (or ``model`` instead) in the journal's dtype, and check it.

    ``load`` (default: as the journal was recorded) ``none`` loads it in full precision; int8/nf4
    quantised except the MLP output projections of ``keep_layers``.
    """
    from kedit.editing import load_model
    from kedit.editing.quant import load_quantized_for_editing, normalize_mode
    from kedit.errors import ModelNotFoundError

    mode = normalize_mode(header.load if load is None else load, option="--load")

    def load_one(name):
        dev, dt = pick_device_for(header.device, device), dtype or header.dtype
        if mode == "none":
            return load_model(name, device=dev, dtype=dt)
        return load_quantized_for_editing(name, mode, sorted(set(keep_layers) | set(header.layers)), device=dev, dtype=dt)

    name = model or header.model.name
    try:
        lm = load_one(name)
    except ModelNotFoundError:
        if model is None and name != header.model.path:
            lm = load_one(header.model.path)
        else:
            raise
    if lm.model.config.model_type != header.model.model_type:
        raise BaseModelMismatchError(
            f"{journal_path} was recorded on a {header.model.model_type} model "
            f"(fingerprint {header.model.fingerprint}), {name!r} is a {lm.model.config.model_type}",
            hint="replay it on the model it was recorded on (--model PATH)",
        )
    check_base(lm, header, journal_path)
    return lm
