"""Values: the residual-stream shift δ that makes the model say each new target.

For every fact e we optimise δ_e (d_model), added to the output of block ``layer`` at the
subject's last token, to minimise

    NLL(target | each rewrite prompt)              teacher-forced, mean per token, mean over prompts
  + kl_factor · KL(p_δ ‖ p_0) on "{subject} is a"  keeps what the subject is
  + weight_decay · ‖δ_e‖ / ‖h_e‖²                  h_e: the unedited hidden state there

with Adam, ‖δ_e‖ ≤ clamp · ‖h_e‖, stopping fact e as soon as its target is the argmax at every
target position of every rewrite prompt (ENCORE's most-probable early stopping).

All facts of a batch are optimised together: one δ per fact, losses summed. Each loss depends
only on its own δ and Adam is element-wise, so this is the same arithmetic as one fact at a time;
facts that have stopped are dropped from the batch and their δ frozen. Blocks ``0..layer`` do
not depend on δ: they run once, and every step restarts the model above ``layer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kedit.editing import arch, forward, tokens
from kedit.editing.prefixes import templates
from kedit.errors import EditCancelled
from kedit.facts import Fact

KL_TEMPLATE = "{} is a"


@dataclass(frozen=True)
class ValueConfig:
    lr: float = 0.5
    steps: int = 25
    weight_decay: float = 1e-3
    clamp: float = 4.0  # ‖δ‖ ≤ clamp · ‖h‖
    kl_factor: float = 0.0625
    early_stop: bool = True
    max_rows: int = 512  # rows per forward pass; larger batches accumulate gradients


@dataclass(frozen=True)
class ValueResult:
    delta: torch.Tensor  # (E, d_model) float32
    h_init: torch.Tensor  # (E, d_model) float32, block output at the subject (bare prompt)
    steps: tuple[int, ...]  # optimisation steps each fact took
    nll: tuple[float, ...]  # final target NLL per fact
    converged: tuple[bool, ...]  # target was argmax everywhere when it stopped


ProgressFn = Callable[[int, int, float, int], None]  # (step, total, mean loss, facts done)


@dataclass
class _Pack:
    """The rows of one fact, as indices into the batch tensors."""

    rows: list[int]  # rewrite rows
    kl_row: int


def optimize_values(
    model,
    tok,
    facts: list[Fact],
    layer: int,
    prefixes: tuple[str, ...],
    cfg: ValueConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ValueResult:
    device = next(model.parameters()).device
    E = len(facts)

    # -- rows: every rewrite prompt of every fact, then each fact's KL prompt ----------------
    rows: list[tokens.Row] = []
    packs: list[_Pack] = []
    for f in facts:
        first = len(rows)
        rows += [tokens.rewrite_row(tok, t, f.subject, f.target) for t in templates(f.prompt, prefixes)]
        packs.append(_Pack(rows=list(range(first, len(rows))), kl_row=-1))
    for e, f in enumerate(facts):
        packs[e].kl_row = len(rows)
        rows.append(tokens.plain_row(tok, KL_TEMPLATE, f.subject))
    input_ids, mask = tokens.collate(rows, tokens.pad_id(tok), device)  # (R, T)
    subj = torch.tensor([r.subject_index for r in rows], device=device)  # (R,)

    # -- blocks 0..layer once, without gradients ---------------------------------------------
    hidden = torch.cat(
        [
            forward.block_outputs(model, layer, input_ids[s : s + cfg.max_rows], mask[s : s + cfg.max_rows])
            for s in range(0, len(rows), cfg.max_rows)
        ]
    )  # (R, T, d_model)
    bare = torch.tensor([p.rows[0] for p in packs], device=device)
    h_init = hidden[bare, subj[bare]].float()  # (E, d_model)
    h_norm = h_init.norm(dim=-1)  # (E,)

    head = arch.output_embeddings(model)
    body = arch.base_model(model)
    delta = torch.zeros_like(h_init, requires_grad=True)  # (E, d_model)
    opt = torch.optim.Adam([delta], lr=cfg.lr)

    done = torch.zeros(E, dtype=torch.bool)
    steps_taken = [cfg.steps] * E
    last_nll = [float("nan")] * E
    converged = [False] * E
    kl_init: dict[int, torch.Tensor] = {}

    grad_flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with forward.restart_above(model, layer) as inject:

            def run(fact_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[list[bool]]]:
                """Losses (n,), NLL (n,) and per-row 'target is argmax' for these facts."""
                sel = [r for e in fact_ids for r in packs[e].rows] + [packs[e].kl_row for e in fact_ids]
                sel_t = torch.tensor(sel, device=device)
                owner = torch.tensor(
                    [i for i, e in enumerate(fact_ids) for _ in packs[e].rows] + list(range(len(fact_ids))),
                    device=device,
                )  # (r,) position in fact_ids
                fid = torch.tensor(fact_ids, device=device)
                h = hidden[sel_t].clone()  # (r, T, d_model)
                ar = torch.arange(len(sel), device=device)
                h[ar, subj[sel_t]] = h[ar, subj[sel_t]] + delta[fid][owner].to(h.dtype)
                inject.hidden = h
                out = body(input_ids=input_ids[sel_t], attention_mask=mask[sel_t], use_cache=False)
                last = out.last_hidden_state  # (r, T, d_model)

                # target NLL, read only at the target positions (the LM head is the costly part)
                tr, tp, tt, town = [], [], [], []
                for j, r in enumerate(sel[: len(sel) - len(fact_ids)]):
                    row = rows[r]
                    tr += [j] * len(row.target_positions)
                    tp += list(row.target_positions)
                    tt += list(row.target_ids)
                    town.append(len(row.target_ids))
                logp = head(last[torch.tensor(tr), torch.tensor(tp)]).float().log_softmax(-1)  # (P, V)
                tt_t = torch.tensor(tt, device=device)
                tok_nll = -logp.gather(1, tt_t[:, None])[:, 0]  # (P,)
                hit = (logp.argmax(-1) == tt_t).tolist()
                n = len(fact_ids)
                nll = torch.zeros(n, device=device)
                hits: list[list[bool]] = [[] for _ in range(n)]
                at = 0
                for j, cnt in enumerate(town):
                    i = int(owner[j])
                    nll[i] = nll[i] + tok_nll[at : at + cnt].mean() / len(packs[fact_ids[i]].rows)
                    hits[i].append(all(hit[at : at + cnt]))
                    at += cnt

                # KL on "{subject} is a" at the subject's last token
                kl_rows = sel_t[len(sel) - n :]
                kl_logp = head(last[torch.arange(len(sel) - n, len(sel)), subj[kl_rows]]).float().log_softmax(-1)
                for i, e in enumerate(fact_ids):
                    if e not in kl_init:
                        kl_init[e] = kl_logp[i].detach()
                kl_ref = torch.stack([kl_init[e] for e in fact_ids])  # (n, V)
                kl = (kl_logp.exp() * (kl_logp - kl_ref)).sum(-1)  # (n,)

                d = delta[fid]  # (n, d_model)
                wd = cfg.weight_decay * d.norm(dim=-1) / h_norm[fid] ** 2
                return nll + cfg.kl_factor * kl + wd, nll.detach(), hits

            fact_chunk = max(1, cfg.max_rows // (len(prefixes) + 2))
            for step in range(cfg.steps):
                if should_stop is not None and should_stop():
                    raise EditCancelled("edit cancelled while optimising values; no weight was changed")
                active = [e for e in range(E) if not done[e]]
                if not active:
                    break
                opt.zero_grad(set_to_none=False)
                total = 0.0
                final = step == cfg.steps - 1
                for c in range(0, len(active), fact_chunk):
                    ids_ = active[c : c + fact_chunk]
                    loss, nll, hits = run(ids_)
                    keep = []
                    for i, e in enumerate(ids_):
                        last_nll[e] = float(nll[i])
                        ok = all(hits[i])
                        converged[e] = ok
                        if (cfg.early_stop and ok) or final:
                            done[e] = True
                            steps_taken[e] = step
                        else:
                            keep.append(i)
                    total += float(loss.detach().sum())
                    if keep:
                        loss[torch.tensor(keep)].sum().backward()
                if progress is not None:
                    progress(step + 1, cfg.steps, total / len(active), int(done.sum()))
                if bool(done.all()):
                    break
                frozen = delta.detach()[done].clone()
                opt.step()
                with torch.no_grad():
                    delta[done] = frozen
                    norm = delta.norm(dim=-1)  # (E,)
                    limit = cfg.clamp * h_norm
                    scale = torch.where(norm > limit, limit / norm.clamp_min(1e-12), torch.ones_like(norm))
                    delta.mul_(scale[:, None])
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)

    out = delta.detach().clone()
    assert out.shape == (E, h_init.shape[1]), f"delta {tuple(out.shape)} != ({E}, {h_init.shape[1]})"
    return ValueResult(
        delta=out.cpu(),
        h_init=h_init.detach().cpu(),
        steps=tuple(steps_taken),
        nll=tuple(last_nll),
        converged=tuple(converged),
    )
