"""Quantised models: a bitsandbytes copy for queries, and quantised loading for editing.

Two uses:

* **Query copy** (``--query-quant int8|nf4``): a second copy of the model, loaded from the same
  checkpoint with a ``BitsAndBytesConfig``, answers queries while edits are computed on the
  full-precision model. After a commit or an undo only the edited projections of the copy are
  re-quantised from the new full-precision weights (``requantize_modules``), with the same
  bitsandbytes calls transformers uses when it loads, so a re-quantised module is bit-identical to
  a fresh quantisation of that weight.
* **Quantised editing** (``--load int8|nf4``): the model itself is loaded quantised except the
  edit layers' MLP output projections and the LM head (bitsandbytes skip modules), which stay
  plain ``nn.Linear``/``Conv1D`` in full precision. Keys, values and C0 are computed through the
  quantised layers; gradients only flow to δ. Export then writes full-precision tensors: the
  base checkpoint's tensors, with the edited projections replaced (``export_full_precision``).

bitsandbytes runs on CUDA and, from 0.46 on, on the CPU (tested with 0.50 here). On a CPU with
AVX512-BF16 bitsandbytes repacks 4-bit weights at the first inference forward for a faster kernel
that has **no autograd**: gradients through a repacked layer are silently wrong (measured: cosine
0.07 with the true gradient). Models used for editing therefore never repack
(``set_cpu_packing(model, False)``); the query copy may.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kedit.choices import QUANT_MODES, quant_mode  # noqa: F401 (QUANT_MODES: one list, in kedit.choices)
from kedit.editing import arch
from kedit.errors import DeviceError, ExportError, MissingDependencyError, UsageError

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


# -- which modules are quantised, and how big a model is -----------------------------------------


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


# -- re-quantising edited modules ------------------------------------------------------------------


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


# -- building quantised models ----------------------------------------------------------------------


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


# -- identity of a quantised-loaded base model -----------------------------------------------------


def checkpoint_files(path: str) -> list[Path]:
    """The safetensors files of a checkpoint folder (or cached hub id)."""
    folder = _local_folder(path)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{folder} has no safetensors weights",
                          hint="convert the base checkpoint to safetensors (save_pretrained) first")
    return files


def _local_folder(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception as exc:
        raise ExportError(f"cannot find the files of base model {path!r} locally: {exc}") from None


def _checkpoint_key(keys: set[str], name: str, prefix: str) -> str | None:
    if name in keys:
        return name
    short = name.removeprefix(prefix + ".") if prefix else name
    return short if short in keys else None


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
    from safetensors import safe_open

    from kedit.editing.delta import tensor_digest

    model, need = lm.model, set(need)
    digests: dict[int, str] = {}
    prefix = getattr(model, "base_model_prefix", "")
    for f in checkpoint_files(lm.path):
        with safe_open(str(f), framework="pt") as sf:
            keys = set(sf.keys())
            for l in list(need):
                key = _checkpoint_key(keys, names[l], prefix)
                if key is not None:
                    digests[l] = tensor_digest(sf.get_tensor(key).to(lm.dtype))
                    need.discard(l)
    if need:
        raise ExportError(f"the base checkpoint {lm.path} lacks {', '.join(names[l] for l in sorted(need))}")
    return digests


def base_fingerprint(lm, digests: dict[int, str] | None = None) -> str:
    """``model_fingerprint`` of the base model, also for a quantised-loaded one: the quantised
    layers count with their checkpoint digests (``base_layer_digests``), so the base model's
    identity does not depend on ``--load``."""
    from kedit.editing.models import model_fingerprint

    return model_fingerprint(lm.model, base_layer_digests(lm) if digests is None else digests)


# -- export ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    replaced: tuple[str, ...]  # checkpoint keys written from the session
    files: tuple[str, ...]


def export_full_precision(base_path: str, edited: dict[str, torch.Tensor], out_dir: str | Path,
                          base_model_prefix: str = "model") -> ExportReport:
    """Write a full-precision checkpoint: the base files, with ``edited`` tensors replaced.

    ``edited`` maps parameter names (``model.layers.3.mlp.down_proj.weight``) to tensors in the
    checkpoint's own layout; each is cast to the dtype the checkpoint stores that tensor in. Every
    other tensor is copied from the base checkpoint unchanged (shards and index kept as they
    are), and so are config, tokenizer and generation files. The folder is written under a
    temporary name and renamed at the end, so a failed export leaves nothing half-written.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty", hint="choose a new folder")
    src = _local_folder(base_path)
    files = checkpoint_files(str(src))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    remaining = dict(edited)
    replaced = []
    try:
        for item in src.iterdir():
            if item.is_file() and item.suffix not in (".safetensors", ".bin", ".pt", ".gguf", ".pth"):
                if item.name == "config.json":
                    cfg = json.loads(item.read_text())
                    if "quantization_config" in cfg:
                        raise ExportError(f"the base checkpoint {src} is itself quantised; cannot export full precision")
                shutil.copy2(item, tmp / item.name)
        for f in files:
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(str(f), framework="pt") as sf:
                metadata = sf.metadata() or {}
                keys = set(sf.keys())
                for name in list(remaining):
                    key = _checkpoint_key(keys, name, base_model_prefix)
                    if key is not None:
                        base = sf.get_tensor(key)
                        new = remaining.pop(name).detach().to(device="cpu", dtype=base.dtype).contiguous()
                        if new.shape != base.shape:
                            raise ExportError(f"{name}: session tensor {tuple(new.shape)} vs checkpoint {tuple(base.shape)}")
                        tensors[key] = new
                        replaced.append(key)
                if not tensors:
                    shutil.copy2(f, tmp / f.name)  # an untouched shard: byte-identical copy
                    continue
                for key in keys - set(tensors):
                    tensors[key] = sf.get_tensor(key)
            save_file(tensors, str(tmp / f.name), metadata={"format": "pt", **metadata})
        if remaining:
            raise ExportError(f"the base checkpoint has no tensor {', '.join(sorted(remaining))}")
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(folder=out, replaced=tuple(replaced), files=tuple(f.name for f in files))


# -- the query copy of a session -------------------------------------------------------------------


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
