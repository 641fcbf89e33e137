"""``export --format peft``: a session's active commits as a LoRA adapter that real PEFT loads.

On tiny random-init models saved to disk (Llama, and GPT-2 whose Conv1D stores the weight
transposed): base + adapter gives the merged export's logits (float32), several commits are their
sum, an undone commit is left out, layers of different rank keep scale 1.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import make_tiny
from kedit.editing import load_model
from kedit.errors import ExportError
from kedit.session import Session
from kedit.session.export_peft import lora_factors, vllm_max_rank
from test_session_tiny import FACTS, corpus, fast_hparams, private_cache, save_tiny, start, tiny_dir  # noqa: F401

PROMPTS = ["The Eiffel Tower is located in the city of", "The capital of Japan is", "Music is"]


def logits_of(model, tok, prompts=PROMPTS) -> torch.Tensor:
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float()  # (B, T, V)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def peft_and_merged(s: Session, tmp_path, model_dir):
    """(base + adapter via PeftModel, the merged checkpoint export, the plain base), float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = s.export(tmp_path / "adapter", format="peft")
    merged = AutoModelForCausalLM.from_pretrained(s.export(tmp_path / "merged"), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter).eval()
    return peft, merged, base, adapter


def test_adapter_gives_the_merged_logits_with_a_rank_per_layer(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.add(FACTS[1])
    s.commit()  # layer 1, rank 2
    s.set_method("emmet", (2,))
    s.add(FACTS[2])
    s.commit()  # layer 2, rank 1
    peft, merged, base, adapter = peft_and_merged(s, tmp_path, tiny_dir)
    tok = s.lm.tokenizer
    want = logits_of(merged, tok)
    assert rel(logits_of(peft, tok), want) < 1e-5
    assert rel(logits_of(base, tok), want) > 1e-3  # the edit shows, so the comparison means something

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 2
    assert sorted(cfg["target_modules"]) == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    assert cfg["rank_pattern"] == cfg["alpha_pattern"] == {"model.layers.2.mlp.down_proj": 1}
    assert cfg["fan_in_fan_out"] is False
    lora = {n: m for n, m in peft.named_modules() if n.endswith("down_proj") and hasattr(m, "lora_A")}
    assert sorted(n.split(".")[-3] for n in lora) == ["1", "2"]  # only the edited layers are adapted
    assert {n.split(".")[-3]: m.scaling["default"] for n, m in lora.items()} == {"1": 1.0, "2": 1.0}
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "journal.jsonl", "deltas"} <= names
    card = (adapter / "README.md").read_text()
    assert "library_name: peft" in card and "--enable-lora --max-lora-rank 8" in card and "London" in card


def test_several_commits_are_their_sum_and_an_undone_one_is_left_out(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    deltas = []
    for fact in FACTS:
        s.add(fact)
        s.commit()
        deltas.append(s.lm.model.model.layers[1].mlp.down_proj.weight.detach().clone())
    s.undo()  # the third commit
    (f,) = lora_factors(s._journal)
    assert f.module == "model.layers.1.mlp.down_proj" and f.rank == 2
    base = load_model(str(tiny_dir), device="cpu", dtype="float32").model.model.layers[1].mlp.down_proj.weight
    total = (deltas[1].double() - base.double())  # both commits, as applied to the weights
    assert torch.allclose((f.B.double() @ f.A.double()), total, atol=1e-6, rtol=0)
    assert not torch.allclose((f.B.double() @ f.A.double()), deltas[2].double() - base.double(), atol=1e-6, rtol=0)


def test_gpt2_conv1d_adapter_uses_fan_in_fan_out(tmp_path, tokenizer, corpus):
    model_dir = tmp_path / "gpt2"
    make_tiny("gpt2").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    lm = load_model(str(model_dir), device="cpu", dtype="float32")
    hp = dataclasses.replace(fast_hparams(model_dir), layers=(1,))
    s = Session.attach(tmp_path / "s", lm, corpus=corpus, hparams=hp)
    s.add(FACTS[0])
    s.commit()
    peft, merged, base, adapter = peft_and_merged(s, tmp_path, model_dir)
    assert json.loads((adapter / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    want = logits_of(merged, s.lm.tokenizer)
    assert rel(logits_of(peft, s.lm.tokenizer), want) < 1e-5
    assert rel(logits_of(base, s.lm.tokenizer), want) > 1e-4


def test_a_session_without_active_commits_has_no_adapter(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    with pytest.raises(ExportError, match="no active commit"):
        s.export(tmp_path / "adapter", format="peft")
    assert not (tmp_path / "adapter").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ExportError, match="unknown export format"):
        s.export(tmp_path / "x", format="onnx")


def test_vllm_rank_is_the_next_one_it_accepts():
    assert [vllm_max_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
