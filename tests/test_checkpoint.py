"""The one checkpoint rewriter (``kedit.editing.checkpoint``) on real safetensors folders (fast).

A tiny random-init Llama is saved by ``save_pretrained`` as one file and as several shards; the
rewriter replaces one tensor, keeps or casts dtypes, links untouched shards, and transformers
loads what it wrote.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_tiny_llama
from safetensors.torch import load_file

from kedit.editing.checkpoint import find_checkpoint, open_checkpoint, staged_folder
from kedit.errors import ExportError

NAME = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(single-file folder, sharded folder, model)."""
    model = make_tiny_llama(seed=5)
    one = tmp_path_factory.mktemp("one")
    model.save_pretrained(one)
    many = tmp_path_factory.mktemp("many")
    model.save_pretrained(many, max_shard_size="100KB")
    return one, many, model


def _all(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_sharded_rewrite_replaces_one_tensor_and_links_the_rest(saved, tmp_path):
    _, many, model = saved
    ck = open_checkpoint(str(many))
    assert len(ck.shards) > 2 and ck.index is not None
    new = model.get_submodule(NAME.removesuffix(".weight")).weight.detach() + 0.5  # (d_out, d_in)
    out = tmp_path / "out"
    out.mkdir()
    rep = ck.rewrite(out, {NAME: new})
    assert rep.replaced == (NAME,) and len(rep.rewritten) == 1 and len(rep.linked) == len(ck.shards) - 1
    for f in rep.linked:  # byte for byte the base shard
        assert os.path.samefile(out / f, many / f) or (out / f).read_bytes() == (many / f).read_bytes()
    base, got = _all(many), _all(out)
    assert got.keys() == base.keys()
    for k in base:
        assert torch.equal(got[k], new if k == NAME else base[k]), k
    index, base_index = json.loads((out / "model.safetensors.index.json").read_text()), ck.index
    assert index["weight_map"] == base_index["weight_map"]
    assert index["metadata"]["total_size"] == base_index["metadata"]["total_size"]


def test_dtype_cast_rewrites_every_shard_and_the_total(saved, tmp_path):
    _, many, _ = saved
    ck = find_checkpoint(many)
    out = tmp_path / "bf16"
    out.mkdir()
    rep = ck.rewrite(out, {}, dtype=torch.bfloat16)
    assert not rep.linked and rep.replaced == ()
    got = _all(out)
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    total = json.loads((out / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert total == ck.index["metadata"]["total_size"] // 2  # float32 -> bfloat16
    streamed = dict(ck.tensors({NAME: torch.zeros_like(got[NAME])}, dtype=torch.bfloat16))
    assert streamed.keys() == got.keys() and not streamed[NAME].any()


def test_prefixless_keys_and_refusals(saved, tmp_path):
    one, _, model = saved
    ck = open_checkpoint(str(one))
    assert ck.key_for(NAME, prefix="model") == NAME
    assert ck.key_for(NAME.removeprefix("model."), prefix="model") is None  # the names are the model's
    w = model.get_submodule(NAME.removesuffix(".weight")).weight.detach()
    assert torch.equal(ck.read([NAME])[NAME], w)
    with pytest.raises(ExportError, match="no tensor model.layers.9"):
        ck.rewrite(tmp_path, {"model.layers.9.mlp.down_proj.weight": w})
    with pytest.raises(ExportError, match=r"session tensor \(2, 2\)"):
        ck.rewrite(tmp_path, {NAME: torch.zeros(2, 2)})
    assert find_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(ExportError, match="no safetensors"):
        open_checkpoint(str(tmp_path))


def test_staged_folder_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with staged_folder(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(out) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (out / "done.txt").read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == ["export"]
    with pytest.raises(ExportError, match="not an empty folder"):
        with staged_folder(out):
            pass
