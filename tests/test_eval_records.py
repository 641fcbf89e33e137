"""Loading CounterFact (ROME and flattened formats) and zsRE into EvalRecord."""

from __future__ import annotations

import json

import pytest

from conftest import COUNTERFACT, COUNTERFACT_FULL, REPO, ZSRE
from kedit.errors import FactFileError
from kedit.eval.records import load_records, parse_records

ROME = {
    "case_id": 0,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                           "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
    "attribute_prompts": ["J.\u00a0R.\u00a0R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}

FLAT = {
    "case_id": 3087, "prompt": "David Robinson professionally plays the sport", "target_new": "baseball",
    "subject": "David Robinson", "ground_truth": "basketball", "rephrase_prompt": "David Robinson's greatest weakness is",
    "locality_prompt": "Shaquille O'Neal plays", "locality_ground_truth": "basketball",
}


def test_rome_format():
    (r,) = parse_records([ROME])
    assert r.source == "counterfact"
    assert r.case_id == "0"
    assert r.prompt == "The mother tongue of {} is" and r.subject == "Danielle Darrieux"
    assert r.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert (r.target_new, r.target_true, r.neighborhood_true) == ("English", "French", "French")
    assert len(r.paraphrase_prompts) == 2 and len(r.neighborhood_prompts) == 2
    assert r.fact.target == "English" and r.fact.text == r.rewrite_prompt


def test_flattened_format_derives_the_template():
    (r,) = parse_records([FLAT])
    assert r.source == "counterfact-flat" and r.case_id == "3087"
    assert r.prompt == "{} professionally plays the sport"
    assert r.paraphrase_prompts == ("David Robinson's greatest weakness is",)
    assert r.neighborhood_prompts == ("Shaquille O'Neal plays",)
    assert (r.target_new, r.target_true, r.neighborhood_true) == ("baseball", "basketball", "basketball")


def test_zsre_format():
    data = json.loads(ZSRE.read_text())
    recs = load_records(ZSRE, limit=3)
    r = recs[0]
    assert r.source == "zsre" and r.case_id == "0"
    assert r.prompt == data[0]["src"].replace(data[0]["subject"], "{}", 1)
    assert r.target_new == data[0]["alt"] and r.target_true == data[0]["answers"][0]
    assert r.paraphrase_prompts == (data[0]["rephrase"],)
    assert r.neighborhood_prompts == (data[0]["loc"],) and r.neighborhood_true == data[0]["loc_ans"]


def test_shared_counterfact_file_slices():
    recs = load_records(COUNTERFACT, offset=10, limit=5)
    data = json.loads(COUNTERFACT.read_text())
    assert [r.case_id for r in recs] == [str(d["case_id"]) for d in data[10:15]]
    assert all(r.prompt.count("{}") == 1 for r in recs)


def test_the_projects_counterfact_sets_agree():
    """examples/facts holds the same 48 records in both layouts; the original one is richer."""
    full, flat = load_records(COUNTERFACT_FULL), load_records(COUNTERFACT)
    assert len(full) == len(flat) == 48
    for a, b in zip(full, flat):
        assert (a.case_id, a.subject, a.prompt, a.target_new, a.target_true) == (
            b.case_id, b.subject, b.prompt, b.target_new, b.target_true)
        assert len(a.paraphrase_prompts) == 2 and len(a.neighborhood_prompts) == 3
        assert a.paraphrase_prompts[0] == b.paraphrase_prompts[0] and a.neighborhood_prompts[0] == b.neighborhood_prompts[0]
        assert a.target_new != a.target_true and all(a.subject in p for p in a.paraphrase_prompts)
    assert len({(r.subject, r.prompt) for r in full}) == 48  # one batch of all 48 has no conflicting pair


SHARED_COUNTERFACT = REPO.parent / "shared" / "data" / "counterfact" / "counterfact-edit-1k.json"


@pytest.mark.skipif(not SHARED_COUNTERFACT.exists(), reason="extra coverage where a CounterFact copy sits beside the repo")
def test_a_full_counterfact_file_reads_when_present():
    recs = load_records(SHARED_COUNTERFACT)
    assert len(recs) == len(json.loads(SHARED_COUNTERFACT.read_text())) and all(r.prompt.count("{}") == 1 for r in recs)


def test_jsonl_is_read_too(tmp_path):
    p = tmp_path / "cf.jsonl"
    p.write_text(json.dumps(FLAT) + "\n\n" + json.dumps(dict(FLAT, case_id=4)) + "\n")
    assert [r.case_id for r in load_records(p)] == ["3087", "4"]


def test_subject_missing_from_prompt_names_the_record():
    bad = dict(FLAT, case_id=77, subject="Michael Jordan")
    with pytest.raises(FactFileError, match=r"record 1 \(case_id 77\).*'Michael Jordan' is not in the prompt"):
        parse_records([FLAT, bad])


def test_missing_field_names_the_record_and_field():
    bad = {k: v for k, v in FLAT.items() if k != "target_new"}
    bad["locality_prompt"] = "x"
    with pytest.raises(FactFileError, match=r"record 2 \(case_id 3087\).*'target_new'"):
        parse_records([FLAT, FLAT, bad])
    rome_bad = json.loads(json.dumps(ROME))
    del rome_bad["requested_rewrite"]["target_true"]
    with pytest.raises(FactFileError, match=r"record 1 \(case_id 0\).*'target_true'"):
        parse_records([ROME, rome_bad])


def test_wrong_types_and_empty_targets_name_the_record():
    with pytest.raises(FactFileError, match=r"record 1: expected a JSON object"):
        parse_records([FLAT, ["not", "a", "record"]])
    with pytest.raises(FactFileError, match=r"record 0 \(case_id 3087\): target_new is empty"):
        parse_records([dict(FLAT, target_new="  ")])
    zsre = json.loads(ZSRE.read_text())[:2]
    zsre[1]["answers"] = []
    with pytest.raises(FactFileError, match=r"record 1.*malformed"):
        parse_records(zsre)


def test_unknown_format_and_bad_files(tmp_path):
    with pytest.raises(FactFileError, match="format"):
        parse_records([{"question": "?"}])
    with pytest.raises(FactFileError, match="does not exist"):
        load_records(tmp_path / "nope.json")
    p = tmp_path / "bad.json"
    p.write_text('{"case_id": 1}\nnot json\n')
    with pytest.raises(FactFileError, match="line 2 is not JSON"):
        load_records(p)
    with pytest.raises(FactFileError, match="past the end"):
        parse_records([FLAT], offset=3)
