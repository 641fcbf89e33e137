"""The choices a user makes on the command line, in the TUI and in ``session.json``, and how
their text is read: one owner for each rule, no torch (``kedit add`` and ``kedit log`` stay
instant).

* ``METHODS``: the edit methods.
* ``QUANT_MODES``: how a model is quantised (``--query-quant``, ``--load``); ``quant_mode``
  reads a user's spelling (``off`` is ``none``, ``4bit`` is ``nf4``, ...).
* ``DTYPES``: the floating-point types a model can be loaded in; ``dtype_name`` reads aliases.
* ``device_name``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (a check of the spelling
  only; whether the device exists here is checked when a model loads).
* ``parse_numbers``/``parse_layers``: ``3``, ``2,3,4``, ``2-4`` or ``0-20:2`` → a tuple of numbers.
"""

from __future__ import annotations

import re

from kedit.errors import UsageError

METHODS = ("emmet", "memit", "rome")
QUANT_MODES = ("none", "int8", "nf4")
DTYPES = ("float32", "bfloat16", "float16", "float64")
DEVICE_KINDS = ("cpu", "cuda", "mps")

_QUANT_ALIASES = {"off": "none", "fp": "none", "full": "none", "8bit": "int8", "4bit": "nf4"}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}
_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def method_name(method: str) -> str:
    """``method`` if it is one of ``METHODS``, else a ``UsageError`` naming the choices."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}", hint=f"choose one of {', '.join(METHODS)}")
    return method


def quant_mode(mode: str | None, option: str = "--query-quant") -> str:
    """``none``/``int8``/``nf4`` (``None``, ``""`` and ``off`` mean ``none``)."""
    if mode is not None and not isinstance(mode, str):
        raise UsageError(f"{option} must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    m = (mode or "none").strip().lower()
    m = _QUANT_ALIASES.get(m, m)
    if m not in QUANT_MODES:
        raise UsageError(f"unknown {option} mode {mode!r}", hint=f"choose one of {', '.join(QUANT_MODES)} (or off)")
    return m


def dtype_name(dtype: str | None) -> str | None:
    """The canonical name of a dtype (``bf16`` → ``bfloat16``); ``None``/``auto`` stay ``None``."""
    if dtype is None or dtype == "auto":
        return None
    d = _DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if d not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint=f"choose one of {', '.join(DTYPES)} (or auto)")
    return d


def device_name(device: str | None) -> str | None:
    """``device`` if it is spelled like a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); ``None``/``auto`` → ``None``."""
    if device is None or device == "auto":
        return None
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise UsageError(f"unknown device {device!r}", hint="choose cpu, cuda, cuda:N, mps or auto")
    return device


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``--layers``: see ``parse_numbers``."""
    return parse_numbers(text, "layers")


def parse_numbers(text: str | None, what: str) -> tuple[int, ...] | None:
    """``'3'``, ``'2,3,4'``, ``'2-4'`` or ``'0-20:2'`` → a tuple of numbers (``None`` for no text).

    A range must go upwards (``4-2`` is refused, not read as nothing), numbers are ≥ 0, and the
    same number is listed once.
    """
    if text is None or not text.strip():
        return None
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = _RANGE.match(part)
        if not m:
            raise UsageError(f"cannot read {what} {text!r}: {part!r} is not a number or a range a-b",
                             hint="write e.g. 3, or 2,3,4, or 2-4, or 0-20:2 (numbers from 0)")
        a, b, step = int(m[1]), m[2], m[3]
        if b is None:
            out.append(a)
            continue
        if int(b) < a or (step is not None and int(step) < 1):
            raise UsageError(f"cannot read {what} {text!r}: {part!r} is an empty range",
                             hint=f"write the smaller number first, e.g. {b}-{a}")
        out += range(a, int(b) + 1, int(step or 1))
    if len(set(out)) != len(out):
        raise UsageError(f"{what} {text!r} lists a number twice")
    return tuple(out)


def check_layers(layers, num_layers: int | None, where: str = "") -> tuple[int, ...]:
    """``layers`` as a tuple of ints, each in ``0..num_layers-1`` when that is known."""
    src = f"{where}: " if where else ""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise UsageError(f"{src}layers must be a list of layer numbers, got {layers!r}")
    out = tuple(layers)
    if not out:
        raise UsageError(f"{src}an edit needs at least one layer")
    if not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in out):
        raise UsageError(f"{src}layers must be numbers from 0, got {list(out)!r}")
    if num_layers is not None:
        bad = [l for l in out if l >= num_layers]
        if bad:
            raise UsageError(f"{src}layer(s) {bad} do not exist: the model has layers 0..{num_layers - 1}",
                             hint=f"choose layers from 0 to {num_layers - 1} (--layers)")
    return out
