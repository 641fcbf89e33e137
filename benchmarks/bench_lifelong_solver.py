"""How the solver's lifelong settings shape a long session's damage, in minutes instead of hours.

    .venv/bin/python benchmarks/bench_lifelong_solver.py --records R [--offset 900] [--total 1008] \
        [--setting preserve=0.01 --setting "preserve=0.01 norm_penalty=0.01" ...]

A session of N sequential commits at the default model's edit layer, replayed as linear algebra:
the records' real keys (computed once, as a commit computes them), the real solver with each
setting (the preset, then every ``--setting``: space-separated ``NAME=VALUE`` items as ``kedit
lifelong --set``, e.g. ``preserve``, ``norm_penalty``, ``null_space``, ``stats_tokens``), and for
each fact a value shift δ of random direction and the size a commit writes (``--delta-norm``: the
mean ‖δ‖ that ``bench_commit_cost.py`` measures for the preset). No value optimisation runs, so
1,000 edits take a minute or two per setting where ``kedit lifelong`` takes an hour or more.

Printed at every checkpoint, for each setting:

* damage: tr(ΔW C_ref ΔWᵀ), the mean squared change of the edited layer's output over ordinary
  text's keys, with C_ref the key statistics of a 10× larger sample of the corpus
  (``--reference-tokens``), so that directions the solver's smaller sample underrates are counted
  at their weight; ``kedit lifelong``'s held-out perplexity follows it (docs/results.md);
* solver's view: the same with the solver's own C0 (what the solve minimises);
* ‖ΔW‖: the Frobenius norm of the summed update;
* drift: how far the layer's output at the earlier facts' keys has moved since their own commit,
  relative to ‖δ‖ (0: every earlier edit is kept exactly; 1: moved as far as it was written);
* bound: the least damage (under the solver's C0) of *any* update that writes every fact so far
  exactly, r²·tr((KᵀC0⁻¹K)⁻¹) for random δ of norm r: sequential commits that keep every earlier
  key's output exactly reach it (the joint EMMET solve), so it is what an exact memory costs.

Before the table it lists the pairs of facts whose keys are closest (cosine): two facts that
want different values at almost the same key are what makes the bound jump.

What this leaves out: real δ are not random, are found on the edited model (they grow as it
degrades), and the held-out perplexity is not this damage. The bound is exact maths about the
keys (how full the layer is); the damage of a setting is only a linear view of it. It was right
about ``preserve=0.01`` (a smaller perplexity rise over 512 real edits) and wrong about
``norm_penalty=0.01``, which replayed cheaper and raised the perplexity in real sessions
(docs/results.md, "How much one layer can hold"). Use it to see why a layer fills up and to pick
candidates; choose settings with ``kedit lifelong``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    edits: int
    damage: float  # tr(ΔW C_ref ΔWᵀ)
    solver_damage: float  # tr(ΔW C0 ΔWᵀ)
    update_norm: float  # ‖ΔW‖_F
    drift: float  # RMS ‖ΔW_now k − ΔW_then k‖ over earlier facts, / r
    bound: float  # r² tr((KᵀC0⁻¹K)⁻¹) over the facts so far


def replay(K, deltas, solve, c0, c_ref, batch: int, checkpoints: list[int]) -> list[Checkpoint]:
    """Sequential commits of ``batch`` facts: K (d_in, N) keys, deltas (d_out, N) value shifts,
    ``solve(K_b, R_b, memory)`` -> (U, V) with Δ = U Vᵀ (memory: the earlier keys, (d_in, P) or
    None). c0: the solver's C0, c_ref: the reference statistics, both (d_in, d_in) float64."""
    import torch

    K, deltas = K.double(), deltas.double()
    r2 = float((deltas * deltas).sum(0).mean())  # mean ‖δ‖²
    W = torch.zeros(deltas.shape[0], K.shape[0], dtype=torch.float64)  # (d_out, d_in)  ΔW so far
    written = []  # (d_out, E) per commit: ΔW·K right after it
    out = []
    for start in range(0, K.shape[1] - batch + 1, batch):
        Kb = K[:, start : start + batch]  # (d_in, E)
        U, V = solve(Kb, deltas[:, start : start + batch], K[:, :start] if start else None)
        W += U.double() @ V.double().T
        written.append(W @ Kb)
        n = start + batch
        if n not in checkpoints:
            continue
        moved = sum(float((W @ K[:, i * batch : (i + 1) * batch] - w).pow(2).sum()) for i, w in enumerate(written))
        Kn = K[:, :n]
        gram = Kn.T @ torch.linalg.solve(c0, Kn)  # (n, n)  KᵀC0⁻¹K
        out.append(Checkpoint(
            edits=n,
            damage=float((W @ c_ref * W).sum()),
            solver_damage=float((W @ c0 * W).sum()),
            update_norm=float(W.norm()),
            drift=(moved / (n * r2)) ** 0.5,
            bound=r2 * float((1 / torch.linalg.eigvalsh(0.5 * (gram + gram.T))).sum()),
        ))
    return out


