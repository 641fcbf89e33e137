"""Model health: does the edited model still write and read ordinary text as it did?

* Held-out NLL: the mean per-token NLL (teacher forced; perplexity = exp of it) of text outside
  the statistics corpus. kedit ships its own: ``heldout.txt``, ten short paragraphs written for
  the project (everyday prose, no facts anyone would edit), so it is never part of C0's
  Wikipedia sample. A session measures the first few paragraphs after every commit (one short
  forward pass); ``kedit eval`` and ``kedit lifelong`` use all of them.
* Fluency (ROME/MEMIT's generation entropy): for each greedy generation, the weighted word
  n-gram entropy (2/3)·H₂ and (4/3)·H₃ averaged, i.e. H₂/3 + 2·H₃/3, with Hₙ = −Σ f·log₂ f over the
  relative frequencies of its word n-grams; the mean over texts, ×100. A model that repeats
  itself has low entropy. Words are runs of letters/digits or single punctuation marks (the
  references use NLTK's tokenizer; the figures are close, not identical).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from kedit.editing import tokens

HELDOUT_FILE = Path(__file__).with_name("heldout.txt")
SESSION_PARAGRAPHS = 3  # what a session measures after each commit


@lru_cache(maxsize=1)
def heldout_paragraphs() -> tuple[str, ...]:
    return tuple(p.strip() for p in HELDOUT_FILE.read_text(encoding="utf-8").split("\n\n") if p.strip())


@torch.no_grad()
def heldout_nll(model, tok, texts: tuple[str, ...] | list[str] | None = None, batch_size: int = 4) -> float:
    """Mean per-token NLL of ``texts`` (default: every held-out paragraph), all tokens pooled."""
    texts = list(texts if texts is not None else heldout_paragraphs())
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(texts), batch_size):
        seqs = [tokens.ids(tok, t) for t in texts[s : s + batch_size]]
        rows = [tokens.Row(tuple(ids[:-1]), 0, tuple(range(len(ids) - 1)), tuple(ids[1:])) for ids in seqs]
        input_ids, mask = tokens.collate(rows, tokens.pad_id(tok), device)  # (B, T)
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()  # (B, T, V)
        target = torch.full_like(input_ids, -100)
        for i, r in enumerate(rows):
            target[i, : len(r.target_ids)] = torch.tensor(r.target_ids, device=device)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((target != -100).sum())
    return total / max(count, 1)


def session_nll(model, tok) -> float:
    """The held-out NLL a session records after each commit (a few short paragraphs)."""
    return heldout_nll(model, tok, heldout_paragraphs()[:SESSION_PARAGRAPHS])


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, n: int) -> float:
    """Hₙ = −Σ f·log₂ f over the relative frequencies of the text's word n-grams (0 if none)."""
    words = _WORD.findall(text)
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0


def generation_entropy(texts: list[str]) -> float:
    """ROME/MEMIT's fluency: mean over texts of H₂/3 + 2·H₃/3, ×100."""
    if not texts:
        return float("nan")
    return 100 * sum(ngram_entropy(t, 2) / 3 + 2 * ngram_entropy(t, 3) / 3 for t in texts) / len(texts)


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    """Greedy continuations (prompt included, as the references score them)."""
    device = next(model.parameters()).device
    out = []
    for p in prompts:
        ids = torch.tensor([tokens.ids(tok, p)], device=device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokens.pad_id(tok))
        out.append(p + tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def fluency(model, tok, prompts: list[str], max_new_tokens: int = 40) -> float:
    return generation_entropy(generate(model, tok, prompts, max_new_tokens))
