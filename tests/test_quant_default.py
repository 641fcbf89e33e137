"""Quantised queries and quantised editing on the real default model (SmolLM2-135M, CPU).

bitsandbytes' CPU backend does the quantisation here; on a GPU the same code runs with
``device="cuda"`` (not testable on this machine).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kedit.editing import Editor, apply_deltas, arch, model_fingerprint, preset, quant, top_k_next
from kedit.facts import Fact
from kedit.paths import cache_dir

LAYER = 3  # an early layer where this fact edits well on the default model
FACT = Fact("Eiffel Tower", "The {} is located in the city of", "London")
PROMPT = "The Eiffel Tower is located in the city of"
OTHER = "The capital of Japan is"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for these tests. On this shared 2-core machine two threads oversubscribe the
    cores and OpenMP spin-waits: measured 6 min wall for the quant tests with 2 threads, 71 s with 1
    (load average ~9 both times)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hp():
    """The default preset, optimising δ for a fixed 6 steps: early stopping ends at the first step where
    the target is the argmax, a margin that 4-bit rounding noise can undo."""
    hp = dataclasses.replace(preset("default", "emmet"), layers=(LAYER,))
    return dataclasses.replace(hp, values=dataclasses.replace(hp.values, early_stop=False, steps=6))


def top1(model, tok, prompt: str = PROMPT) -> str:
    return top_k_next(model, tok, prompt, 1)[0].token.strip()


@torch.no_grad()
def last_logits(model, tok, prompt: str = PROMPT) -> torch.Tensor:
    ids = torch.tensor([tok(prompt).input_ids])
    return model(input_ids=ids).logits[0, -1].float()


@pytest.fixture(scope="module")
def edit(default_lm):
    """One EMMET edit computed on the full-precision model (the model is left unedited)."""
    m, tok = default_lm.model, default_lm.tokenizer
    hp = _hp()
    ed = Editor(m, tok, hp, (), model_fingerprint(m), cache_dir=cache_dir())
    return ed.edit([FACT])


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_query_copy_follows_commit_and_undo(default_lm, edit, mode):
    full, tok = default_lm, default_lm.tokenizer
    qc = quant.QueryCopy(full, mode)
    assert quant.quant_mode_of(qc.model) == mode

    # memory, measured: fp32 is 4 bytes a weight; the quantised copy keeps only the embeddings in fp32
    full_bytes, q_bytes = quant.memory_bytes(full.model), qc.memory_bytes()
    assert q_bytes < (0.35 if mode == "nf4" else 0.45) * full_bytes, (mode, q_bytes, full_bytes)

    assert top1(qc.model, tok) == "Paris"
    base_logits = last_logits(qc.model, tok)
    name = arch.mlp_out_name(full.model, LAYER)
    others = {n: m.weight for n, m in qc.model.named_modules() if quant.is_quantized_module(m) and n != name}
    original = arch.weight_param(full.model, LAYER).detach().clone()
    try:
        apply_deltas(full.model, list(edit.deltas))  # "commit" on the full-precision weights
        assert top1(full.model, tok) == "London"
        assert qc.sync([LAYER]) == [name]
        assert top1(qc.model, tok) == "London"  # the quantised answer follows the edit at once
        assert top1(qc.model, tok, OTHER) == "Tokyo"
        with qc.base():  # the quantised base model, for "what did it say before"
            assert torch.equal(last_logits(qc.model, tok), base_logits)
        assert top1(qc.model, tok) == "London"
    finally:
        with torch.no_grad():
            arch.weight_param(full.model, LAYER).copy_(original)  # "undo"
    qc.sync([LAYER])
    assert torch.equal(last_logits(qc.model, tok), base_logits)  # bit-identical to before the edit
    assert top1(qc.model, tok) == "Paris"
    # only the edited projection was re-quantised
    assert all(m.weight is others[n] for n, m in qc.model.named_modules() if n in others)
