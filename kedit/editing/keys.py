"""Keys: the input of the MLP output projection at the subject's last token.

For each fact the key is ½·(key on the bare prompt) + ½·(mean key over the prefixed prompts), as
in the reference ROME/MEMIT code; without prefixes it is the bare key. All facts and templates of
a batch run in one forward pass, and every requested layer is read in that same pass.
"""

from __future__ import annotations

import torch

from kedit.editing import arch, forward, tokens
from kedit.editing.placement import input_device
from kedit.editing.prefixes import templates
from kedit.facts import Fact


@torch.no_grad()
def compute_keys(
    model, tok, facts: list[Fact], layers: list[int], prefixes: tuple[str, ...], chunk: int = 64
) -> dict[int, torch.Tensor]:
    """Keys per layer, each (d_in, E) in float32 (column i belongs to ``facts[i]``)."""
    n_t = 1 + len(prefixes)
    rows = [
        tokens.plain_row(tok, t, f.subject) for f in facts for t in templates(f.prompt, prefixes)
    ]  # E * n_t rows, fact-major
    device = input_device(model)
    got: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        input_ids, mask = tokens.collate(part, tokens.pad_id(tok), device)
        idx = torch.tensor([r.subject_index for r in part], device=device)  # (B,)
        handles = []
        for l in layers:
            def hook(mod, inputs, output, l=l):
                x = inputs[0]  # (B, T, d_in) on this projection's device
                at = idx.to(x.device)
                got[l].append(x[torch.arange(x.shape[0], device=x.device), at].float().cpu())

            handles.append(arch.mlp_out_module(model, l).register_forward_hook(hook))
        try:
            forward.run_until(model, max(layers), input_ids=input_ids, attention_mask=mask)
        finally:
            for h in handles:
                h.remove()
    out = {}
    for l in layers:
        k = torch.cat(got[l])  # (E * n_t, d_in)
        k = k.view(len(facts), n_t, -1)  # (E, n_t, d_in)
        if n_t > 1:
            k = 0.5 * k[:, 0] + 0.5 * k[:, 1:].mean(1)  # (E, d_in)
        else:
            k = k[:, 0]
        out[l] = k.T.contiguous()  # (d_in, E)
    return out
