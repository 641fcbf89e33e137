"""Quantisation modes and whether bitsandbytes can run them on a device.

``none``/``int8``/``nf4``; ``check_quant_support`` fails early with a clear message (missing or
too old bitsandbytes, no CUDA, an unsupported device) and probes one small matmul so a broken
install fails here, not mid-query; ``bnb_config`` is the loading config of a mode.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from kedit.choices import QUANT_MODES, quant_mode  # noqa: F401 (QUANT_MODES: one list, in kedit.choices)
from kedit.errors import DeviceError, MissingDependencyError, UsageError

MIN_BNB_CUDA = (0, 45)  # transformers' own minimum for 4-bit/8-bit loading
MIN_BNB_CPU = (0, 46)  # first release whose default build has the CPU backend
HEAD = "lm_head"  # name of the output projection in every supported family (tied or not)
_INSTALL_HINT = "pip install 'bitsandbytes>=0.46' (CUDA or CPU), or run with --query-quant none"


# -- modes and support checks --------------------------------------------------------------------


def normalize_mode(mode: str | None, option: str = "--query-quant") -> str:
    """``none``/``int8``/``nf4`` (``None``, ``""`` and ``off`` mean ``none``); anything else is a usage error."""
    return quant_mode(mode, option)


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _quiet_bnb() -> None:
    # bitsandbytes logs "inputs will be cast from float32 to float16" on *every* int8 matmul
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def check_quant_support(mode: str, device: str | torch.device | None) -> None:
    """Raise a clear ``MissingDependencyError``/``DeviceError`` if ``mode`` cannot run on ``device``.

    Beyond the version and backend checks, quantises and multiplies one small matrix on the
    device, so a broken install or an unsupported GPU fails here with a message, not mid-query.
    """
    mode = normalize_mode(mode)
    if mode == "none":
        return
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(f"quantised mode {mode!r} needs the 'bitsandbytes' package", hint=_INSTALL_HINT)
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # a broken native library raises all sorts of things at import
        raise MissingDependencyError(
            f"bitsandbytes is installed but cannot be imported: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint=_INSTALL_HINT,
        ) from None
    _quiet_bnb()
    version = getattr(bnb, "__version__", "0")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--query-quant/--load {mode} on {dev} requested but CUDA is not available here",
                              hint="use --device cpu (bitsandbytes also runs on the CPU)")
        if _version_tuple(version) < MIN_BNB_CUDA:
            raise MissingDependencyError(f"bitsandbytes {version} is too old for {mode} on CUDA",
                                         hint="pip install -U 'bitsandbytes>=0.45'")
    elif dev.type == "cpu":
        if _version_tuple(version) < MIN_BNB_CPU:
            raise DeviceError(f"bitsandbytes {version} has no CPU backend for {mode}",
                              hint="pip install -U 'bitsandbytes>=0.46', or use a CUDA GPU, or --query-quant none")
    else:
        supported = sorted(getattr(bnb, "supported_torch_devices", {"cuda", "cpu"}))
        if dev.type not in supported or dev.type == "mps":
            raise DeviceError(f"bitsandbytes {version} cannot run {mode} on {dev.type}",
                              hint="use --device cpu or a CUDA GPU, or --query-quant none")
    _probe(bnb, mode, dev)


def _probe(bnb, mode: str, dev: torch.device) -> None:
    """Quantise a 64×64 matrix and multiply by it on ``dev``; turn any failure into a DeviceError."""
    try:
        w = torch.linspace(-1, 1, 64 * 64, device=dev).reshape(64, 64)
        x = torch.ones(2, 64, device=dev)
        if mode == "nf4":
            q, state = bnb.functional.quantize_4bit(w, quant_type="nf4", blocksize=64)
            y = bnb.matmul_4bit(x, q, quant_state=state)
        else:
            lin = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=6.0)
            lin.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False).to(dev)
            lin.eval()
            y = lin(x)
        err = float((y.float() - x @ w.T).abs().max())
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeviceError(f"bitsandbytes cannot run {mode} on {dev}: {msg}",
                          hint="use --query-quant none, another --device, or update bitsandbytes") from None
    if not err < 1.0:  # 64 products of |w|≤1 by 1: a working kernel is off by a few hundredths
        raise DeviceError(f"bitsandbytes {mode} on {dev} computes wrong results (error {err:.3g} on a test matrix)",
                          hint="use --query-quant none or update bitsandbytes")


def bnb_config(mode: str, dtype: torch.dtype, skip_modules: list[str] | None = None):
    """The ``BitsAndBytesConfig`` of a mode; ``skip_modules`` (and the LM head) stay unquantised."""
    from transformers import BitsAndBytesConfig

    mode = normalize_mode(mode)
    skip = list(dict.fromkeys([*(skip_modules or []), HEAD]))
    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_use_double_quant=False, llm_int8_skip_modules=skip)
    raise UsageError("mode 'none' has no quantisation config")


