"""C0 = E[k kᵀ]: the second moment of MLP keys over general text, per layer.

One forward pass over the corpus collects every needed layer with hooks and stops after the
highest of them. Memory is bounded by the settings, never by the model's context length
(``max_position_embeddings``): batches of ``batch_size`` sequences of at most ``seq_len`` tokens
(``stats_seq_len``), plus one d_in × d_in float64 sum per layer. Sums are accumulated in float64; the mean is cached on disk as float32 under a
key of (model fingerprint, layer, corpus fingerprint, token count), and the solver always uses
the float32 mean, so a cached and a fresh C0 are the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from kedit.editing import arch, cpu, forward
from kedit.editing.corpus import Corpus
from kedit.editing.placement import input_device
from kedit.errors import EditCancelled, UsageError

StatsProgress = Callable[[int, int], None]  # (tokens done, tokens wanted)


def _cache_file(cache_dir: Path, model_fp: str, corpus: Corpus, layer: int, n_tokens: int, seq_len: int) -> Path:
    return cache_dir / "stats" / model_fp / corpus.fingerprint / f"layer{layer}-tok{n_tokens}-seq{seq_len}.safetensors"


def _token_chunks(tok, corpus: Corpus, n_tokens: int, seq_len: int) -> list[list[int]]:
    """The corpus as consecutive sequences of ``seq_len`` tokens, ``n_tokens`` in all."""
    chunks: list[list[int]] = []
    have = 0
    for doc in corpus.documents():
        ids = list(tok(doc, add_special_tokens=False).input_ids)
        for s in range(0, len(ids), seq_len):
            piece = ids[s : s + seq_len]
            if len(piece) < 8:
                continue
            piece = piece[: n_tokens - have]
            chunks.append(piece)
            have += len(piece)
            if have >= n_tokens:
                return chunks
    return chunks  # a corpus smaller than n_tokens: all of it


@torch.no_grad()
def collect_second_moments(
    model,
    tok,
    layers: list[int],
    corpus: Corpus,
    n_tokens: int,
    seq_len: int = 256,
    batch_size: int = 8,
    progress: StatsProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[int, torch.Tensor]:
    """{layer: C0 (d_in, d_in) float32} over ``n_tokens`` corpus tokens, one pass for all layers."""
    device = input_device(model)
    chunks = _token_chunks(tok, corpus, n_tokens, seq_len)
    total = sum(len(c) for c in chunks)
    if total == 0:
        raise UsageError(f"the statistics corpus {corpus.name!r} has no text")
    sums = {l: None for l in layers}
    done = 0  # tokens accumulated so far
    cur_mask: list[torch.Tensor] = []

    def make_hook(l: int):
        def hook(mod, inputs, output):
            x = inputs[0]  # (B, T, d_in)
            m = cur_mask[0].to(x.device)  # (B, T) bool
            k = x[m].float()  # (N, d_in)
            s = (k.T @ k).double()  # (d_in, d_in)
            if sums[l] is None:
                sums[l] = s
            else:
                sums[l].add_(s)  # in place: one d_in² float64 buffer per layer, not a new one per batch

        return hook

    handles = [arch.mlp_out_module(model, l).register_forward_hook(make_hook(l)) for l in layers]
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(chunks), batch_size):
            cpu.rebalance()
            if should_stop is not None and should_stop():
                raise EditCancelled("statistics collection cancelled; nothing was cached")
            part = chunks[b : b + batch_size]
            T = max(len(c) for c in part)
            input_ids = torch.zeros((len(part), T), dtype=torch.long)
            mask = torch.zeros((len(part), T), dtype=torch.bool)
            for i, c in enumerate(part):
                input_ids[i, : len(c)] = torch.tensor(c)
                mask[i, : len(c)] = True
            cur_mask[:] = [mask.to(device)]
            forward.run_until(
                model, max(layers), input_ids=input_ids.to(device), attention_mask=mask.long().to(device)
            )
            done += int(mask.sum())
            if progress is not None:
                progress(done, total)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {l: (sums[l] / done).float().cpu() for l in layers}


def second_moments(
    model,
    tok,
    layers: list[int],
    corpus: Corpus,
    n_tokens: int,
    model_fp: str,
    cache_dir: Path | None,
    seq_len: int = 256,
    progress: StatsProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[int, torch.Tensor]:
    """C0 per layer, from the disk cache where present, else computed (all missing layers in one pass)."""
    from safetensors.torch import load_file, save_file

    out: dict[int, torch.Tensor] = {}
    missing = []
    for l in layers:
        f = _cache_file(cache_dir, model_fp, corpus, l, n_tokens, seq_len) if cache_dir else None
        if f is not None and f.exists():
            out[l] = load_file(str(f))["c0"]
        else:
            missing.append(l)
    if missing:
        fresh = collect_second_moments(
            model, tok, missing, corpus, n_tokens, seq_len=seq_len, progress=progress, should_stop=should_stop
        )
        for l, c0 in fresh.items():
            out[l] = c0
            if cache_dir is not None:
                f = _cache_file(cache_dir, model_fp, corpus, l, n_tokens, seq_len)
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(f".tmp{os.getpid()}")
                save_file({"c0": c0.contiguous()}, str(tmp))
                os.replace(tmp, f)  # atomic: a killed run never leaves a half-written cache
    for l in layers:
        d_out, d_in = arch.dims(model, l)
        assert out[l].shape == (d_in, d_in), f"C0 of layer {l} is {tuple(out[l].shape)}, expected ({d_in}, {d_in})"
    return out
