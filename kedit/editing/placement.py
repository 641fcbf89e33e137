"""Models spread over devices by accelerate: ``--device-map auto`` and ``--max-memory``.

With a device map, transformers loads the model through accelerate: blocks go to the GPUs in
order, and what does not fit goes to the CPU and then to disk (read straight from the
checkpoint's safetensors files when a forward pass needs it). An offloaded module holds *meta*
tensors while idle; its real weights live in its accelerate hook's weights map. kedit edits such
a model like any other:

* inputs go to the device of the embeddings (``input_device``); hidden states, keys and δ go to
  the device of the module that consumes them;
* the weight of an edited projection that accelerate offloaded is held in the weights map's
  in-memory part (``held_weight``): every forward pass reads it from there, every write (commit,
  undo) goes there, and the checkpoint on disk is never touched;
* fingerprints read the values (``read_weight``), which do not depend on where they live.

The placement is a property of this run on this machine, not of a session: the options set it
for the process (``use``), through ``KEDIT_DEVICE_MAP`` and ``KEDIT_MAX_MEMORY``, which a user
may also set directly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from kedit.errors import UsageError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
ENV_MAP, ENV_MEMORY = "KEDIT_DEVICE_MAP", "KEDIT_MAX_MEMORY"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    device_map: str | None = None  # one of DEVICE_MAPS; None: the whole model on one device
    max_memory: tuple[tuple[str, str], ...] = ()  # ((device, size), ...): "0", "cuda:1", "cpu", or "*" for every device

    @property
    def spread(self) -> bool:
        return self.device_map is not None

    def memory_dict(self) -> dict[int | str, str] | None:
        """accelerate's ``max_memory``: GPU indices as ints, ``cpu``; ``*`` expanded to every device here."""
        if not self.max_memory:
            return None
        out: dict[int | str, str] = {}
        for dev, size in self.max_memory:
            if dev == "*":
                for i in range(torch.cuda.device_count()):
                    out.setdefault(i, size)
                out.setdefault("cpu", size)
            else:
                out[_device_key(dev)] = size
        return out


def parse_placement(device_map: str | None, max_memory: str | None) -> Placement:
    """``--device-map`` and ``--max-memory`` as given; a bad value is a one-line usage error.

    ``--max-memory 150MB`` caps every device (GPUs and the CPU) at 150 MB; ``0=20GiB,cpu=60GiB``
    caps each named one. What does not fit goes to disk. ``--max-memory`` implies ``auto``.
    """
    dm = (device_map or "").strip().lower() or None
    if dm is not None and dm not in DEVICE_MAPS:
        raise UsageError(f"unknown --device-map {device_map!r}", hint=f"choose one of {', '.join(DEVICE_MAPS)}")
    mem = _parse_memory(max_memory) if max_memory else ()
    if mem and dm is None:
        dm = "auto"
    return Placement(device_map=dm, max_memory=mem)


def _parse_memory(text: str) -> tuple[tuple[str, str], ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--max-memory is empty", hint="e.g. --max-memory 150MB, or 0=20GiB,cpu=60GiB")
    out = []
    for p in parts:
        dev, _, size = p.rpartition("=")
        dev = dev.strip().lower() or "*"
        if not _SIZE.match(size):
            raise UsageError(f"--max-memory: {size.strip()!r} is not a size",
                             hint="sizes look like 150MB, 20GiB or 1.5GB; devices like 0, cuda:1 or cpu")
        if dev != "*":
            _device_key(dev)
        out.append((dev, size.strip().upper().replace("IB", "iB")))
    if len({d for d, _ in out}) != len(out):
        raise UsageError(f"--max-memory names a device twice: {text!r}")
    return tuple(out)


def _device_key(dev: str) -> int | str:
    if dev == "cpu":
        return "cpu"
    index = dev.removeprefix("cuda:")
    if not index.isdigit():
        raise UsageError(f"--max-memory: unknown device {dev!r}", hint="devices are GPU indices (0, 1 or cuda:1) and cpu")
    return int(index)


def use(placement: Placement) -> None:
    """Make ``placement`` this process's default for every model kedit loads (and its children's)."""
    for key, value in ((ENV_MAP, placement.device_map),
                       (ENV_MEMORY, ",".join(f"{d}={s}" if d != "*" else s for d, s in placement.max_memory))):
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)


def current() -> Placement:
    """The placement set by ``use`` or the environment (none: one device)."""
    return parse_placement(os.environ.get(ENV_MAP), os.environ.get(ENV_MEMORY))


def load_kwargs(placement: Placement) -> dict:
    """``from_pretrained`` arguments of a spread placement (an offload folder for disk offload)."""
    import atexit
    import shutil
    import tempfile

    if not placement.spread:
        return {}
    folder = tempfile.mkdtemp(prefix="kedit-offload-")  # safetensors are read in place; other formats land here
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    kwargs: dict = {"device_map": placement.device_map, "offload_folder": folder}
    mem = placement.memory_dict()
    if mem is not None:
        kwargs["max_memory"] = mem
    return kwargs


# -- working on a spread model -------------------------------------------------------------------


def input_device(model: nn.Module) -> torch.device:
    """Where the input ids go: the device of the embeddings (their execution device when offloaded)."""
    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    return emb.weight.device


def _weights_map(module: nn.Module):
    """(the weights map's loader, this module's key prefix) of an offloaded module."""
    hook = getattr(module, "_hf_hook", None)
    wm = getattr(hook, "weights_map", None) if getattr(hook, "offload", False) else None
    if wm is None or not hasattr(wm, "dataset") or not hasattr(wm.dataset, "state_dict"):
        raise UsageError(f"a {type(module).__name__} holds meta tensors but no accelerate weights map",
                         hint="load the model with --device-map auto (or without a device map)")
    return wm.dataset, wm.prefix


def read_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The values of ``module.<name>`` wherever they live, in the parameter's dtype (never stored)."""
    p = getattr(module, name)
    if p.device.type != "meta":
        return p
    loader, prefix = _weights_map(module)
    return loader[prefix + name].to(p.dtype)


def written_weight(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """``held_weight`` without loading anything: None for an offloaded weight that no one has
    held yet (it is still exactly the file's, so nothing kedit wrote can be in it)."""
    p = getattr(module, name)
    if p.device.type != "meta":
        return p
    loader, prefix = _weights_map(module)
    return loader.state_dict.get(prefix + name)


def held_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor that *is* ``module.<name>``: the parameter itself, or for an offloaded module the
    weights map's in-memory copy (made on first use, in the parameter's dtype), which every
    forward pass reads and every in-place write changes."""
    p = getattr(module, name)
    if p.device.type != "meta":
        return p
    loader, prefix = _weights_map(module)
    key = prefix + name
    held = loader.state_dict.get(key)
    if held is None or held.dtype != p.dtype:
        held = loader[key].to(p.dtype).contiguous().clone()  # (own layout) a copy of the disk tensor
        loader.state_dict[key] = held
        if key not in loader.all_keys:
            loader.all_keys.append(key)
    return held
