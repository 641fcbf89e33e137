"""Reading the model: teacher-forced target NLL (batched), top-k next tokens, greedy text.

Scoring many (prompt, target) pairs runs them in right-padded batches and applies the LM head
only at the positions that predict target tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kedit.editing import arch, tokens
from kedit.editing.placement import input_device


@dataclass(frozen=True)
class TargetScore:
    nll: float  # mean per-token NLL of " " + target after the prompt
    prob: float  # exp(-nll): geometric-mean token probability
    first_prob: float  # probability of the target's first token
    argmax: bool  # every target token is the argmax under teacher forcing
    predicted: tuple[int, ...] = ()  # the argmax token id at each target position (teacher-forced)


@torch.no_grad()
def score_targets(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32) -> list[TargetScore]:
    assert len(prompts) == len(targets), f"{len(prompts)} prompts vs {len(targets)} targets"
    device = input_device(model)
    body = arch.base_model(model)
    rows = []
    for p, t in zip(prompts, targets):
        prompt = tokens.ids(tok, p)
        tgt = tokens.target_ids(tok, t)
        start = len(prompt) - 1
        rows.append(tokens.Row(tuple(prompt + tgt[:-1]), start, tuple(range(start, start + len(tgt))), tuple(tgt)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))  # less padding
    out: list[TargetScore | None] = [None] * len(rows)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        part = [rows[i] for i in idx]
        input_ids, mask = tokens.collate(part, tokens.pad_id(tok), device)
        last = body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, D)
        br = torch.tensor([j for j, r in enumerate(part) for _ in r.target_positions], device=last.device)
        bp = torch.tensor([p for r in part for p in r.target_positions], device=last.device)
        logp = arch.logits(model, last[br, bp]).float().log_softmax(-1)  # (P, V) on the LM head's device
        tt = torch.tensor([t for r in part for t in r.target_ids], device=logp.device)
        tok_lp = logp.gather(1, tt[:, None])[:, 0]  # (P,)
        pred = logp.argmax(-1)  # (P,)
        hit = pred == tt  # (P,)
        pred_list = pred.tolist()
        at = 0
        for j, r in zip(idx, part):
            n = len(r.target_ids)
            nll = float(-tok_lp[at : at + n].mean())
            out[j] = TargetScore(
                nll=nll,
                prob=float(torch.exp(torch.tensor(-nll))),
                first_prob=float(tok_lp[at].exp()),
                argmax=bool(hit[at : at + n].all()),
                predicted=tuple(pred_list[at : at + n]),
            )
            at += n
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenProb:
    token: str
    prob: float


@torch.no_grad()
def top_k_next(model, tok, prompt: str, k: int = 5) -> list[TokenProb]:
    device = input_device(model)
    ids = torch.tensor([tokens.ids(tok, prompt)], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()  # (V,)
    probs, idx = logits.softmax(-1).topk(k)
    return [TokenProb(tok.decode([int(i)]), float(p)) for p, i in zip(probs, idx)]


@torch.no_grad()
def greedy(model, tok, prompt: str, max_new_tokens: int = 8) -> str:
    """Greedy continuation (stops at EOS or a newline)."""
    device = input_device(model)
    ids = torch.tensor([tokens.ids(tok, prompt)], device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokens.pad_id(tok),
    )
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return text.split("\n")[0]
