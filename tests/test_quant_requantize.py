"""Quantised copies on a tiny Llama saved to disk (fast): re-quantisation, CPU repacking, checks, export.

The tiny model is random-init but goes through the real path: ``save_pretrained`` → transformers
loading with a ``BitsAndBytesConfig`` on the CPU backend of bitsandbytes. CUDA is not available
here; the CUDA branch of ``check_quant_support`` is exercised only for its refusal.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama
from test_quant_default import one_thread  # noqa: F401 (autouse fixture: one torch thread)

from kedit.editing import arch, quant
from kedit.errors import DeviceError, ExportError, MissingDependencyError, UsageError

LAYER = 1
NAME = f"model.layers.{LAYER}.mlp.down_proj"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tiny")
    model = make_tiny_llama(seed=3)
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d, model


def _state(module) -> dict[str, torch.Tensor]:
    """Everything that defines a quantised module's weight, as plain tensors."""
    w = module.weight
    if type(module).__name__ == "Linear4bit":
        qs = w.quant_state
        assert not getattr(qs, "packing_format_for_cpu", False), "compare before the CPU repacking"
        return {"data": w.data.clone(), "absmax": qs.absmax.clone(), "code": qs.code.clone(),
                "shape": torch.tensor(list(qs.shape)), "blocksize": torch.tensor(qs.blocksize)}
    cb = w.CB if w.CB is not None else module.state.CB
    scb = w.SCB if w.SCB is not None else module.state.SCB
    return {"data": w.data.clone(), "CB": cb.clone(), "SCB": scb.clone()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _save_with(tmp_path, model, name, new_weight, tokenizer):
    """A checkpoint folder equal to ``model`` but with ``name``'s weight replaced."""
    import copy

    m2 = copy.deepcopy(model)
    with torch.no_grad():
        m2.get_submodule(name).weight.copy_(new_weight)
    d = tmp_path / "edited"
    m2.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("mode", ["int8", "nf4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_requantize_equals_fresh_quantization(tiny_dir, tmp_path, tokenizer, mode, dtype):
    folder, full = tiny_dir
    q = quant.build_quantized_copy(str(folder), mode, device="cpu", dtype=dtype).model
    assert quant.quant_mode_of(q) == mode
    fresh = {n: _state(m) for n, m in q.named_modules() if quant.is_quantized_module(m)}
    assert NAME in fresh and len(fresh) == 4 * 7  # every projection of the 4 blocks; the head is skipped

    # 1. re-quantising the unchanged weight reproduces transformers' own quantisation bit for bit
    w0 = full.get_submodule(NAME).weight.detach().clone()
    assert quant.requantize_modules(q, {NAME: w0}) == [NAME]
    assert _same(_state(q.get_submodule(NAME)), fresh[NAME])

    # 2. a changed weight: equal to a fresh load of a checkpoint holding that weight; others untouched
    g = torch.Generator().manual_seed(0)
    w1 = w0 + 0.05 * torch.randn(w0.shape, generator=g)
    quant.requantize_modules(q, {NAME: w1})
    edited_dir = _save_with(tmp_path, full, NAME, w1, tokenizer)
    ref = quant.build_quantized_copy(str(edited_dir), mode, device="cpu", dtype=dtype).model
    assert _same(_state(q.get_submodule(NAME)), _state(ref.get_submodule(NAME)))
    assert not _same(_state(q.get_submodule(NAME)), fresh[NAME])
    for n, st in fresh.items():
        if n != NAME:
            assert _same(_state(q.get_submodule(n)), st), n

    # 3. the forward pass agrees exactly with the fresh load (the module was really swapped)
    ids = torch.tensor([tokenizer("The Eiffel Tower is in").input_ids])
    with torch.no_grad():
        assert torch.equal(q(input_ids=ids).logits, ref(input_ids=ids).logits)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_requantize_after_queries(tiny_dir, tmp_path, tokenizer, mode):
    """After forward passes (int8 moves CB into the matmul state; nf4 repacks on AVX512-BF16 CPUs)."""
    folder, full = tiny_dir
    q = quant.build_quantized_copy(str(folder), mode, device="cpu", dtype=torch.float32).model
    ids = torch.tensor([tokenizer("The capital of Japan is").input_ids])
    with torch.no_grad():
        before = q(input_ids=ids).logits
    w0 = full.get_submodule(NAME).weight.detach().clone()
    w1 = w0 * 3.0
    quant.requantize_modules(q, {NAME: w1})
    ref = quant.build_quantized_copy(str(_save_with(tmp_path, full, NAME, w1, tokenizer)), mode,
                                      device="cpu", dtype=torch.float32).model
    with torch.no_grad():
        after = q(input_ids=ids).logits
        assert torch.equal(after, ref(input_ids=ids).logits)
        assert not torch.equal(after, before)
        quant.requantize_modules(q, {NAME: w0})  # undo
        assert torch.equal(q(input_ids=ids).logits, before)


def test_cpu_repacking_is_undone_for_gradients(tiny_dir, tokenizer):
    """bitsandbytes' CPU repacked 4-bit kernel has no autograd; set_cpu_packing(False) restores it."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    folder, _ = tiny_dir
    ids = torch.tensor([tokenizer("The Colosseum is located in").input_ids])

    def grad_at_input(model):
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=emb).logits[0, -1, 7]
        out.backward()
        return emb.grad

    clean = quant.build_quantized_copy(str(folder), "nf4", device="cpu", dtype=torch.float32).model
    g_clean = grad_at_input(clean)
    packed = quant.build_quantized_copy(str(folder), "nf4", device="cpu", dtype=torch.float32).model
    with torch.no_grad():
        packed(input_ids=ids)
    mod = packed.get_submodule(NAME)
    assert getattr(mod.weight.quant_state, "packing_format_for_cpu", False), "the inference pass should repack"
    cos = torch.nn.functional.cosine_similarity
    with pytest.warns(UserWarning, match="autograd kernel was not registered"):
        g_bad = grad_at_input(packed)  # bitsandbytes' repacked kernel: the gradient is wrong
    assert float(cos(g_bad.flatten(), g_clean.flatten(), 0)) < 0.9
    quant.set_cpu_packing(packed, False)
    assert not getattr(packed.get_submodule(NAME).weight.quant_state, "packing_format_for_cpu", False)
    g = grad_at_input(packed)
    # the repacking rounded the block scales to bf16 for good (≤0.4% per block): close, not equal
    assert float(cos(g.flatten(), g_clean.flatten(), 0)) > 0.99999
    assert abs(float(g.norm() / g_clean.norm()) - 1) < 0.002
    with torch.no_grad():  # and it stays unpacked through further queries
        packed(input_ids=ids)
    assert not getattr(packed.get_submodule(NAME).weight.quant_state, "packing_format_for_cpu", False)


def test_memory_is_smaller(tiny_dir):
    folder, full = tiny_dir
    full_bytes = quant.memory_bytes(full)
    for mode in ("int8", "nf4"):
        q = quant.build_quantized_copy(str(folder), mode, device="cpu", dtype=torch.float32).model
        linear = sum(m.weight.numel() for m in full.modules() if type(m) is torch.nn.Linear and m is not full.lm_head)
        saved = full_bytes - quant.memory_bytes(q)
        # fp32 → int8 frees 3 bytes per linear weight, → nf4 3.5 (minus the scales)
        assert saved > (2.9 if mode == "int8" else 3.3) * linear, (mode, saved, linear)


def test_mode_checks(monkeypatch):
    assert quant.normalize_mode(None) == "none"
    assert quant.normalize_mode("NF4") == "nf4"
    with pytest.raises(UsageError, match="unknown --load mode 'int4'"):
        quant.normalize_mode("int4", option="--load")
    quant.check_quant_support("none", "cpu")
    quant.check_quant_support("int8", "cpu")
    quant.check_quant_support("nf4", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            quant.check_quant_support("nf4", "cuda")
    with pytest.raises(DeviceError, match="cannot run nf4 on mps"):
        quant.check_quant_support("nf4", "mps")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == "bitsandbytes" else real(n, *a, **k))
    with pytest.raises(MissingDependencyError, match="needs the 'bitsandbytes' package") as exc:
        quant.check_quant_support("int8", "cpu")
    assert "pip install" in exc.value.hint
    quant.check_quant_support("none", "cpu")  # never needs it


def test_export_full_precision(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder, full = tiny_dir
    w = full.get_submodule(NAME).weight.detach() + 1.0
    rep = quant.export_full_precision(str(folder), {NAME + ".weight": w}, tmp_path / "out")
    assert rep.replaced == (NAME + ".weight",)
    base = load_file(str(folder / "model.safetensors"))
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got.keys() == base.keys()
    for k in base:
        assert torch.equal(got[k], w if k == NAME + ".weight" else base[k]), k
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    assert (tmp_path / "out" / "tokenizer.json").exists()
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(m.get_submodule(NAME).weight, w)
    with pytest.raises(ExportError, match="not an empty folder"):
        quant.export_full_precision(str(folder), {NAME + ".weight": w}, tmp_path / "out")
    with pytest.raises(ExportError, match="no tensor"):
        quant.export_full_precision(str(folder), {"model.layers.9.mlp.down_proj.weight": w}, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
