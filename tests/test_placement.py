"""Models spread by accelerate (``--device-map``/``--max-memory``), on this CPU: a small
``max_memory`` sends the upper blocks to *disk* offload, where their weights are meta tensors on
the module and live in accelerate's weights map while idle.

This machine has no GPU, so placements across several GPUs cannot run here: what is checked is
the CPU + disk path (accelerate's hooks, the weights map, meta tensors), which is the same code
as GPU + CPU offload apart from the execution device. The device moves for several GPUs are
written into the key, value, scoring and statistics code but not executed by these tests.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import make_tiny_llama
from safetensors.torch import load_file

from kedit.editing import Editor, arch, load_model, model_fingerprint, preset, sample_prefixes, score_targets
from kedit.editing.delta import updated_weight
from kedit.editing.placement import Placement, current, parse_placement, use
from kedit.errors import DeviceError, UsageError
from kedit.facts import Fact
from kedit.paths import cache_dir


def test_parse_device_map_and_max_memory(monkeypatch):
    assert parse_placement(None, None) == Placement()
    assert parse_placement("auto", None) == Placement("auto")
    p = parse_placement(None, "150MB")  # a memory cap alone implies auto
    assert p == Placement("auto", (("*", "150MB"),)) and p.memory_dict() == {"cpu": "150MB"}  # no GPU here
    p = parse_placement("sequential", "0=20GiB, cuda:1=10gb ,cpu=60GiB")
    assert p.memory_dict() == {0: "20GiB", 1: "10GB", "cpu": "60GiB"}
    for bad, match in [(("everywhere", None), "unknown --device-map"), ((None, "lots"), "not a size"),
                       ((None, "gpu=1GB"), "unknown device"), ((None, "cpu=1GB,cpu=2GB"), "twice"),
                       ((None, " , "), "empty")]:
        with pytest.raises(UsageError, match=match):
            parse_placement(*bad)
    monkeypatch.delenv("KEDIT_DEVICE_MAP", raising=False)
    monkeypatch.delenv("KEDIT_MAX_MEMORY", raising=False)
    use(parse_placement(None, "0=1GB,cpu=2GB"))
    assert current() == parse_placement("auto", "0=1GB,cpu=2GB")
    use(Placement())
    assert current() == Placement()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_llama(seed=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _offloaded(model, layer: int) -> bool:
    return arch.mlp_out_module(model, layer).weight.device.type == "meta"


def test_tiny_model_on_disk_offload_edits_like_the_plain_one(tiny_dir, tmp_path):
    from kedit.session.weights import LiveWeights

    plain = load_model(str(tiny_dir), device="cpu", dtype="float32")
    spread = load_model(str(tiny_dir), device="cpu", dtype="float32", placement=parse_placement(None, "cpu=13MB"))
    m = spread.model
    assert "disk" in set(m.hf_device_map.values()) and _offloaded(m, 3)
    assert model_fingerprint(m) == model_fingerprint(plain.model)  # the placement is not the identity
    held = arch.mlp_out_module(m, 3)._hf_hook.weights_map.dataset.state_dict
    assert not held  # fingerprinting read the disk tensors without keeping them
    hp = dataclasses.replace(preset(str(tiny_dir), "emmet", num_layers=4), layers=(3,), stats_tokens=600,
                             stats_seq_len=32, n_prefixes=1, prefix_len=3)
    facts = [Fact("Eiffel Tower", "Visit the {}", "London"), Fact("Japan", "The capital of {}", "Paris")]
    prefixes = sample_prefixes(plain.model, plain.tokenizer, 1, 3, seed=0)
    assert sample_prefixes(m, spread.tokenizer, 1, 3, seed=0) == prefixes
    corpus = tmp_path / "c.txt"
    corpus.write_text("The river runs through the old town, past the market and the church. " * 60)
    results = [Editor(lm.model, lm.tokenizer, hp, prefixes, model_fingerprint(plain.model), corpus=str(corpus),
                      cache_dir=tmp_path / ("c" + str(i))).edit(facts) for i, lm in enumerate((plain, spread))]
    assert torch.allclose(results[0].deltas[0].dense(), results[1].deltas[0].dense(), rtol=1e-5, atol=1e-7)
    base = arch.read_weight(m, 3).clone()
    live = LiveWeights(m)
    live.apply(results[1].deltas)
    assert torch.equal(arch.read_weight(m, 3), updated_weight(plain.model, results[1].deltas[0]))
    scores = score_targets(m, spread.tokenizer, [f.text for f in facts], [f.target for f in facts])
    live_plain = LiveWeights(plain.model)
    live_plain.apply(results[1].deltas)
    again = score_targets(plain.model, plain.tokenizer, [f.text for f in facts], [f.target for f in facts])
    assert [s.prob for s in scores] == pytest.approx([s.prob for s in again], rel=1e-5)
    assert list(held) == ["model.layers.3.mlp.down_proj.weight"]  # the edited weight is held in memory
    live.pop()
    live_plain.pop()
    assert torch.equal(arch.read_weight(m, 3), base) and model_fingerprint(m) == model_fingerprint(plain.model)


@pytest.mark.model
def test_default_model_with_disk_offload_commits_undoes_and_exports(tmp_path):
    """The default model with its upper blocks on disk: same δ as the plain model (here bit for bit),
    the fact flips, undo restores the exact base tensor, export writes the edited tensor."""
    from kedit.editing.checkpoint import open_checkpoint
    from kedit.session import Session

    layer = 20  # on disk with 300 MB for the CPU in float32
    plain = load_model("default", device="cpu", dtype="float32")
    spread = load_model("default", device="cpu", dtype="float32", placement=parse_placement(None, "cpu=300MB"))
    m = spread.model
    assert {"cpu", "disk"} <= set(m.hf_device_map.values()) and _offloaded(m, layer)
    base_fp = model_fingerprint(plain.model)
    assert model_fingerprint(m) == base_fp
    hp = dataclasses.replace(preset("default", "emmet"), layers=(layer,), stats_tokens=3000, n_prefixes=2, prefix_len=5)
    fact = Fact("Eiffel Tower", "The {} is located in the city of", "London")
    prefixes = sample_prefixes(plain.model, plain.tokenizer, hp.n_prefixes, hp.prefix_len, seed=0)
    ref = Editor(plain.model, plain.tokenizer, hp, prefixes, base_fp, cache_dir=cache_dir()).edit([fact]).deltas[0]

    s = Session.attach(tmp_path / "s", spread, hparams=hp)
    assert s.prefixes == prefixes and s.header.model.fingerprint == base_fp
    base_weights_fp = s.fingerprint()
    s.add(fact)
    c = s.commit()
    assert c.efficacy[0].argmax and c.efficacy[0].prob > 100 * c.efficacy[0].prob_before  # London is now the answer
    want = updated_weight(plain.model, ref)  # the plain model's edited weight
    assert torch.allclose(arch.read_weight(m, layer), want, rtol=1e-5, atol=1e-6)
    name = arch.mlp_out_name(m, layer) + ".weight"
    out = s.export(tmp_path / "out")
    exported = load_file(str(out / "model.safetensors"))
    stored = load_file(str(open_checkpoint(spread.path).folder / "model.safetensors"))
    assert torch.equal(exported[name], arch.read_weight(m, layer))
    assert all(torch.equal(exported[k], stored[k]) for k in stored if k != name)
    s.undo()
    assert torch.equal(arch.read_weight(m, layer), stored[name].to(torch.float32))  # bit for bit, from disk
    assert s.fingerprint() == base_weights_fp


def test_cli_query_with_max_memory_answers_like_the_plain_model(tiny_dir):
    """``--max-memory`` through the real CLI (a subprocess): the tiny model with its upper blocks on
    disk answers exactly like the plain load; a bad size is one line and exit 2."""
    from test_cli_session import kedit

    from kedit.editing import greedy, top_k_next
    from kedit.session.session import MAX_NEW_TOKENS

    prompt = "Visit the Eiffel Tower"
    out = kedit("query", "--model", tiny_dir, "--dtype", "float32", "--max-memory", "cpu=13MB", "--json", prompt).stdout
    got = json.loads(out)
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    assert got["continuation"] == greedy(lm.model, lm.tokenizer, prompt, MAX_NEW_TOKENS)
    want = top_k_next(lm.model, lm.tokenizer, prompt, 5)
    assert [t["token"] for t in got["top"]] == [t.token for t in want]
    assert [t["prob"] for t in got["top"]] == pytest.approx([t.prob for t in want], rel=1e-5)
    bad = kedit("query", "--model", tiny_dir, "--max-memory", "lots", "x", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") <= 2 and "not a size" in bad.stderr


def test_quantised_loading_with_a_placement_needs_a_gpu(tiny_dir, monkeypatch):
    """bitsandbytes quantises only what sits on a GPU: on this CPU-only machine a quantised load with
    a spread placement is refused with one clear line (the GPU path, quantised GPUs plus
    unquantised CPU/disk offload, cannot run here)."""
    from kedit.editing.quant import load_quantized_for_editing

    monkeypatch.setenv("KEDIT_MAX_MEMORY", "cpu=13MB")
    with pytest.raises(DeviceError, match="needs a GPU"):
        load_quantized_for_editing(str(tiny_dir), "nf4", [1], device="cpu", dtype="float32")
