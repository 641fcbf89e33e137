"""Where does a long session's damage to ordinary text come from?

    .venv/bin/python benchmarks/bench_damage_sites.py --records R [--offset 0] [--total 512] \
        [--checkpoints 128,256,384,512] [--method memit] [--set NAME=VALUE ...]

Runs ``--total`` sequential commits of ``--batch`` CounterFact facts on the default model (the
method's preset with the ``--set`` settings, as ``kedit lifelong`` runs them; same prefixes, same
bits) and, at each checkpoint, measures on kedit's held-out paragraphs:

* perplexity change of the edited model against the base model, and the same with the edited
  projections' output put back to the base weights' (W0·k) **at the text's first position only**
  (the attention sink: every later token attends to it, and its key is several times any other's)
  or **at every other position**. Whichever restoring brings the perplexity back is where the
  damage is;
* per edited layer, the mean of ‖ΔW·k‖² over the held-out text's keys k (what the edits changed
  on text they were not made for) against tr(ΔW C0 ΔWᵀ), the same mean that the solver's own key
  statistics C0 predict and minimise. A ratio above 1 says ordinary text is hit harder than the
  statistics the update was fitted against expect;
* the correlation, over those keys, of log ‖ΔW·k‖ with log kᵀC0⁻¹k (how unusual a key is for C0:
  its squared length in C0's whitened coordinates, about d_in on average for keys like C0's).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--total", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--checkpoints", default="128,256,384,512")
    ap.add_argument("--method", default="memit", help="emmet | memit (the default model's preset)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: auto)")
    args = ap.parse_args()
    checkpoints = {int(c) for c in args.checkpoints.split(",")}

    import torch

    from kedit.editing import Editor, arch, health, load_model, model_fingerprint, preset, sample_prefixes, stats
    from kedit.editing.hparams import with_settings
    from kedit.eval.records import load_records
    from kedit.paths import cache_dir
    from kedit.session.engine import EditStack

    facts = [r.fact for r in load_records(args.records, offset=args.offset, limit=args.total)]
    lm = load_model("default", device="cpu", dtype=args.dtype)
    m, tok = lm.model, lm.tokenizer
    hp = with_settings(preset("default", args.method), args.settings)
    fp = model_fingerprint(m)
    ed = Editor(m, tok, hp, tuple(sample_prefixes(m, tok, hp.n_prefixes, hp.prefix_len, seed=0)), fp, cache_dir=cache_dir())
    stack = EditStack.around(ed)
    layers = hp.layers
    c0 = stats.second_moments(m, tok, list(layers), ed.corpus, hp.stats_tokens, fp, cache_dir(), seq_len=hp.stats_seq_len)
    c0 = {l: c0[l].double() for l in layers}  # (d_in, d_in) without any ridge
    w0 = {l: arch.weight_param(m, l).detach().clone() for l in layers}  # (d_out, d_in)
    print(f"default model ({lm.dtype}, {torch.get_num_threads()} threads), {hp.method.upper()} layers {list(layers)}, "
          f"{len(facts)} facts in batches of {args.batch}", file=sys.stderr)

    restore = Restorer(m, w0)
    base = health.heldout_nll(m, tok)
    print(f"{'edits':>6} {'perplexity':>11} {'first position as base':>23} {'other positions as base':>24}   "
          "per layer: held-out ‖ΔWk‖² / C0's view (ratio), corr(log ‖ΔWk‖, log kᵀC0⁻¹k)")
    for start in range(0, len(facts), args.batch):
        res = stack.edit(facts[start : start + args.batch], hp)
        stack.push(res.deltas, res.facts)
        done = start + len(res.facts)
        if done not in checkpoints and done != len(facts):
            continue
        change = [100 * (math.exp(restore.nll(tok, where) - base) - 1) for where in (None, "first", "others")]
        keys = restore.heldout_keys(tok)
        cells = []
        for l in layers:
            dw = (arch.weight_param(m, l).detach().double() - w0[l].double())  # (d_out, d_in)
            k = keys[l].double()  # (N, d_in)
            seen = float(((k @ dw.T) ** 2).sum(1).mean())
            view = float(torch.trace(dw @ c0[l] @ dw.T))
            unusual = (k * torch.linalg.solve(c0[l], k.T).T).sum(1)  # (N,)  kᵀC0⁻¹k
            corr = float(torch.corrcoef(torch.stack([(k @ dw.T).norm(dim=1).log(), unusual.log()]))[0, 1])
            cells.append(f"L{l} {seen:.1f}/{view:.1f} ({seen / view:.2f}), {corr:.2f}")
        print(f"{done:>6} {change[0]:>+10.1f}% {change[1]:>+22.1f}% {change[2]:>+23.1f}%   " + "; ".join(cells), flush=True)


class Restorer:
    """Forward hooks on the edited projections that can put back the base weights' output at the
    text's first position or at every other one, and collect the projections' inputs (the keys)."""

    def __init__(self, model, w0) -> None:
        from kedit.editing import arch

        self.model, self.w0, self.where, self.keys = model, w0, None, None
        for l in w0:
            arch.mlp_out_module(model, l).register_forward_hook(self._hook(l))

    def _hook(self, layer: int):
        import torch

        def hook(module, inputs, out):
            x = inputs[0]  # (B, T, d_in)
            if self.keys is not None:
                self.keys.setdefault(layer, []).append(x[0, 1:].detach().float())  # (T-1, d_in)
            if self.where is None:
                return None
            base = torch.nn.functional.linear(x, self.w0[layer].to(x.dtype))  # (B, T, d_out)
            out = out.clone()
            if self.where == "first":
                out[:, 0] = base[:, 0]
            else:
                out[:, 1:] = base[:, 1:]
            return out

        return hook

    def nll(self, tok, where: str | None) -> float:
        from kedit.editing import health

        self.where = where
        try:
            return health.heldout_nll(self.model, tok)
        finally:
            self.where = None

    def heldout_keys(self, tok) -> dict:
        """The edited projections' inputs over every held-out paragraph, its first token left out."""
        import torch

        from kedit.editing import health, tokens

        self.keys = {}
        try:
            with torch.no_grad():
                for text in health.heldout_paragraphs():
                    self.model(input_ids=torch.tensor([tokens.ids(tok, text)]), use_cache=False)
            return {l: torch.cat(k) for l, k in self.keys.items()}
        finally:
            self.keys = None


if __name__ == "__main__":
    main()
