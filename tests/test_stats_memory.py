"""Statistics never size anything by the model's context length: a tiny Llama that claims a
context of 2^20 positions (Llama-3.1 claims 131,072; a toolkit that sized its batches by it asked
for hundreds of GiB) collects C0 in batches of at most ``batch_size`` × ``seq_len`` tokens, and the
process's peak memory grows by a few MB (measured with Linux's resettable peak RSS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama

from kedit.editing.corpus import Corpus
from kedit.editing.stats import collect_second_moments

TEXT = "The old town lies on a river; its market, church and bridges draw visitors every year. " * 400


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_statistics_memory_is_bounded_by_the_settings_not_the_context_length(tokenizer):
    model = make_tiny_llama(seed=2)
    model.config.max_position_embeddings = 2**20
    shapes = []
    model.model.embed_tokens.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    corpus = Corpus(name="river", fingerprint="river", documents=lambda: iter([TEXT]))
    collect_second_moments(model, tokenizer, [1], corpus, n_tokens=512, seq_len=32, batch_size=4)  # warm-up
    shapes.clear()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _rss("VmRSS")
    c0 = collect_second_moments(model, tokenizer, [1, 3], corpus, n_tokens=4096, seq_len=64, batch_size=8)
    grew = _rss("VmHWM") - before
    assert c0[1].shape == (128, 128) and torch.isfinite(c0[3]).all()
    assert shapes and all(b <= 8 and t <= 64 for b, t in shapes)
    assert sum(b * t for b, t in shapes) >= 4096 - 64
    assert grew < 64 * 2**20, f"statistics grew the process by {grew / 2**20:.0f} MB"
