"""``--device-map`` and ``--max-memory``: the options of every command that loads a model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DeviceMapOpt = Annotated[Optional[str], typer.Option(
    "--device-map", help="auto: spread the model over the GPUs, then CPU and disk (accelerate); overrides --device.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option(
    "--max-memory", help="Memory per device for --device-map, e.g. 150MB (each device) or 0=20GiB,cpu=60GiB; "
                         "the rest goes to disk. Implies --device-map auto.")]


def use_placement(device_map: str | None, max_memory: str | None) -> None:
    """Make the options this run's placement (checked first: a bad value is a usage error)."""
    if device_map is None and max_memory is None:
        return  # KEDIT_DEVICE_MAP / KEDIT_MAX_MEMORY, if set, still apply
    from kedit.editing.placement import parse_placement, use

    use(parse_placement(device_map, max_memory))
