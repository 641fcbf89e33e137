"""Keys: the input of the MLP output projection at the subject's last token.

For each fact the key is ½·(key on the bare prompt) + ½·(mean key over the prefixed prompts), as
in the reference ROME/MEMIT code; without prefixes it is the bare key. One exception (unless
``first_token``): where the subject's last token is the first token of the bare prompt
(``tokens.at_first_token``), that position is where every text's attention sink sits, its state
much the same whatever the token; an update written at that key changes every text. The key is
then the mean over the prefixed prompts.

All facts and templates of a batch run in chunks of rows, and every requested layer is read in the
same pass, which stops at the deepest projection's input (nothing after it is needed).

``read_keys`` can also start a pass above the embeddings, from what an earlier pass over the same
chunks kept of a block (``Kept``), and keep a block for the next pass: remembered facts' keys at
a layer above an edited one are recomputed from there (memory.py). A block is kept either as its
output or, where the block adds its MLP output projection to the residual stream (``splits``),
as the two parts of its output that editing that projection does not change: the stream before
the MLP and the projection's input at every position. The block's output under the projection's
current weights is then one matrix product away. Blocks that get the same inputs compute the same
bits, so a restarted pass equals a whole one.
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
class Kept:
    """Block ``block`` of every chunk of a pass, kept on the CPU to restart above it: its output
    (``split`` False), or the stream before its MLP and its projection's input (``split`` True)."""

    block: int
    stream: tuple[torch.Tensor, ...]  # per chunk (B, T, d_model): the output, or the stream before the MLP
    inputs: tuple[torch.Tensor, ...]  # per chunk (B, T, d_in): the projection's input; () when not split
    device: torch.device  # where the block computed them

    @property
    def split(self) -> bool:
        return bool(self.inputs)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.stream, *self.inputs))

    def output(self, proj, c: int) -> torch.Tensor:
        """(B, T, d_model) the block's output for chunk ``c`` with its projection ``proj`` as it is now."""
        h = self.stream[c].to(self.device)
        if not self.split:
            return h
        return h + proj(self.inputs[c].to(self.device))  # the block's own sum


