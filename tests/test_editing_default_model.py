"""Behaviour of the engine on the real embedded SmolLM2-135M, on CPU.

These run in the dtype kedit picks on the machine running them (bfloat16 on a CPU with native
bf16, float32 elsewhere: without AVX512-BF16 a bf16 matrix product is ~150x slower), so they check
what a user gets; exactness is checked in float64/float32 by the unit tests.
"""

import json

import pytest
import torch

from conftest import COUNTERFACT
from kedit.editing import (
    Editor, apply_deltas, arch, greedy, load_model, model_fingerprint, preset, sample_prefixes, score_targets,
)
from kedit.facts import Fact
from kedit.paths import cache_dir

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def editor():
    lm = load_model("default", device="cpu")  # the dtype kedit picks here
    m, tok = lm.model, lm.tokenizer
    hp = preset("default", "emmet")
    ed = Editor(m, tok, hp, sample_prefixes(m, tok, hp.n_prefixes, hp.prefix_len, seed=0), model_fingerprint(m), cache_dir=cache_dir())
    return ed


@pytest.fixture
def restore(editor):
    layer = editor.hparams.layers[0]
    w0 = arch.weight_param(editor.model, layer).detach().clone()
    yield
    with torch.no_grad():
        arch.weight_param(editor.model, layer).copy_(w0)


def _first_word(text: str) -> str:
    return text.strip().split()[0].strip(".,") if text.strip() else ""


def test_eiffel_tower_moves_to_london_and_neighbours_stay(editor, restore):
    m, tok = editor.model, editor.tok
    eiffel = "The Eiffel Tower is located in the city of"
    neighbours = {"The Colosseum is located in the city of": "Rome", "The capital of Japan is": "Tokyo"}
    assert _first_word(greedy(m, tok, eiffel, 3)) == "Paris"
    res = editor.edit([Fact("Eiffel Tower", "The {} is located in the city of", "London")])
    apply_deltas(m, list(res.deltas))
    assert _first_word(greedy(m, tok, eiffel, 3)) == "London"
    for prompt, answer in neighbours.items():
        assert _first_word(greedy(m, tok, prompt, 3)) == answer, prompt


def test_sixteen_counterfact_records_reach_efficacy(editor, restore):
    m, tok = editor.model, editor.tok
    recs = json.loads(COUNTERFACT.read_text())[:16]
    facts = [Fact.from_text(r["subject"], r["prompt"], r["target_new"]) for r in recs]
    prompts = [f.text for f in facts]

    def es() -> float:
        new = score_targets(m, tok, prompts, [r["target_new"] for r in recs])
        true = score_targets(m, tok, prompts, [r["ground_truth"] for r in recs])
        return sum(n.nll < t.nll for n, t in zip(new, true)) / len(recs)

    base = es()
    res = editor.edit(facts)
    assert res.deltas[0].rank == 16
    apply_deltas(m, list(res.deltas))
    edited = es()
    assert base < 0.5, f"baseline efficacy {base:.0%}"
    assert edited >= 0.9, f"EMMET efficacy on 16 CounterFact records is {edited:.0%} (baseline {base:.0%})"
