"""``--load nf4|int8`` through the session API: a session on a model loaded quantised except its edit layer.

The session takes the quantised model through ``Session.attach`` (a session on an already-loaded
model), so commit, query, undo and export run their ordinary code on it. Smaller statistics and
prefix settings than the preset keep the test short (4-bit layers are dequantised at every
forward on a CPU).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_quant_default import FACT, LAYER, OTHER, PROMPT, _hp, one_thread, top1  # noqa: F401 (autouse fixture)

from kedit.editing import arch, model_fingerprint, quant
from kedit.errors import UsageError


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_session_on_quantised_model(default_lm, tmp_path, mode):
    from transformers import AutoModelForCausalLM

    from kedit.session import Session

    lm = quant.load_quantized_for_editing("default", mode, [LAYER], device="cpu", dtype="float32")
    m = lm.model
    assert type(arch.mlp_out_module(m, LAYER)) is torch.nn.Linear  # the edit layer stays full precision
    assert arch.weight_param(m, LAYER).dtype == torch.float32
    assert quant.quant_mode_of(m) == mode and quant.is_quantized_module(arch.mlp_out_module(m, LAYER + 1))
    assert quant.memory_bytes(m) < (0.4 if mode == "nf4" else 0.5) * quant.memory_bytes(default_lm.model)
    assert quant.base_fingerprint(lm) == model_fingerprint(default_lm.model)  # identity independent of --load
    hp = dataclasses.replace(_hp(), stats_tokens=6000, n_prefixes=1, prefix_len=5)
    s = Session.attach(tmp_path / "s", lm, layers=(LAYER,), hparams=hp)
    assert s.query(PROMPT).top[0].token.strip() == "Paris"
    s.add(FACT)
    entry = s.commit()
    assert entry.efficacy[0].argmax
    assert s.query(PROMPT).top[0].token.strip() == "London"  # the edited fact flips on the quantised model
    assert s.query(OTHER).top[0].token.strip() == "Tokyo"

    out = s.export(tmp_path / "export")  # full-precision tensors: base checkpoint + the edited projection
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any(quant.is_quantized_module(x) for x in plain.modules())
    assert torch.equal(arch.weight_param(plain, LAYER), arch.weight_param(lm.model, LAYER))
    for l in (0, LAYER + 1, arch.num_layers(plain) - 1):  # unchanged tensors are the base checkpoint's
        assert torch.equal(arch.weight_param(plain, l), arch.weight_param(default_lm.model, l))
    assert top1(plain, default_lm.tokenizer) == "London"

    # reopening loads the model the same way (settings.load) and finds the same base and weights
    again = Session.open(s.path)
    assert again.settings.load == mode and quant.quant_mode_of(again.lm.model) == mode
    assert again.fingerprint() == s.fingerprint()
    assert again.query(PROMPT).top[0].token.strip() == "London"
    with pytest.raises(UsageError, match="quantised in this session"):
        again.set_method("emmet", (LAYER + 1,))  # only the layer kept in full precision can be edited

    s.undo()
    assert s.query(PROMPT).top[0].token.strip() == "Paris"


def test_quantised_export_never_saves_quantised_weights(tmp_path, tokenizer, monkeypatch):
    """When the base shards cannot be reused as they are (faked here: checkpoints with other tensor
    names take this path), a quantised session still exports full-precision tensors."""
    from conftest import make_tiny_llama
    from transformers import AutoModelForCausalLM

    import kedit.session.export as export_mod
    from kedit.editing import preset
    from kedit.session import Session

    base = make_tiny_llama(seed=5)
    base.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    lm = quant.load_quantized_for_editing(str(tmp_path / "tiny"), "nf4", [1], device="cpu", dtype="float32")
    hp = dataclasses.replace(preset("tiny", "emmet"), layers=(1,), stats_tokens=2000, n_prefixes=0)
    s = Session.attach(tmp_path / "s", lm, layers=(1,), hparams=hp)
    s.add(FACT)
    s.commit()
    monkeypatch.setattr(export_mod, "_reuse_shards", lambda *a, **k: False)
    out = s.export(tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any(quant.is_quantized_module(x) for x in plain.modules())
    assert torch.equal(arch.weight_param(plain, 1), arch.weight_param(lm.model, 1))
    assert not torch.equal(arch.weight_param(plain, 1), arch.weight_param(base, 1))
    for l in (0, 2, 3):
        assert torch.equal(arch.weight_param(plain, l), arch.weight_param(base, l))
    assert (out / "journal.jsonl").exists() and (out / "README.md").exists()


def test_a_load_journal_replays_on_the_full_model_and_recomputes_quantised(tmp_path, tokenizer):
    """The base model's identity does not depend on --load: a journal recorded on an nf4 load
    replays its stored deltas on the full-precision model with every fingerprint matching, and a
    recompute (loading the model the way the session did) reproduces its weights bit for bit."""
    from conftest import make_tiny_llama

    from kedit.editing import load_model, preset
    from kedit.session import Session
    from kedit.session.replay import replay

    make_tiny_llama(seed=5).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    full = load_model(str(tmp_path / "tiny"), device="cpu", dtype="float32")
    lm = quant.load_quantized_for_editing(str(tmp_path / "tiny"), "nf4", [1], device="cpu", dtype="float32")
    hp = dataclasses.replace(preset("tiny", "emmet"), layers=(1,), stats_tokens=2000, n_prefixes=1)
    s = Session.attach(tmp_path / "s", lm, layers=(1,), hparams=hp)
    assert s.header.load == "nf4"
    assert s.header.model.fingerprint == model_fingerprint(full.model)  # the same base, however it is loaded
    s.add(FACT)
    s.commit()

    on_full = replay(s.journal_path, load="none", verify=True)
    assert not on_full.mismatches and on_full.fingerprint == s.fingerprint()
    again = replay(s.journal_path, recompute=True, verify=True)  # nf4 again, as recorded
    assert not again.mismatches and again.fingerprint == s.fingerprint()
    with pytest.raises(UsageError, match="unknown --load mode"):
        replay(s.journal_path, load="int3")


def test_quantised_layers_take_no_delta(tiny_llama):
    from kedit.editing.delta import Delta
    from kedit.session.weights import LiveWeights

    d_out, d_in = arch.dims(tiny_llama, 2)
    w = LiveWeights(tiny_llama, frozen={2: "digest-of-the-base-tensor"})
    before = w.fingerprint()
    with pytest.raises(UsageError, match=r"layer\(s\) \[2\] are loaded quantised"):
        w.apply([Delta(2, arch.mlp_out_name(tiny_llama, 2), torch.ones(d_out, 1), torch.ones(d_in, 1))])
    assert w.fingerprint() == before and w.depth == 0
