"""Context prefixes: short seeded model samples put before a prompt ("The …. {prompt}").

Keys and values are averaged over the bare prompt and these prefixed versions, so the edit holds
in context. They are sampled once per session with a fixed seed and recorded in the journal: an
unseeded prefix is why the reference code cannot replay an edit exactly (docs/design.md §3).
"""

from __future__ import annotations

import torch

from kedit.editing.placement import input_device

STARTS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def sample_prefixes(model, tok, n: int, length: int, seed: int, top_k: int = 5) -> tuple[str, ...]:
    """``n`` prefixes of about ``length`` tokens each, top-k sampled under ``seed``.

    Sampling runs in float32 on the CPU generator so a seed gives the same text on any device.
    """
    if n == 0:
        return ()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = input_device(model)
    out = []
    for i in range(n):
        seq = list(tok(STARTS[i % len(STARTS)]).input_ids)
        start_len = len(seq)
        for _ in range(length):
            logits = model(torch.tensor([seq], device=device), use_cache=False).logits[0, -1]
            probs, idx = logits.float().cpu().softmax(-1).topk(top_k)  # (top_k,)
            pick = torch.multinomial(probs / probs.sum(), 1, generator=gen)
            seq.append(int(idx[pick]))
        text = tok.decode(seq, skip_special_tokens=True).strip()
        assert len(seq) > start_len
        # Braces would be read as the subject placeholder; newlines break the one-line prompt.
        text = " ".join(text.replace("{", " ").replace("}", " ").split())
        out.append(text + ".")
    return tuple(out)


def templates(template: str, prefixes: tuple[str, ...]) -> list[str]:
    """The bare template first, then one per prefix."""
    return [template] + [f"{p} {template}" for p in prefixes]
