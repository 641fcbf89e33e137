"""Values: the residual-stream shift δ that makes the model say each new target.

For every fact e we optimise δ_e (d_model), added to the output of block ``layer`` at the
subject's last token, to minimise

    NLL(target | each rewrite prompt)              teacher-forced, mean per token, mean over prompts
  + kl_factor · KL(p_δ ‖ p_0) on "{subject} is a"  keeps what the subject is
  + weight_decay · ‖δ_e‖ / ‖h_e‖²                  h_e: the unedited hidden state there

with Adam (``lr``) or, with ``step_norm`` > 0, normalised gradient steps of step_norm·‖h_e‖ each,
‖δ_e‖ ≤ clamp · ‖h_e‖, stopping fact e as soon as its target is the argmax at every target position
of every rewrite prompt (ENCORE's most-probable early stopping).

Why the step matters: the solver writes δ into the weights, and what an edit does to every other
key grows with ‖δ‖² (``tr(Δ C0 Δᵀ) = tr(R (KᵀC0⁻¹K)⁻¹ Rᵀ)`` for EMMET, R = δᵀ). Adam's first
step is −lr·sign(g): every coordinate moves by lr, wanted or not, and its momentum carries δ on
past the point where the target wins. A normalised step moves only along the gradient; on the
default model it reaches the targets with about half Adam's ‖δ‖ (docs/results.md).

All facts of a batch are optimised together: one δ per fact, losses summed. Each loss depends
only on its own δ and Adam is element-wise, so this is the same arithmetic as one fact at a time;
facts that have stopped are dropped from the batch and their δ frozen (a normalised step, too,
is per fact).

Only what δ reaches is recomputed. Blocks ``0..layer`` do not depend on δ, and neither does any
position before the subject's last token: both run once (``prefix_cache.Prefill``), and every
step restarts the model above ``layer`` on each row's positions from the subject's last token on,
attending to the cached keys and values of the rest. Rows are grouped by the length of that part
so right-padding costs little, and the LM head runs only where a loss reads it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from kedit.editing import arch, cpu, forward, prefix_cache, tokens
from kedit.editing.chat import chat_rewrite_template
from kedit.editing.placement import input_device
from kedit.editing.prefixes import templates
from kedit.errors import EditCancelled, UsageError
from kedit.facts import Fact

KL_TEMPLATE = "{} is a"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValueConfig:
    lr: float = 0.5
    steps: int = 25
    # 0: Adam with ``lr`` (every record written before this field). > 0: normalised gradient
    # descent, each step moving δ_e by step_norm·‖h_e‖ along −∇ (see the module docstring).
    step_norm: float = 0.0
    weight_decay: float = 1e-3
    clamp: float = 4.0  # ‖δ‖ ≤ clamp · ‖h‖
    kl_factor: float = 0.0625
    early_stop: bool = True
    max_rows: int = 512  # rows per forward pass; larger batches accumulate gradients
    reuse_prefix: bool = True  # run only the positions δ reaches on each step (prefix_cache.py)
    # Run the prefill, whose keys and values the steps reuse, under the steps' attention kernel
    # (_attention_for_backward: plain math on CPU), so the reuse self-check compares caching, not
    # two kernels' rounding. In bf16 the two kernels drift apart as a session's edits pile up
    # (0.19 after 176 edits on the default model, over the check's 0.1), and such a commit then ran
    # whole rows, twice the time. False: the default kernel (records written before it existed).
    prefill_like_steps: bool = True
    # The self-check's second opinion on a row that misses the prefill by more than its tolerance:
    # run that row again whole, from its block-``layer`` output moved by one rounding. If that
    # misses the prefill at least half as much, the blocks above amplify rounding on this row and
    # the miss says nothing about the cache, which is kept. A heavily edited model does this in
    # bf16: after 688 edits on the default model one row's cached pass missed by 0.28, the row
    # rerun from one rounding by 0.27, and every bf16 pass of it, cached or not, was 0.27–0.43
    # from float32. False: any row over the tolerance runs whole rows (records written before it).
    reuse_check_rounding: bool = True
    # The stopping rule (with early_stop). A fact stops once its target is the argmax at every
    # target position of every rewrite prompt, and also, where set:
    min_prob: float = 0.0  # every rewrite prompt gives the target probability ≥ min_prob (exp of −mean token NLL)
    margin: float = 0.0  # log p(target) − log p(best other token) ≥ margin (nats) at every target position
    patience: int = 1  # for this many consecutive steps (ENCORE: 2)
    # 0 (the defaults) is the plain argmax rule, so records written before these existed replay as they were.
    # Instruct models: also fit each fact's prompt asked as a chat turn, the target following the
    # assistant's restatement of it (chat.chat_rewrite_template). Off in records made before it.
    chat: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "step_norm", "clamp", "min_prob", "margin"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"values.{name} must be ≥ 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ValueResult:
    delta: torch.Tensor  # (E, d_model) float32
    h_init: torch.Tensor  # (E, d_model) float32, block output at the subject (the reference prompt)
    steps: tuple[int, ...]  # optimisation steps each fact took
    nll: tuple[float, ...]  # final target NLL per fact
    converged: tuple[bool, ...]  # the stopping rule held when it stopped


ProgressFn = Callable[[int, int, float, int], None]  # (step, total, mean loss of active facts, facts done)
# For measuring stopping rules (benchmarks/tune_values.py): called on every step, before the update,
# with (step, the group's δ (E, d_model), per fact a list of (probability, smallest log-probability
# lead over the best other token, target is argmax everywhere) for each of its rewrite prompts).
Observer = Callable[[int, torch.Tensor, list], None]


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
    observer: Observer | None = None,
    first_token: bool = False,
) -> ValueResult:
    """δ for every fact. Facts are optimised in groups of at most ``cfg.max_rows`` rows (one
    forward pass per step each), so the cached prefixes and hidden states of a batch of thousands
    stay bounded; a fact's loss involves only its own rows, so its group changes nothing but the
    kernels' shapes. Every fact is tokenised before any work starts (a bad one fails first).
    ``first_token``: see ``rewrite_templates``."""
    per_fact = [
        ([tokens.rewrite_row(tok, t, f.subject, f.target)
          for t in rewrite_templates(tok, f, prefixes, cfg.chat, first_token)],
         tokens.plain_row(tok, KL_TEMPLATE, f.subject))
        for f in facts
    ]
    if not cfg.reuse_prefix:  # the arithmetic of records made before groups existed: one group
        return _optimize_group(model, per_fact, tokens.pad_id(tok), layer, cfg, progress, should_stop, observer)
    parts, done_before = [], 0
    for group in fact_groups([len(rw) + 1 for rw, _ in per_fact], cfg.max_rows):

        def prog(step: int, total: int, loss: float, n_done: int, base: int = done_before) -> None:
            if progress is not None:
                progress(step, total, loss, base + n_done)

        parts.append(_optimize_group(model, [per_fact[i] for i in group], tokens.pad_id(tok), layer, cfg, prog, should_stop,
                                     observer))
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


def rewrite_templates(tok, fact: Fact, prefixes: tuple[str, ...], chat: bool, first_token: bool = False) -> list[str]:
    """The prompts a fact's δ is fitted on: the bare prompt, one per context prefix, and with
    ``chat`` the prompt as a chat turn (the key stays the subject's last token in each). The
    first is the fact's reference (its hidden state sets δ's scale). A bare prompt whose subject
    is the text's first token (``tokens.at_first_token``) is left out where prefixes exist, unless
    ``first_token`` (the reference code's prompts)."""
    out = templates(fact.prompt, prefixes)
    if not first_token and len(out) > 1 and tokens.at_first_token(tok, out[0], fact.subject):
        out = out[1:]
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


# -- one group: the steps of the optimisation ---------------------------------------------------


@dataclass
class _Layout:
    """Every rewrite prompt of every fact, then each fact's KL prompt, as one right-padded batch."""

    rows: list[tokens.Row]
    packs: list[_Pack]  # per fact
    owner: list[int]  # row -> fact
    is_kl: list[bool]  # row -> is it a KL prompt
    n_rewrite: torch.Tensor  # (E,) float, rewrite prompts per fact
    input_ids: torch.Tensor  # (R, T)
    mask: torch.Tensor  # (R, T)
    subj: torch.Tensor  # (R,) the subject's last token


def _layout(per_fact: list[tuple[list[tokens.Row], tokens.Row]], pad: int, device) -> _Layout:
    rows: list[tokens.Row] = []
    packs: list[_Pack] = []
    for rewrite, _ in per_fact:
        first = len(rows)
        rows += rewrite
        packs.append(_Pack(rows=list(range(first, len(rows))), kl_row=-1))
    for e, (_, kl_row) in enumerate(per_fact):
        packs[e].kl_row = len(rows)
        rows.append(kl_row)
    owner, is_kl = [0] * len(rows), [False] * len(rows)
    for e, p in enumerate(packs):
        for r in p.rows + [p.kl_row]:
            owner[r] = e
        is_kl[p.kl_row] = True
    input_ids, mask = tokens.collate(rows, pad, device)  # (R, T)
    subj = torch.tensor([r.subject_index for r in rows], device=device)  # (R,)
    n_rewrite = torch.tensor([len(p.rows) for p in packs], dtype=torch.float32, device=device)  # (E,)
    return _Layout(rows, packs, owner, is_kl, n_rewrite, input_ids, mask, subj)


@dataclass
class _Ctx:
    """What every forward pass of a group shares."""

    model: object
    body: object  # the base model (no LM head)
    inject: object  # forward.restart_above's handle: block ``layer`` outputs inject.hidden
    lay: _Layout
    pre: prefix_cache.Prefill
    delta: torch.Tensor  # (E, d_model) the parameters
    cfg: ValueConfig
    kl_init: dict  # KL row -> its log-probabilities at δ = 0
    observe: bool = False  # collect per-prompt figures for an observer


@dataclass
class _Scores:
    """One step's terms per fact (E entries each), summed over the rows of the active facts."""

    loss: torch.Tensor  # (E,) target NLL (mean over prompts) + kl_factor·KL, with gradient
    nll: torch.Tensor  # (E,) the target NLL alone, detached
    ok: list[list[bool]]  # per fact: the stopping rule on each of its rewrite prompts
    seen: list[list] | None = None  # per fact, per rewrite prompt: (prob, margin, argmax) for an observer


def _optimize_group(
    model,
    per_fact: list[tuple[list[tokens.Row], tokens.Row]],  # (rewrite rows, KL row) of each fact
    pad: int,
    layer: int,
    cfg: ValueConfig,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
    observer: Observer | None = None,
) -> ValueResult:
    device = input_device(model)
    lay = _layout(per_fact, pad, device)
    E = len(lay.packs)
    # once, without gradients: blocks 0..layer everywhere, and what δ cannot reach above it
    with _attention_for_backward(device) if cfg.prefill_like_steps else contextlib.nullcontext():
        pre = prefix_cache.Prefill(model, layer, lay.input_ids, lay.mask, lay.subj, cfg.max_rows, reuse=cfg.reuse_prefix)
    hd = pre.hidden.device  # block `layer`'s device: δ and the losses live there (a spread model's GPUs differ)
    lay.n_rewrite = lay.n_rewrite.to(hd)
    ref = torch.tensor([p.rows[0] for p in lay.packs], device=hd)  # each fact's reference prompt
    h_init = pre.hidden[ref, lay.subj.to(hd)[ref]].float()  # (E, d_model)
    h_norm = h_init.norm(dim=-1)  # (E,)
    delta = torch.zeros_like(h_init, requires_grad=True)  # (E, d_model)
    opt = torch.optim.Adam([delta], lr=cfg.lr) if cfg.step_norm == 0 else _Normalised(delta, cfg.step_norm * h_norm)
    facts = _FactState(E, cfg)
    with _frozen(model), forward.restart_above(model, layer) as inject, _attention_for_backward(device):
        ctx = _Ctx(model, arch.base_model(model), inject, lay, pre, delta, cfg, {}, observe=observer is not None)
        for step in range(cfg.steps):
            if should_stop is not None and should_stop():
                raise EditCancelled("edit cancelled while optimising values; no weight was changed")
            active = facts.active()
            if not active:
                break
            cpu.rebalance()  # an evaluation follows other kedit processes; a commit keeps its count
            opt.zero_grad(set_to_none=False)
            scores = _score_step(ctx, active, check=step == 0 and pre.reusing)
            if observer is not None:
                observer(step, delta.detach().clone(), scores.seen)
            act = torch.tensor(active, device=hd)
            loss = scores.loss[act] + cfg.weight_decay * delta[act].norm(dim=-1) / h_norm[act] ** 2  # (n_active,)
            keep = facts.retire(active, scores, step)
            if keep:
                loss[torch.tensor(keep, device=hd)].sum().backward()
            if progress is not None:
                progress(step + 1, cfg.steps, float(loss.detach().mean()), facts.n_done)
            if facts.n_done == E:
                break
            _step_and_clamp(opt, delta, facts.done, cfg.clamp * h_norm)

    out = delta.detach().clone()
    assert out.shape == (E, h_init.shape[1]), f"delta {tuple(out.shape)} != ({E}, {h_init.shape[1]})"
    return ValueResult(delta=out.cpu(), h_init=h_init.detach().cpu(), steps=tuple(facts.steps),
                       nll=tuple(facts.nll), converged=tuple(facts.converged))


@contextlib.contextmanager
def _frozen(model):
    """The model in eval mode with no parameter requiring a gradient (δ is the only parameter)."""
    grad_flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _score_step(ctx: _Ctx, active: list[int], check: bool) -> _Scores:
    """Forward the active facts' rows (grouped by length); on the first step, the reuse
    self-check, falling back to whole rows if the cached prefixes do not reproduce the prefill."""
    lay, pre = ctx.lay, ctx.pre
    act_rows = [r for e in active for r in lay.packs[e].rows + [lay.packs[e].kl_row]]
    E, device = len(lay.packs), ctx.delta.device
    while True:
        scores = _Scores(torch.zeros(E, device=device), torch.zeros(E, device=device), [[] for _ in range(E)],
                         [[] for _ in range(E)] if ctx.observe else None)
        lengths = [len(lay.rows[r].input_ids) - int(pre.start[r]) for r in act_rows]  # positions each pass runs
        try:
            for bucket in length_buckets(lengths, ctx.cfg.max_rows):
                _run_rows(ctx, [act_rows[i] for i in bucket], scores, check)
            break
        except _ReuseMismatch as err:
            log.warning("cached prefix does not reproduce the full forward pass (%s); running whole rows", err)
            pre.disable()
            ctx.kl_init.clear()
            check = False
    pre.checked()
    return scores


def _run_rows(ctx: _Ctx, bucket: list[int], scores: _Scores, check: bool) -> None:
    """One forward pass over the rows ``bucket`` with each fact's δ added; adds their terms to ``scores``."""
    lay, hd = ctx.lay, ctx.delta.device
    sel = torch.tensor(bucket, device=lay.subj.device)
    fid = torch.tensor([lay.owner[r] for r in bucket], device=hd)  # (r,)
    x = ctx.pre.batch(sel)
    slot = (lay.subj[sel] - x.start).to(hd)  # (r,) where the subject's last token sits in the pass
    h = x.hidden.clone()  # (r, S, d_model)
    ar = torch.arange(len(bucket), device=hd)
    h[ar, slot] = h[ar, slot] + ctx.delta[fid].to(h.dtype)
    ctx.inject.hidden = h
    last = ctx.body(input_ids=x.input_ids, attention_mask=x.attention_mask, position_ids=x.position_ids,
                    **prefix_cache.cache_kwargs(ctx.body, x.cache)).last_hidden_state  # (r, S, d_model)
    if check:  # δ = 0 on the first step: the cached path must reproduce the prefill
        _check_reuse(ctx, bucket, x, last.detach())
    rw = [j for j, r in enumerate(bucket) if not lay.is_kl[r]]
    if rw:
        _target_terms(ctx, bucket, rw, last, x.start, fid, scores)
    kj = [j for j, r in enumerate(bucket) if lay.is_kl[r]]
    if kj:
        _kl_terms(ctx, bucket, kj, last, slot, fid, scores)


def _target_terms(ctx: _Ctx, bucket, rw: list[int], last, start, fid, scores: _Scores) -> None:
    """Teacher-forced target NLL (mean per token, then mean over the fact's prompts), read only
    at the target positions (the LM head is the costly part), and the stopping rule per prompt."""
    rows, hd = ctx.lay.rows, ctx.delta.device
    bj = torch.tensor([j for j in rw for _ in rows[bucket[j]].target_positions], device=last.device)
    bp = torch.tensor([p - int(start[j]) for j in rw for p in rows[bucket[j]].target_positions], device=last.device)
    logp = arch.logits(ctx.model, last[bj, bp]).float().log_softmax(-1)  # (P, V) on the LM head's device
    hv = logp.device
    tt = torch.tensor([t for j in rw for t in rows[bucket[j]].target_ids], device=hv)  # (P,)
    tok_nll = -logp.gather(1, tt[:, None])[:, 0]  # (P,)
    counts = torch.tensor([len(rows[bucket[j]].target_ids) for j in rw], device=hv)  # (n_rw,)
    row_of_tok = torch.repeat_interleave(torch.arange(len(rw), device=hv), counts)  # (P,)
    row_nll = torch.zeros(len(rw), device=hv).index_add(0, row_of_tok, tok_nll) / counts  # (n_rw,)
    f_rw = fid[torch.tensor(rw, device=hd)]
    contrib = row_nll.to(hd) / ctx.lay.n_rewrite[f_rw]  # mean over the fact's prompts
    scores.loss = scores.loss.index_add(0, f_rw, contrib)
    scores.nll.index_add_(0, f_rw, contrib.detach())
    ok = _stop_rule(logp.detach(), tt, row_of_tok, row_nll.detach(), ctx.cfg)
    for j, o in zip(rw, ok):
        scores.ok[ctx.lay.owner[bucket[j]]].append(o)
    if scores.seen is not None:
        seen = _prompt_figures(logp.detach(), tt, row_of_tok, row_nll.detach())
        for j, x in zip(rw, seen):
            scores.seen[ctx.lay.owner[bucket[j]]].append(x)


def _prompt_figures(logp, tt, row_of_tok, row_nll) -> list[tuple[float, float, bool]]:
    """Per rewrite prompt: target probability, smallest lead over the best other token, all argmax."""
    target = logp.gather(1, tt[:, None])[:, 0]  # (P,)
    lead = target - logp.scatter(1, tt[:, None], float("-inf")).max(-1).values  # (P,)
    n = row_nll.shape[0]
    low = torch.full((n,), float("inf"), device=lead.device).scatter_reduce(0, row_of_tok, lead, reduce="amin")
    return [(float(p), float(m), float(m) > 0) for p, m in zip(torch.exp(-row_nll), low)]


def _stop_rule(logp: torch.Tensor, tt: torch.Tensor, row_of_tok: torch.Tensor, row_nll: torch.Tensor,
               cfg: ValueConfig) -> list[bool]:
    """Per rewrite prompt: the target is the argmax at each of its positions, leads the best
    other token by ``cfg.margin`` nats there, and has probability ≥ ``cfg.min_prob``."""
    tok_ok = logp.argmax(-1) == tt  # (P,)
    if cfg.margin > 0:
        target = logp.gather(1, tt[:, None])[:, 0]  # (P,)
        other = logp.scatter(1, tt[:, None], float("-inf")).max(-1).values  # (P,)
        tok_ok &= target - other >= cfg.margin
    bad = torch.zeros_like(row_nll).index_add(0, row_of_tok, (~tok_ok).float())  # (n_rw,)
    row_ok = bad == 0
    if cfg.min_prob > 0:
        row_ok &= torch.exp(-row_nll) >= cfg.min_prob
    return row_ok.tolist()


def _kl_terms(ctx: _Ctx, bucket, kj: list[int], last, slot, fid, scores: _Scores) -> None:
    """kl_factor · KL(p_δ ‖ p_0) of the next token after "{subject} is a", at the subject's last token."""
    kj_t = torch.tensor(kj, device=last.device)
    kl_logp = arch.logits(ctx.model, last[kj_t, slot.to(last.device)[kj_t]]).float().log_softmax(-1)  # (k, V)
    for i, j in enumerate(kj):
        ctx.kl_init.setdefault(bucket[j], kl_logp[i].detach())
    ref = torch.stack([ctx.kl_init[bucket[j]] for j in kj])  # (k, V)
    kl = (kl_logp.exp() * (kl_logp - ref)).sum(-1).to(ctx.delta.device)  # (k,)
    scores.loss = scores.loss.index_add(0, fid[kj_t.to(ctx.delta.device)], ctx.cfg.kl_factor * kl)


class _FactState:
    """Which facts are still optimised, and what each one reports."""

    def __init__(self, E: int, cfg: ValueConfig) -> None:
        self.cfg = cfg
        self.done = torch.zeros(E, dtype=torch.bool)
        self.steps = [cfg.steps] * E
        self.nll = [float("nan")] * E
        self.converged = [False] * E
        self.streak = [0] * E  # consecutive steps the stopping rule held

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    def active(self) -> list[int]:
        return [e for e in range(len(self.steps)) if not self.done[e]]

    def retire(self, active: list[int], scores: _Scores, step: int) -> list[int]:
        """Retire the facts that met the stopping rule (or ran out of steps); returns the
        positions in ``active`` of those still optimised."""
        keep = []
        final = step == self.cfg.steps - 1
        for i, e in enumerate(active):
            self.nll[e] = float(scores.nll[e])
            self.converged[e] = all(scores.ok[e])
            self.streak[e] = self.streak[e] + 1 if self.converged[e] else 0
            if (self.cfg.early_stop and self.streak[e] >= self.cfg.patience) or final:
                self.done[e] = True
                self.steps[e] = step
            else:
                keep.append(i)
        return keep


def _step_and_clamp(opt, delta: torch.Tensor, done: torch.Tensor, limit: torch.Tensor) -> None:
    """An optimiser step for the facts still optimised (retired ones keep their δ), then ‖δ_e‖ ≤ limit_e."""
    frozen = delta.detach()[done].clone()
    opt.step()
    with torch.no_grad():
        delta[done] = frozen
        norm = delta.norm(dim=-1)  # (E,)
        scale = torch.where(norm > limit, limit / norm.clamp_min(1e-12), torch.ones_like(norm))
        delta.mul_(scale[:, None])


class _Normalised:
    """Normalised gradient descent, per fact: δ_e moves by length_e along −g_e/‖g_e‖."""

    def __init__(self, delta: torch.Tensor, length: torch.Tensor) -> None:
        self.delta, self.length = delta, length  # (E, d_model), (E,)

    def zero_grad(self, set_to_none: bool = False) -> None:
        if self.delta.grad is not None:
            self.delta.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        g = self.delta.grad  # (E, d_model); None before any fact's loss had a gradient
        if g is not None:
            self.delta.sub_(g * (self.length / g.norm(dim=-1).clamp_min(1e-30))[:, None])


class _ReuseMismatch(Exception):
    pass


def _check_reuse(ctx: _Ctx, bucket: list[int], x: prefix_cache.StepInputs, last: torch.Tensor) -> None:
    """Relative difference per row between the suffix pass and the prefill, at δ = 0. Rounding
    alone gives ~2e-2 in bfloat16 through SmolLM2's 28 upper blocks and ~1e-7 in float64; a wrong
    mask or position is off by tens of percent on every row it touches. A row over the tolerance
    gets a second opinion (``ValueConfig.reuse_check_rounding``): how much its own rounding moves it."""
    tol = 0.1 if x.reference.element_size() < 4 else 1e-3
    miss = _relative_miss(last, x.reference, x.valid)  # (r,)
    log.debug("prefix reuse self-check: worst relative difference %.3g", float(miss.max()))
    for j in torch.nonzero(~(miss <= tol)).flatten().tolist():  # NaN counts as over
        if not ctx.cfg.reuse_check_rounding:
            raise _ReuseMismatch(f"relative difference {float(miss[j]):.3g} > {tol}")
        rounding = _rounding_miss(ctx, bucket[j], x, j)
        if not float(miss[j]) <= 2 * rounding:
            raise _ReuseMismatch(f"relative difference {float(miss[j]):.3g} > {tol}; one rounding "
                                 f"moves the row by {rounding:.3g}")
        log.info("prefix reuse self-check: a row misses by %.3g, and one rounding moves it by %.3g: "
                 "rounding, the cache is kept", float(miss[j]), rounding)


def _relative_miss(out: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """‖out − reference‖ / ‖reference‖ per row over the valid positions: (r, S, d) → (r,)."""
    valid = valid.to(out.device)[..., None]  # (r, S, 1)
    diff = ((out - reference.to(out.device)).float() * valid).norm(dim=(1, 2))  # (r,)
    return diff / (reference.to(out.device).float() * valid).norm(dim=(1, 2)).clamp_min(1e-12)


def _rounding_miss(ctx: _Ctx, row: int, x: prefix_cache.StepInputs, j: int) -> float:
    """How far row ``row`` (slot ``j`` of the pass ``x``) lands from the prefill at the positions
    the pass checked when it runs again whole, alone, with block ``layer``'s output moved by one
    rounding of its precision (each element to its next value up or down, at random from a fixed
    seed): how much the blocks above amplify rounding on this row."""
    pre, S = ctx.pre, x.valid.shape[1]
    L = int(pre.length[row])
    h = pre.hidden[row : row + 1, :L].cpu()  # (1, L, d_model) blocks 0..layer, as the prefill ran them
    up = torch.rand(h.shape, generator=torch.Generator().manual_seed(0)) < 0.5  # (1, L, d_model)
    # on the CPU, which has nextafter for every float type (one row: cheap)
    moved = torch.nextafter(h, torch.where(up, torch.inf, -torch.inf).to(h.dtype))  # (1, L, d_model)
    ctx.inject.hidden = moved.to(pre.hidden.device)
    with torch.no_grad():
        whole = ctx.body(input_ids=pre.input_ids[row : row + 1, :L],
                         **prefix_cache.cache_kwargs(ctx.body, None)).last_hidden_state  # (1, L, d_model)
    # suffix slot i is position start + i; padding slots (masked below) are clamped into the row
    pos = (int(x.start[j]) + torch.arange(S)).clamp_max(L - 1).to(whole.device)  # (S,)
    return float(_relative_miss(whole[:, pos], x.reference[j : j + 1], x.valid[j : j + 1]))


def _attention_for_backward(device):
    """On CPU, PyTorch's flash-attention backward is ~9x its forward in bf16 (measured here); the
    plain-math SDPA kernel backpropagates through ordinary matmuls and makes a value step 1.5x
    faster. GPUs keep their fused kernels."""

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
