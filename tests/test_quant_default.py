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

LAYER = 3  # the default model's preset layer
FACT = Fact("Eiffel Tower", "The {} is located in the city of", "London")
PROMPT = "The Eiffel Tower is located in the city of"
OTHER = "The capital of Japan is"


def _hp():
    """The default preset, optimising δ for a fixed 6 steps: early stopping ends at the first step where
    the target is the argmax, a margin that 4-bit rounding noise can undo."""
    hp = preset("default", "emmet")
    assert hp.layers == (LAYER,)
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


def test_load_nf4_edit_flips_fact_and_exports(default_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = quant.load_quantized_for_editing("default", "nf4", [LAYER], device="cpu", dtype="float32")
    m, tok = lm.model, lm.tokenizer
    name = arch.mlp_out_name(m, LAYER)
    assert type(arch.mlp_out_module(m, LAYER)) is torch.nn.Linear
    assert type(arch.mlp_out_module(m, LAYER + 1)).__name__ == "Linear4bit"
    assert arch.weight_param(m, LAYER).dtype == torch.float32
    assert quant.memory_bytes(m) < 0.4 * quant.memory_bytes(default_lm.model)
    # the base model's identity does not depend on --load
    base_fp = quant.base_fingerprint(lm)
    assert base_fp == model_fingerprint(default_lm.model)
    assert top1(m, tok) == "Paris"

    # C0 through the nf4 model, on fewer tokens than the preset (dequantising 4-bit layers is slow on a CPU)
    hp = dataclasses.replace(_hp(), stats_tokens=6000)
    ed = Editor(m, tok, hp, (), f"{base_fp}-nf4", cache_dir=cache_dir())  # C0 through the nf4 model
    result = ed.edit([FACT])
    apply_deltas(m, list(result.deltas))
    assert top1(m, tok) == "London"
    assert top1(m, tok, OTHER) == "Tokyo"

    out = tmp_path / "export"
    rep = quant.export_full_precision(lm.path, {name + ".weight": arch.weight_param(m, LAYER)}, out)
    assert rep.replaced == (name + ".weight",)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any(quant.is_quantized_module(x) for x in plain.modules())
    assert torch.equal(arch.weight_param(plain, LAYER), arch.weight_param(m, LAYER))
    assert torch.equal(arch.weight_param(plain, LAYER + 1), arch.weight_param(default_lm.model, LAYER + 1))
    assert top1(plain, tok) == "London"
    assert top1(plain, tok, OTHER) == "Tokyo"
