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


def _next_token(m, tok, prompt: str, word: str) -> tuple[float, bool]:
    """The probability of ``word``'s first token after ``prompt``, and whether it is the argmax."""
    from kedit.editing import tokens

    with torch.no_grad():
        p = m(torch.tensor([tokens.ids(tok, prompt)])).logits[0, -1].float().softmax(-1)  # (vocab,)
    t = tokens.target_ids(tok, word)[0]
    return float(p[t]), int(p.argmax()) == t


def test_a_subject_that_starts_its_prompt_is_edited_in_context(editor, restore):
    """"Paris" starts its prompt: its last token is the text's first, the attention sink's position.
    Keyed and fitted there (the reference code's prompts), the edit lands on that position in every
    text: "London is the capital of" answers Italy and Paris in a sentence keeps France. Keyed on
    the prefixed prompts, Paris in a sentence moves and London stays."""
    import dataclasses

    m, tok = editor.model, editor.tok
    paris = Fact("Paris", "{} is the capital of", "Italy")
    in_context, other = "Yesterday I read that Paris is the capital of", "London is the capital of"
    base_other = _next_token(m, tok, other, "Italy")[0]
    w0 = arch.weight_param(m, editor.hparams.layers[0]).detach().clone()
    apply_deltas(m, list(editor.edit([paris]).deltas))
    assert _next_token(m, tok, in_context, "Italy")[1]
    assert abs(_next_token(m, tok, other, "Italy")[0] - base_other) < 0.05
    with torch.no_grad():
        arch.weight_param(m, editor.hparams.layers[0]).copy_(w0)
    old = Editor(m, tok, dataclasses.replace(editor.hparams, first_token_prompts=True), editor.prefixes,
                 editor.model_fp, cache_dir=cache_dir())
    apply_deltas(m, list(old.edit([paris]).deltas))
    assert not _next_token(m, tok, in_context, "Italy")[1]
    assert _next_token(m, tok, other, "Italy")[0] > base_other + 0.2


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
