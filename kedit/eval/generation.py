"""Generation-based figures: what the model *says*, not only what it would score.

Every prompt gets a greedy answer of ``tokens`` new tokens (batched, left-padded). An answer
"contains" an object when the object appears in it, case-insensitively. ``kedit eval`` reports,
beside the teacher-forced figures, the share of rewrite (GE) and paraphrase (GP) answers that
contain the new object, and of neighbourhood answers (GN) that contain the true object and not
the new one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kedit.editing import tokens
from kedit.editing.placement import input_device


@dataclass(frozen=True)
class Prompting:
    """How ``kedit eval`` puts its prompts to the model."""

    chat: bool = False  # as chat turns (chat.py): teacher-forced after the restated prompt, answers free
    gen_tokens: int = 0  # greedy answer length for GE/GP/GN; 0: no generation figures
    system: str | None = None  # the chat turn's system prompt (default: the template's)


def contains(answer: str, obj: str) -> bool:
    return obj.strip().lower() in answer.lower()


@torch.no_grad()
def greedy_answers(model, tok, texts: list[str], n: int, batch_size: int = 32) -> list[str]:
    """The greedy continuation of each text (``n`` new tokens, special tokens dropped)."""
    device = input_device(model)
    pad = tokens.pad_id(tok)
    seqs = [tokens.ids(tok, t) for t in texts]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding
    out = [""] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        T = max(len(seqs[i]) for i in idx)
        input_ids = torch.full((len(idx), T), pad, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros((len(idx), T), dtype=torch.long)  # (B, T)
        for j, i in enumerate(idx):
            input_ids[j, T - len(seqs[i]) :] = torch.tensor(seqs[i])
            mask[j, T - len(seqs[i]) :] = 1
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=n,
                             do_sample=False, pad_token_id=pad)  # (B, T + ≤n)
        for j, i in enumerate(idx):
            out[i] = tok.decode(gen[j, T:], skip_special_tokens=True)
    return out