def closest_pairs(K, n: int) -> list[tuple[float, int, int]]:
    """The ``n`` pairs of columns of K (d_in, N) with the largest cosine, as (cosine, i, j), i < j."""
    import torch

    Kn = K / K.norm(dim=0, keepdim=True)  # (d_in, N)
    cos = torch.triu(Kn.T @ Kn, diagonal=1)  # (N, N), zero on and below the diagonal
    top = torch.topk(cos.flatten(), min(n, cos.numel()))
    N = K.shape[1]
    return [(float(v), int(i) // N, int(i) % N) for v, i in zip(top.values, top.indices)]


def print_closest_keys(K, facts, n: int) -> None:
    for c, i, j in closest_pairs(K, n):
        print(f"keys {i} and {j}: cosine {c:.4f}  {facts[i].label} / {facts[j].label}")


def distinct_facts(records):
    """The records' facts, without one whose (subject, prompt) an earlier record already edits
    (a session would edit it again and stop remembering the earlier one)."""
    seen, facts = set(), []
    for r in records:
        key = (r.fact.subject, r.fact.prompt)
        if key not in seen:
            seen.add(key)
            facts.append(r.fact)
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True, help="CounterFact file (either format)")
    ap.add_argument("--offset", type=int, default=900)
    ap.add_argument("--total", type=int, default=1008, help="sequential edits (whole batches)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--checkpoints", default="128,256,512,768,1008")
    ap.add_argument("--setting", action="append", default=[],
                    help='one candidate: space-separated NAME=VALUE items, e.g. "preserve=0.01 norm_penalty=0.01"')
    ap.add_argument("--delta-norm", type=float, default=28.5, help="‖δ‖ per fact (bench_commit_cost.py's mean ‖δ‖)")
    ap.add_argument("--reference-tokens", type=int, default=300_000, help="corpus tokens of the reference C_ref")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=8, help="closest pairs of keys to list")
    ap.add_argument("--layer", type=int, default=None, help="edit layer (default: the preset's)")
    args = ap.parse_args()

    import torch

    from bench_edit import preset_and_candidate
    from kedit.editing import Editor, arch
    from kedit.editing.hparams import with_settings
    from kedit.editing.keys import compute_keys
    from kedit.eval.records import load_records
    from kedit.paths import cache_dir

    facts = distinct_facts(load_records(args.records, offset=args.offset, limit=args.total))
    n = len(facts) // args.batch * args.batch
    facts = facts[:n]
    checkpoints = sorted({int(x) for x in args.checkpoints.split(",") if x.strip() and int(x) <= n} | {n})
    lm, preset, _, prefixes_of, fp = preset_and_candidate("float32", [], args.layer)
    prefixes = prefixes_of(preset)
    m, tok = lm.model, lm.tokenizer
    layer = preset.layers[0]
    plain = dataclasses.replace(preset, norm_penalty=0.0, null_space=0.0)

    def editor(hp):
        return Editor(m, tok, hp, prefixes, fp, cache_dir=cache_dir())

    def second_moment(hp):
        L = editor(hp).factors()[layer].L  # (d_in, d_in)
        return (L @ L.T).double().cpu()

    print(f"model default, layer {layer}: {n} distinct CounterFact facts from record {args.offset} in commits of "
          f"{args.batch}, random δ of norm {args.delta_norm}; C_ref from {args.reference_tokens:,} tokens",
          file=sys.stderr)
    c_ref = second_moment(dataclasses.replace(plain, stats_tokens=args.reference_tokens))
    K = torch.cat([compute_keys(m, tok, facts[i : i + 64], [layer], prefixes)[layer]
                   for i in range(0, n, 64)], dim=1)  # (d_in, N)
    print_closest_keys(K, facts, args.pairs)
    g = torch.Generator().manual_seed(args.seed)
    d_out = arch.weight_view(m, layer).shape[0]
    deltas = torch.randn(d_out, n, generator=g, dtype=torch.float64)  # (d_out, N)
    deltas = args.delta_norm * deltas / deltas.norm(dim=0, keepdim=True)

    print(f"{'setting':<40}{'edits':>6}{'damage':>9}{'solver':>9}{'‖ΔW‖':>7}{'drift':>7}{'bound':>9}")
    first = None
    for label, items in [("preset", [])] + [(s, s.split()) for s in args.setting]:
        hp = with_settings(preset, items)
        ed = editor(hp)
        factor = ed.factors()[layer]
        c0 = second_moment(dataclasses.replace(hp, norm_penalty=0.0, null_space=0.0))

        def solve(Kb, Rb, memory, ed=ed, factor=factor):
            return ed.solve_layer(Kb, Rb, factor, layer, None, memory)

        rows = replay(K, deltas, solve, c0, c_ref, args.batch, checkpoints)
        first = first or rows
        for row in rows:
            print(f"{label:<40}{row.edits:>6}{row.damage:>9.1f}{row.solver_damage:>9.1f}{row.update_norm:>7.0f}"
                  f"{row.drift:>7.2f}{row.bound:>9.1f}", flush=True)
        print(f"{'':<40}damage at {rows[-1].edits} edits: {rows[-1].damage / first[-1].damage:.2f}x the preset's")


if __name__ == "__main__":
    main()
