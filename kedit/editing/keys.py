"""Keys: the input of the MLP output projection at the subject's last token.

For each fact the key is ½·(key on the bare prompt) + ½·(mean key over the prefixed prompts), as
in the reference ROME/MEMIT code; without prefixes it is the bare key. All facts and templates of
a batch run in chunks of rows, and every requested layer is read in the same pass, which stops at
the deepest projection's input (nothing after it is needed).

``read_keys`` can also start a pass above the embeddings, from a block's output kept from an
earlier pass over the same chunks (``Pass.keep``), and keep a block's output for the next one:
remembered facts' keys at a layer above an edited one are recomputed from there (memory.py).
Blocks that get the same inputs compute the same bits, so a restarted pass equals a whole one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kedit.editing import arch, forward, tokens
from kedit.editing.placement import input_device
from kedit.editing.prefixes import templates
from kedit.facts import Fact


@dataclass(frozen=True)
class Chunk:
    """Rows of one forward pass: every template of some facts, fact-major."""

    input_ids: torch.Tensor  # (B, T) right-padded
    mask: torch.Tensor  # (B, T)
    subject_index: torch.Tensor  # (B,) the subject's last token in each row


def chunks_of(model, tok, facts: list[Fact], prefixes: tuple[str, ...], chunk: int = 64) -> list[Chunk]:
    rows = [
        tokens.plain_row(tok, t, f.subject) for f in facts for t in templates(f.prompt, prefixes)
    ]  # E * n_t rows, fact-major
    device = input_device(model)
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        input_ids, mask = tokens.collate(part, tokens.pad_id(tok), device)
        idx = torch.tensor([r.subject_index for r in part], device=device)  # (B,)
        out.append(Chunk(input_ids, mask, idx))
    return out


@dataclass(frozen=True)
class Outputs:
    """One block's output for every chunk of a pass, kept on the CPU: (B, T, d_model) each."""

    block: int
    hidden: tuple[torch.Tensor, ...]
    device: torch.device  # where the block computed them (where the next block reads them)

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden)


@torch.no_grad()
def read_keys(model, chunks: list[Chunk], n_facts: int, layers: list[int], start: Outputs | None = None,
              keep: tuple[int, ...] = ()) -> tuple[dict[int, torch.Tensor], dict[int, Outputs]]:
    """Keys per layer, each (d_in, E) in float32, read from the chunks' rows. ``start``: begin
    above ``start.block`` with its kept outputs instead of at the embeddings; ``keep``: blocks
    (that this pass runs) whose outputs are returned for a later pass."""
    got: dict[int, list[torch.Tensor]] = {l: [] for l in layers}  # per chunk (B, d_in)
    kept: dict[int, list[torch.Tensor]] = {b: [] for b in keep}  # per chunk (B, T, d_model)
    kept_on: dict[int, torch.device] = {}
    restart = forward.restart_above(model, start.block) if start else contextlib.nullcontext()
    with restart as inject:
        for c, ch in enumerate(chunks):
            if start:
                inject.hidden = start.hidden[c].to(start.device)  # (B, T, d_model)
            handles = _hooks(model, ch, got, kept, kept_on)
            try:
                forward.run_until_input(model, arch.mlp_out_module(model, max(layers)),
                                        input_ids=ch.input_ids, attention_mask=ch.mask)
            finally:
                for h in handles:
                    h.remove()
    n_t = sum(ch.input_ids.shape[0] for ch in chunks) // n_facts
    outputs = {b: Outputs(b, tuple(kept[b]), kept_on[b]) for b in keep}
    return {l: _average(torch.cat(got[l]), n_facts, n_t) for l in layers}, outputs


def _hooks(model, ch: Chunk, got: dict, kept: dict, kept_on: dict) -> list:
    """Hooks that append one chunk's keys to ``got[layer]`` and its kept outputs to ``kept[block]``."""
    handles = []
    for l in got:
        def read(mod, inputs, l=l):
            x = inputs[0]  # (B, T, d_in) on this projection's device
            at = ch.subject_index.to(x.device)
            got[l].append(x[torch.arange(x.shape[0], device=x.device), at].float().cpu())  # (B, d_in)

        handles.append(arch.mlp_out_module(model, l).register_forward_pre_hook(read))
    for b in kept:
        def keep(mod, inputs, output, b=b):
            h = forward.hidden_of(output)  # (B, T, d_model)
            kept[b].append(h.detach().to("cpu", copy=True))
            kept_on[b] = h.device

        handles.append(arch.blocks(model)[b].register_forward_hook(keep))
    return handles


def compute_keys(
    model, tok, facts: list[Fact], layers: list[int], prefixes: tuple[str, ...], chunk: int = 64
) -> dict[int, torch.Tensor]:
    """Keys per layer, each (d_in, E) in float32 (column i belongs to ``facts[i]``)."""
    return read_keys(model, chunks_of(model, tok, facts, prefixes, chunk), len(facts), layers)[0]


def _average(k: torch.Tensor, n_facts: int, n_t: int) -> torch.Tensor:
    """(E * n_t, d_in) keys of every template → (d_in, E) keys of the facts."""
    k = k.view(n_facts, n_t, -1)  # (E, n_t, d_in)
    if n_t > 1:
        k = 0.5 * k[:, 0] + 0.5 * k[:, 1:].mean(1)  # (E, d_in)
    else:
        k = k[:, 0]
    return k.T.contiguous()  # (d_in, E)

