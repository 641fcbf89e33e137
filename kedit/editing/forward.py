"""Forward-pass plumbing: read hidden states at a block, stop early, and restart above a block.

transformers 5 decoder blocks return a tensor, older ones a tuple whose first item is the hidden
state: every hook here handles both, never ``output[0]`` on a tensor.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from kedit.editing import arch
from kedit.editing.placement import input_device


def hidden_of(output) -> torch.Tensor:
    """The hidden state inside a block's output (tensor or tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _like(output, hidden: torch.Tensor):
    """``hidden`` packaged the way the block returned its output."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def stop_after(module: nn.Module, before: bool = False) -> Iterator[None]:
    """Abort the forward pass once ``module`` has run (what comes after is not needed); ``before``:
    as soon as it is called, after the pre-hooks registered before this one (which see its input)."""

    def hook(*args):
        raise _StopForward

    handle = module.register_forward_pre_hook(hook) if before else module.register_forward_hook(hook)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


def run_until(model: nn.Module, last_block: int, **inputs) -> None:
    """Run the model on ``inputs`` up to and including block ``last_block``."""
    with stop_after(arch.blocks(model)[last_block]):
        model(**inputs, use_cache=False)


def run_until_input(model: nn.Module, module: nn.Module, **inputs) -> None:
    """Run the model on ``inputs`` until ``module`` is called (its input is there; it does not run)."""
    with stop_after(module, before=True):
        model(**inputs, use_cache=False)


@torch.no_grad()
def block_outputs(model: nn.Module, layer: int, input_ids, attention_mask) -> torch.Tensor:
    """Hidden state after block ``layer`` for every token: (B, T, d_model)."""
    got: list[torch.Tensor] = []
    block = arch.blocks(model)[layer]
    handle = block.register_forward_hook(lambda m, i, o: got.append(hidden_of(o).detach()))
    try:
        run_until(model, layer, input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    assert len(got) == 1, f"block {layer} ran {len(got)} times"
    return got[0]


class _PassThrough(nn.Module):
    """Stands in for a block below the restart point: returns its input unchanged."""

    def __init__(self, wrapped: nn.Module, tuple_output: bool) -> None:
        super().__init__()
        self.tuple_output = tuple_output
        self.attention_type = getattr(wrapped, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        if isinstance(hidden_states, tuple):  # very old GPT-2 blocks take a tuple
            hidden_states = hidden_states[0]
        return (hidden_states,) if self.tuple_output else hidden_states


class _Inject(nn.Module):
    """Stands in for the restart block: outputs ``self.hidden`` (set before each forward)."""

    def __init__(self, wrapped: nn.Module, tuple_output: bool) -> None:
        super().__init__()
        self.tuple_output = tuple_output
        self.attention_type = getattr(wrapped, "attention_type", None)
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        assert self.hidden is not None, "set the injected hidden state before the forward pass"
        return (self.hidden,) if self.tuple_output else self.hidden


def returns_tuple(model: nn.Module) -> bool:
    """Whether this transformers version's blocks return tuples (probe on one token)."""
    kinds: list[bool] = []
    block = arch.blocks(model)[0]
    handle = block.register_forward_hook(lambda m, i, o: kinds.append(not isinstance(o, torch.Tensor)))
    device = input_device(model)
    try:
        with torch.no_grad():
            run_until(model, 0, input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    finally:
        handle.remove()
    return kinds[0]


@contextlib.contextmanager
def restart_above(model: nn.Module, layer: int) -> Iterator[_Inject]:
    """Make the model skip blocks ``0..layer``: block ``layer`` outputs ``inject.hidden``.

    Blocks below the restart do not depend on what we optimise above it, so their output is
    computed once (``block_outputs``) and fed in here on every step. The swap is undone on exit.
    """
    blocks = arch.blocks(model)
    tuple_output = returns_tuple(model)
    originals = [blocks[i] for i in range(layer + 1)]
    inject = _Inject(originals[layer], tuple_output)
    try:
        for i in range(layer):
            blocks[i] = _PassThrough(originals[i], tuple_output)
        blocks[layer] = inject
        yield inject
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
