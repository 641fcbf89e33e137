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
facts that have stopped are dropped from the batch and their δ frozen.

Only what δ reaches is recomputed. Blocks ``0..layer`` do not depend on δ, and neither does any
position before the subject's last token: both run once (``prefix_cache.Prefill``), and every
step restarts the model above ``layer`` on each row's positions from the subject's last token on,
attending to the cached keys and values of the rest. Rows are grouped by the length of that part
so right-padding costs little, and the LM head runs only where a loss reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from kedit.editing import arch, forward, prefix_cache, tokens
from kedit.editing.chat import chat_rewrite_template
from kedit.editing.placement import input_device
from kedit.editing.prefixes import templates
from kedit.errors import EditCancelled
from kedit.facts import Fact

KL_TEMPLATE = "{} is a"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValueConfig:
    lr: float = 0.5
    steps: int = 25
    weight_decay: float = 1e-3
    clamp: float = 4.0  # ‖δ‖ ≤ clamp · ‖h‖
    kl_factor: float = 0.0625
    early_stop: bool = True
    max_rows: int = 512  # rows per forward pass; larger batches accumulate gradients
    reuse_prefix: bool = True  # run only the positions δ reaches on each step (prefix_cache.py)
    # Instruct models: also fit each fact's prompt asked as a chat turn, the target following the
    # assistant's restatement of it (chat.chat_rewrite_template). Off in records made before it.
    chat: bool = False


@dataclass(frozen=True)
class ValueResult:
    delta: torch.Tensor  # (E, d_model) float32
    h_init: torch.Tensor  # (E, d_model) float32, block output at the subject (bare prompt)
    steps: tuple[int, ...]  # optimisation steps each fact took
    nll: tuple[float, ...]  # final target NLL per fact
    converged: tuple[bool, ...]  # target was argmax everywhere when it stopped


ProgressFn = Callable[[int, int, float, int], None]  # (step, total, mean loss of active facts, facts done)


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
    """δ for every fact. Facts are optimised in groups of at most ``cfg.max_rows`` rows (one
    forward pass per step each), so the cached prefixes and hidden states of a batch of thousands
    stay bounded; a fact's loss involves only its own rows, so its group changes nothing but the
    kernels' shapes. Every fact is tokenised before any work starts (a bad one fails first)."""
    per_fact = [
        ([tokens.rewrite_row(tok, t, f.subject, f.target) for t in rewrite_templates(tok, f, prefixes, cfg.chat)],
         tokens.plain_row(tok, KL_TEMPLATE, f.subject))
        for f in facts
    ]
    if not cfg.reuse_prefix:  # the arithmetic of records made before groups existed: one group
        return _optimize_group(model, per_fact, tokens.pad_id(tok), layer, cfg, progress, should_stop)
    parts, done_before = [], 0
    for group in fact_groups([len(rw) + 1 for rw, _ in per_fact], cfg.max_rows):

        def prog(step: int, total: int, loss: float, n_done: int, base: int = done_before) -> None:
            if progress is not None:
                progress(step, total, loss, base + n_done)

        parts.append(_optimize_group(model, [per_fact[i] for i in group], tokens.pad_id(tok), layer, cfg, prog, should_stop))
        done_before += len(group)
    if len(parts) == 1:
        return parts[0]
    return ValueResult(
        delta=torch.cat([r.delta for r in parts]),
        h_init=torch.cat([r.h_init for r in parts]),
        steps=sum((r.steps for r in parts), ()),
        nll=sum((r.nll for r in parts), ()),
        converged=sum((r.converged for r in parts), ()),
    )


def rewrite_templates(tok, fact: Fact, prefixes: tuple[str, ...], chat: bool) -> list[str]:
    """The prompts a fact's δ is fitted on: the bare prompt, one per context prefix, and with
    ``chat`` the prompt as a chat turn (the key stays the subject's last token in each)."""
    out = templates(fact.prompt, prefixes)
    return out + [chat_rewrite_template(tok, fact.prompt, fact.subject)] if chat else out


def fact_groups(rows_per_fact: list[int], max_rows: int) -> list[list[int]]:
    """Consecutive facts whose rows add up to at most ``max_rows`` (a larger fact alone)."""
    groups: list[list[int]] = []
    size = 0
    for i, n in enumerate(rows_per_fact):
        if not groups or size + n > max_rows:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


