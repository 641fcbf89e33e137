"""``kedit tui``: open the Textual app over a session (textual is imported only when it runs)."""

from __future__ import annotations

from typing import Optional

import typer

from kedit.cli import app
from kedit.commands.placement_opts import DeviceMapOpt, MaxMemoryOpt, use_placement


@app.command("tui")
def tui(
    session: str = typer.Argument("default", help="Session name (under ./sessions) or folder; created when new."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model for a new session: 'default', a folder or a hub id."),
    method: Optional[str] = typer.Option(None, "--method", help="emmet, memit or rome for the next commits."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layer(s) to edit, e.g. 4 or 4,5,6."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: auto)."),
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16 (default: auto)."),
    query_quant: Optional[str] = typer.Option(
        None, "--query-quant", help="Answer queries from a quantised copy: none, int8 or nf4 (default: the session's)."
    ),
    load: Optional[str] = typer.Option(
        None, "--load", help="New sessions: load the model int8/nf4-quantised except the edit layers (bitsandbytes)."
    ),
) -> None:
    """Open the interactive editor: fact queue, live query and edit log over a session."""
    use_placement(device_map, max_memory)
    from kedit import choices
    from kedit.tui.app import KeditApp

    KeditApp(
        target=session, model=model, method=choices.method_name(method) if method is not None else None,
        layers=choices.parse_layers(layers), device=choices.device_name(device), dtype=choices.dtype_name(dtype),
        query_quant=choices.quant_mode(query_quant) if query_quant is not None else None,
        load=choices.quant_mode(load, "--load") if load is not None else None,
    ).run()
