"""What one commit costs the rest of the default model, for the preset and a candidate setting.

    .venv/bin/python benchmarks/bench_commit_cost.py --records R [--offset 300] [--facts 16] \
        [--candidate values.step_norm=0 ...]

Edits the same N CounterFact facts as one commit on fresh weights, once with the default model's
preset and once with the preset plus the ``--candidate NAME=VALUE`` settings (as ``kedit eval
--set``; by default ``values.step_norm=0``, Adam's value steps, the preset before normalised
steps), and prints for each:

* value steps: the mean number of value-optimisation steps per fact (the cost of an edit);
* ‖δ‖ / ‖h‖: the mean size of the value shift written for each fact, against the hidden state;
* ‖Δ‖: the Frobenius norm of the weight update;
* tr(ΔC0Δᵀ): the mean squared change of the edited layer's output over the statistics corpus's
  keys (C0 = E[kkᵀ]), i.e. how much the update moves what the layer computes on ordinary text;
  for EMMET it equals tr(R (KᵀC0⁻¹K)⁻¹ Rᵀ) and grows with ‖δ‖²;
* held-out: the change of the held-out perplexity (``kedit/editing/heldout.txt``, every paragraph);
* s: the commit's time (statistics excluded).

The batch's own efficacy and generalisation are ``bench_edit.py --presets``'s job; this benchmark
measures the side of an edit that piles up over a long session (``kedit lifelong``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


def commit_cost(m, tok, editor, facts) -> dict:
    import torch

    from kedit.editing.health import heldout_nll
    from kedit.editing.keys import compute_keys
    from kedit.session.engine import EditStack

    layer = editor.hparams.layers[-1]
    L = editor.factors()[layer].L  # (d_in, d_in)  C0 = L Lᵀ (with the preset's ridge, if any)
    base = heldout_nll(m, tok)
    stack = EditStack.around(editor)
    try:
        t = time.perf_counter()
        res = stack.edit(facts, editor.hparams)
        seconds = time.perf_counter() - t - res.timings.get("statistics", 0.0)
        stack.push(res.deltas, res.facts)
        after = heldout_nll(m, tok)
    finally:
        stack.reset()
    d = next(x for x in res.deltas if x.layer == layer)
    U, V = d.U.double(), d.V.double()  # Δ = U Vᵀ: (d_out, E), (d_in, E)
    K = compute_keys(m, tok, list(res.facts), [layer], editor.prefixes)[layer].double()  # (d_in, E)
    R = U @ (V.T @ K)  # (d_out, E)  ΔK: what the commit writes at its keys (δ for one layer)
    LV = L.double().T.to(V.device) @ V  # (d_in, E)
    h = _hidden_norms(m, tok, res.facts, layer)  # (E,)
    return {
        "steps": sum(res.value_steps) / len(res.value_steps),
        "delta_rel": float((R.norm(dim=0) / h).mean()),
        "update_norm": float(((V.T @ V) * (U.T @ U)).sum().sqrt()),  # ‖Δ‖_F² = tr(VᵀV · UᵀU)
        "corpus_shift": float(((LV.T @ LV) * (U.T @ U)).sum()),  # tr(Δ C0 Δᵀ) = tr(VᵀC0V · UᵀU)
        "heldout": math.exp(after - base) - 1,
        "seconds": seconds,
    }


def _hidden_norms(m, tok, facts, layer):
    """‖h‖ of block ``layer``'s output at each fact's subject (bare prompt), what δ is added to."""
    import torch

    from kedit.editing import tokens

    out = []
    for f in facts:
        row = tokens.plain_row(tok, f.prompt, f.subject)
        with torch.no_grad():
            hs = m(input_ids=torch.tensor([row.input_ids], device=m.device), output_hidden_states=True).hidden_states
        out.append(float(hs[layer + 1][0, row.subject_index].float().norm()))
    return torch.tensor(out, dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True, help="CounterFact file (either format)")
    ap.add_argument("--offset", type=int, default=300)
    ap.add_argument("--facts", type=int, default=16, help="facts in the commit")
    ap.add_argument("--candidate", action="append", help="a setting of the candidate, NAME=VALUE (repeatable)")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: auto)")
    args = ap.parse_args()

    import torch

    from bench_edit import preset_and_candidate
    from kedit.editing import Editor
    from kedit.eval.records import load_records
    from kedit.paths import cache_dir

    facts = [r.fact for r in load_records(args.records, offset=args.offset, limit=args.facts)]
    settings = args.candidate or ["values.step_norm=0"]
    lm, current, candidate, prefixes_of, fp = preset_and_candidate(args.dtype, settings)
    m, tok = lm.model, lm.tokenizer
    print(f"model default ({lm.dtype}, {torch.get_num_threads()} threads), one commit of {len(facts)} CounterFact "
          f"facts from record {args.offset}, on fresh weights", file=sys.stderr)
    print(f"{'':<11}{'value steps':>12}{'‖δ‖/‖h‖':>9}{'‖Δ‖':>8}{'tr(ΔC0Δᵀ)':>11}{'held-out':>10}{'s':>7}")
    rows = {}
    for name, hp in (("preset", current), ("candidate", candidate)):
        ed = Editor(m, tok, hp, prefixes_of(hp), fp, cache_dir=cache_dir())
        ed.factors()  # C0 read (or computed) before the clock starts
        c = rows[name] = commit_cost(m, tok, ed, facts)
        print(f"{name:<11}{c['steps']:>12.1f}{c['delta_rel']:>9.2f}{c['update_norm']:>8.1f}{c['corpus_shift']:>11.2f}"
              f"{100 * c['heldout']:>+9.2f}%{c['seconds']:>7.1f}")
    print(f"candidate: {' '.join(settings)}")
    p, c = rows["preset"], rows["candidate"]
    print(f"candidate vs preset (same run): tr(ΔC0Δᵀ) {c['corpus_shift'] / p['corpus_shift']:.2f}x, "
          f"time {c['seconds'] / p['seconds']:.2f}x")


if __name__ == "__main__":
    main()