def _optimize_group(
    model,
    per_fact: list[tuple[list[tokens.Row], tokens.Row]],  # (rewrite rows, KL row) of each fact
    pad: int,
    layer: int,
    cfg: ValueConfig,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> ValueResult:
    device = input_device(model)
    E = len(per_fact)

    # -- rows: every rewrite prompt of every fact, then each fact's KL prompt ----------------
    rows: list[tokens.Row] = []
    packs: list[_Pack] = []
    for rewrite, _ in per_fact:
        first = len(rows)
        rows += rewrite
        packs.append(_Pack(rows=list(range(first, len(rows))), kl_row=-1))
    for e, (_, kl_row) in enumerate(per_fact):
        packs[e].kl_row = len(rows)
        rows.append(kl_row)
    input_ids, mask = tokens.collate(rows, pad, device)  # (R, T)
    subj = torch.tensor([r.subject_index for r in rows], device=device)  # (R,)

    # -- once, without gradients: blocks 0..layer everywhere, and what δ cannot reach above it --
    pre = prefix_cache.Prefill(model, layer, input_ids, mask, subj, cfg.max_rows, reuse=cfg.reuse_prefix)
    hd = pre.hidden.device  # block `layer`'s device: δ and the losses live there (a spread model's GPUs differ)
    bare = torch.tensor([p.rows[0] for p in packs], device=hd)
    h_init = pre.hidden[bare, subj.to(hd)[bare]].float()  # (E, d_model)
    h_norm = h_init.norm(dim=-1)  # (E,)

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
    n_rows_of = torch.tensor([len(p.rows) for p in packs], dtype=torch.float32, device=hd)  # (E,)
    owner_of = [0] * len(rows)  # row -> fact
    for e, p in enumerate(packs):
        for r in p.rows + [p.kl_row]:
            owner_of[r] = e
    is_kl = [False] * len(rows)
    for p in packs:
        is_kl[p.kl_row] = True
    try:
        with forward.restart_above(model, layer) as inject, _attention_for_backward(device):

            def run(bucket: list[int], loss_acc: torch.Tensor, nll_acc: torch.Tensor, hits: list[list[bool]], check: bool) -> torch.Tensor:
                """Forward the rows of ``bucket``; add each row's loss to its fact in ``loss_acc``."""
                sel = torch.tensor(bucket, device=device)
                fid = torch.tensor([owner_of[r] for r in bucket], device=hd)  # (r,)
                x = pre.batch(sel)
                slot = (subj[sel] - x.start).to(hd)  # (r,) where the subject's last token sits in the pass
                h = x.hidden.clone()  # (r, S, d_model)
                ar = torch.arange(len(bucket), device=hd)
                h[ar, slot] = h[ar, slot] + delta[fid].to(h.dtype)
                inject.hidden = h
                last = body(input_ids=x.input_ids, attention_mask=x.attention_mask, position_ids=x.position_ids,
                            **prefix_cache.cache_kwargs(body, x.cache)).last_hidden_state  # (r, S, d_model)
                if check:  # δ = 0 on the first step: the cached path must reproduce the prefill
                    _check_reuse(last, x.reference, x.valid)

                rw = [j for j, r in enumerate(bucket) if not is_kl[r]]
                if rw:  # target NLL, read only at the target positions (the LM head is the costly part)
                    bj = torch.tensor([j for j in rw for _ in rows[bucket[j]].target_positions], device=last.device)
                    bp = torch.tensor([p - int(x.start[j]) for j in rw for p in rows[bucket[j]].target_positions],
                                      device=last.device)
                    logp = arch.logits(model, last[bj, bp]).float().log_softmax(-1)  # (P, V) on the LM head's device
                    hv = logp.device
                    tt = torch.tensor([t for j in rw for t in rows[bucket[j]].target_ids], device=hv)
                    tok_nll = -logp.gather(1, tt[:, None])[:, 0]  # (P,)
                    hit = (logp.argmax(-1) == tt).tolist()
                    counts = torch.tensor([len(rows[bucket[j]].target_ids) for j in rw], device=hv)  # (n_rw,)
                    row_of_tok = torch.repeat_interleave(torch.arange(len(rw), device=hv), counts)  # (P,)
                    row_nll = torch.zeros(len(rw), device=hv).index_add(0, row_of_tok, tok_nll) / counts  # (n_rw,)
                    f_rw = fid[torch.tensor(rw, device=hd)]
                    contrib = row_nll.to(hd) / n_rows_of[f_rw]  # mean over the fact's prompts
                    loss_acc = loss_acc.index_add(0, f_rw, contrib)
                    nll_acc.index_add_(0, f_rw, contrib.detach())
                    at = 0
                    for j, n in zip(rw, counts.tolist()):
                        hits[owner_of[bucket[j]]].append(all(hit[at : at + n]))
                        at += n

                kj = [j for j, r in enumerate(bucket) if is_kl[r]]
                if kj:  # KL on "{subject} is a" at the subject's last token
                    kj_t = torch.tensor(kj, device=last.device)
                    kl_logp = arch.logits(model, last[kj_t, slot.to(last.device)[kj_t]]).float().log_softmax(-1)  # (k, V)
                    for i, j in enumerate(kj):
                        kl_init.setdefault(bucket[j], kl_logp[i].detach())
                    ref = torch.stack([kl_init[bucket[j]] for j in kj])  # (k, V)
                    kl = (kl_logp.exp() * (kl_logp - ref)).sum(-1).to(hd)  # (k,)
                    loss_acc = loss_acc.index_add(0, fid[kj_t.to(hd)], cfg.kl_factor * kl)
                return loss_acc

            for step in range(cfg.steps):
                if should_stop is not None and should_stop():
                    raise EditCancelled("edit cancelled while optimising values; no weight was changed")
                active = [e for e in range(E) if not done[e]]
                if not active:
                    break
                opt.zero_grad(set_to_none=False)
                final = step == cfg.steps - 1
                act_rows = [r for e in active for r in packs[e].rows + [packs[e].kl_row]]
                while True:
                    loss_acc = torch.zeros(E, device=hd)
                    nll_acc = torch.zeros(E, device=hd)
                    hits: list[list[bool]] = [[] for _ in range(E)]
                    check = step == 0 and pre.reusing
                    lengths = [len(rows[r].input_ids) - int(pre.start[r]) for r in act_rows]  # positions each pass runs
                    try:
                        for bucket in length_buckets(lengths, cfg.max_rows):
                            loss_acc = run([act_rows[i] for i in bucket], loss_acc, nll_acc, hits, check)
                        break
                    except _ReuseMismatch as err:
                        log.warning("cached prefix does not reproduce the full forward pass (%s); running whole rows", err)
                        pre.disable()
                        kl_init.clear()
                pre.checked()
                act = torch.tensor(active, device=hd)
                wd = cfg.weight_decay * delta[act].norm(dim=-1) / h_norm[act] ** 2  # (n_active,)
                loss = loss_acc[act] + wd  # (n_active,)
                keep = []
                for i, e in enumerate(active):
                    last_nll[e] = float(nll_acc[e])
                    converged[e] = all(hits[e])
                    if (cfg.early_stop and converged[e]) or final:
                        done[e] = True
                        steps_taken[e] = step
                    else:
                        keep.append(i)
                if keep:
                    loss[torch.tensor(keep, device=hd)].sum().backward()
                if progress is not None:
                    progress(step + 1, cfg.steps, float(loss.detach().mean()), int(done.sum()))
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


class _ReuseMismatch(Exception):
    pass


def _check_reuse(last: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> None:
    """Relative difference per row between the suffix pass and the prefill, at δ = 0. Rounding
    alone gives ~2e-2 in bfloat16 through SmolLM2's 28 upper blocks and ~1e-7 in float64; a wrong
    mask or position is off by tens of percent."""
    tol = 0.1 if reference.element_size() < 4 else 1e-3
    valid = valid.to(last.device)
    diff = ((last.detach() - reference).float() * valid[..., None]).norm(dim=(1, 2))  # (r,)
    ref = (reference.float() * valid[..., None]).norm(dim=(1, 2)).clamp_min(1e-12)  # (r,)
    worst = float((diff / ref).max())
    log.debug("prefix reuse self-check: worst relative difference %.3g", worst)
    if not worst <= tol:
        raise _ReuseMismatch(f"relative difference {worst:.3g} > {tol}")


def _attention_for_backward(device):
    """On CPU, PyTorch's flash-attention backward is ~9x its forward in bf16 (measured here); the
    plain-math SDPA kernel backpropagates through ordinary matmuls and makes a value step 1.5x
    faster. GPUs keep their fused kernels."""
    import contextlib

    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def length_buckets(lengths: list[int], max_rows: int, groups: int = 3, overhead: int = 96) -> list[list[int]]:
    """Indices grouped so that right-padding wastes little: sorted by length, cut into at most
    ``groups`` runs chosen to minimise the padded token count plus ``overhead`` tokens for every
    extra forward pass (DP over distinct lengths), each run split further to at most ``max_rows``
    rows. A single fact's few rows stay one pass; a batch's hundreds are split."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    distinct = sorted(set(lengths))
    count = [sum(1 for x in lengths if x == d) for d in distinct]
    n = len(distinct)
    prefix = [0]
    for c in count:
        prefix.append(prefix[-1] + c)
    # best[g][j]: minimal padded tokens covering distinct[:j] with g runs; cut[g][j]: start of the last run
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(groups + 1)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = 0
    for g in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                c = best[g - 1][i] + (prefix[j] - prefix[i]) * distinct[j - 1]
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, groups + 1), key=lambda g: best[g][n] + overhead * (g - 1))
    bounds, j = [], n
    while j > 0:
        i = cut[g][j]
        bounds.append((prefix[i], prefix[j]))
        j, g = i, g - 1
    out = []
    for a, b in reversed(bounds):
        run = order[a:b]
        out += [run[s : s + max_rows] for s in range(0, len(run), max_rows)]
    return out