@torch.no_grad()
def splits(model, block: int) -> bool:
    """Whether block ``block``'s output is, bit for bit, the stream before its MLP plus its output
    projection's output (``Arch.mlp_in``), checked on a short probe."""
    mlp_in = arch.mlp_in_module(model, block)
    if mlp_in is None:
        return False
    got: dict[str, torch.Tensor] = {}

    def grab(name, tensor) -> None:  # a hook that returns None changes nothing
        got[name] = tensor

    hooks = [
        mlp_in.register_forward_pre_hook(lambda m, a: grab("stream", a[0])),
        arch.mlp_out_module(model, block).register_forward_pre_hook(lambda m, a: grab("inputs", a[0])),
        arch.blocks(model)[block].register_forward_hook(lambda m, a, o: grab("out", forward.hidden_of(o))),
    ]
    ids = torch.arange(3, 7, device=input_device(model))[None]  # (1, 4)
    try:
        forward.run_until(model, block, input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    if set(got) != {"stream", "inputs", "out"}:
        return False
    return torch.equal(got["out"], got["stream"] + arch.mlp_out_module(model, block)(got["inputs"]))


@torch.no_grad()
def read_keys(model, chunks: list[Chunk], n_facts: int, layers: list[int], start: Kept | None = None,
              keep: tuple[tuple[int, bool], ...] = (), first_token: bool = False,
              ) -> tuple[dict[int, torch.Tensor], dict[int, Kept]]:
    """Keys per layer, each (d_in, E) in float32, read from the chunks' rows. ``start``: begin
    above ``start.block`` instead of at the embeddings; ``keep``: (block, split) pairs to keep for
    a later pass (a block kept whole must finish in this pass; a split one must reach its projection);
    ``first_token``: keep a bare prompt whose subject is its first token in the fact's key."""
    got: dict[int, list[torch.Tensor]] = {l: [] for l in layers}  # per chunk (B, d_in)
    kept: dict[tuple[int, str], list[torch.Tensor]] = {}  # (block, part) -> per chunk (B, T, …)
    kept_on: dict[int, torch.device] = {}  # block -> where it ran
    proj = arch.mlp_out_module(model, start.block) if start else None  # before the restart swaps the block out
    restart = forward.restart_above(model, start.block) if start else contextlib.nullcontext()
    with restart as inject:
        for c, ch in enumerate(chunks):
            if start:
                inject.hidden = start.output(proj, c)  # (B, T, d_model)
            handles = _hooks(model, ch, got, keep, kept, kept_on)
            try:
                forward.run_until_input(model, arch.mlp_out_module(model, max(layers)),
                                        input_ids=ch.input_ids, attention_mask=ch.mask)
            finally:
                for h in handles:
                    h.remove()
    n_t = sum(ch.input_ids.shape[0] for ch in chunks) // n_facts
    outs = {b: Kept(b, tuple(kept[(b, "stream")]), tuple(kept.get((b, "inputs"), ())), kept_on[b]) for b, _ in keep}
    at_start = None if first_token else starts_at_first_token(chunks, n_facts)
    return {l: _average(torch.cat(got[l]), n_facts, n_t, at_start) for l in layers}, outs


def starts_at_first_token(chunks: list[Chunk], n_facts: int) -> torch.Tensor:
    """(E,) bool: facts whose bare prompt (each fact's first row) has the subject's last token
    first, ``tokens.at_first_token``'s rule read off the rows."""
    at = torch.cat([ch.subject_index.cpu() for ch in chunks])  # (E * n_t,)
    return at.view(n_facts, -1)[:, 0] == 0


def _hooks(model, ch: Chunk, got: dict, keep: tuple[tuple[int, bool], ...], kept: dict, kept_on: dict) -> list:
    """Hooks that append one chunk's keys to ``got[layer]`` and its kept parts to ``kept[(block, part)]``."""

    def store(name, tensor) -> None:
        kept.setdefault(name, []).append(tensor.detach().to("cpu", copy=True))
        kept_on[name[0]] = tensor.device

    handles = []
    for l in got:
        def read(mod, inputs, l=l):
            x = inputs[0]  # (B, T, d_in) on this projection's device
            at = ch.subject_index.to(x.device)
            got[l].append(x[torch.arange(x.shape[0], device=x.device), at].float().cpu())  # (B, d_in)

        handles.append(arch.mlp_out_module(model, l).register_forward_pre_hook(read))
    for b, split in keep:
        if split:
            handles.append(arch.mlp_in_module(model, b).register_forward_pre_hook(
                lambda m, a, b=b: store((b, "stream"), a[0])))  # (B, T, d_model)
            handles.append(arch.mlp_out_module(model, b).register_forward_pre_hook(
                lambda m, a, b=b: store((b, "inputs"), a[0])))  # (B, T, d_in)
        else:
            handles.append(arch.blocks(model)[b].register_forward_hook(
                lambda m, a, o, b=b: store((b, "stream"), forward.hidden_of(o))))  # (B, T, d_model)
    return handles


def compute_keys(
    model, tok, facts: list[Fact], layers: list[int], prefixes: tuple[str, ...], chunk: int = 64,
    first_token: bool = False,
) -> dict[int, torch.Tensor]:
    """Keys per layer, each (d_in, E) in float32 (column i belongs to ``facts[i]``)."""
    chunks = chunks_of(model, tok, facts, prefixes, chunk)
    return read_keys(model, chunks, len(facts), layers, first_token=first_token)[0]


def _average(k: torch.Tensor, n_facts: int, n_t: int, at_start: torch.Tensor | None = None) -> torch.Tensor:
    """(E * n_t, d_in) keys of every template → (d_in, E) keys of the facts; ``at_start`` (E,):
    facts whose bare key is left out (read at the first token)."""
    k = k.view(n_facts, n_t, -1)  # (E, n_t, d_in)
    if n_t > 1:
        out = 0.5 * k[:, 0] + 0.5 * k[:, 1:].mean(1)  # (E, d_in)
        if at_start is not None and bool(at_start.any()):
            out[at_start] = k[at_start, 1:].mean(1)  # (e, d_in) the prefixed prompts only
    else:
        out = k[:, 0]
    return out.T.contiguous()  # (d_in, E)
