"""Tokenising prompts: the subject's last token and teacher-forced target rows.

The subject index is ``len(tokenize(text up to the end of the subject)) - 1`` with the
tokenizer's *real* special-token behaviour: Llama-3 adds a BOS, SmolLM2 and GPT-2 do not. We ask
the tokenizer instead of guessing from the model's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kedit.errors import InvalidFactError


def ids(tok, text: str) -> list[int]:
    """Token ids of ``text`` as the model sees a prompt (with BOS if the tokenizer adds one).

    A text that already starts with the BOS token (what a chat template such as Llama-3's writes)
    gets no second one: ``tok(text)`` alone would start ``<|begin_of_text|><|begin_of_text|>``.
    """
    bos = getattr(tok, "bos_token", None)
    return list(tok(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids)


def target_ids(tok, target: str) -> list[int]:
    """Token ids of ``" " + target`` as a continuation (no special tokens)."""
    out = list(tok(" " + target, add_special_tokens=False).input_ids)
    if not out:
        raise InvalidFactError(f"target {target!r} tokenises to nothing")
    return out


def subject_last_index(tok, template: str, subject: str) -> int:
    """Index of the subject's last token in ``template.format(subject)`` (one ``{}``)."""
    before = template[: template.index("{}")]
    n = len(ids(tok, before + subject))
    full = len(ids(tok, template.replace("{}", subject)))
    if not 0 < n <= full:
        raise InvalidFactError(f"cannot locate subject {subject!r} in {template!r} after tokenising")
    return n - 1


def at_first_token(tok, template: str, subject: str) -> bool:
    """The subject's last token is the text's first (a one-token subject that starts a prompt, where
    the tokenizer adds no BOS): the position of the attention sink, whose state is much the same
    in every text, so a fact can be neither read nor written there."""
    return subject_last_index(tok, template, subject) == 0


@dataclass(frozen=True)
class Row:
    """One sequence of a batch: token ids, where δ goes, where the targets are read."""

    input_ids: tuple[int, ...]
    subject_index: int  # position of the subject's last token
    target_positions: tuple[int, ...]  # positions whose next-token logits predict the target
    target_ids: tuple[int, ...]


def rewrite_row(tok, template: str, subject: str, target: str) -> Row:
    """``template`` (with ``{}``) filled with the subject, followed by the target minus its last token."""
    prompt = ids(tok, template.replace("{}", subject))
    tgt = target_ids(tok, target)
    seq = prompt + tgt[:-1]
    start = len(prompt) - 1
    return Row(
        input_ids=tuple(seq),
        subject_index=subject_last_index(tok, template, subject),
        target_positions=tuple(range(start, start + len(tgt))),
        target_ids=tuple(tgt),
    )


def plain_row(tok, template: str, subject: str) -> Row:
    return Row(
        input_ids=tuple(ids(tok, template.replace("{}", subject))),
        subject_index=subject_last_index(tok, template, subject),
        target_positions=(),
        target_ids=(),
    )


def pad_id(tok) -> int:
    pid = tok.pad_token_id
    if pid is None:
        pid = tok.eos_token_id if tok.eos_token_id is not None else 0
    return int(pid)


def collate(rows: list[Row], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask), each (B, T)."""
    T = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, : len(r.input_ids)] = 1
    return input_ids.to(device), mask.to(device)
