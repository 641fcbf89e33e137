"""Facts: validation messages name the fact and the problem; batches refuse conflicts."""

import pytest

from kedit.errors import ConflictingFactsError, InvalidFactError
from kedit.facts import Fact, find_conflicts, validate_batch


def test_template_is_derived_from_a_prompt_with_the_subject_written_in():
    f = Fact.from_text("Eiffel Tower", "The Eiffel Tower is located in the city of", " London ")
    assert f.prompt == "The {} is located in the city of"
    assert f.target == "London"
    assert f.text == "The Eiffel Tower is located in the city of"
    assert Fact.from_text("Eiffel Tower", "The {} is in", "Rome").prompt == "The {} is in"


@pytest.mark.parametrize(
    "subject, prompt, target, message",
    [
        ("Eiffel Tower", "The tower is in", "Rome", "the subject is not in the prompt"),
        ("Eiffel Tower", "The {} is in {}", "Rome", "has 2 '{}'"),
        ("Eiffel Tower", "The {} is in", "  ", "the target is empty"),
        ("", "The {} is in", "Rome", "the subject is empty"),
        ("Eiffel Tower", "{}", "Rome", "no text besides the subject"),
    ],
)
def test_invalid_facts_are_named(subject, prompt, target, message):
    with pytest.raises(InvalidFactError) as err:
        Fact.from_text(subject, prompt, target)
    assert message in str(err.value)
    assert repr(subject) in str(err.value), "the message names the fact"


def test_conflicts_are_refused_and_duplicates_merged():
    a = Fact("Eiffel Tower", "The {} is in", "Rome")
    b = Fact("Eiffel Tower", "The {} is in", "Berlin")
    c = Fact("Colosseum", "The {} is in", "Paris")
    assert find_conflicts([a, c, b]) == [(a, b)]
    with pytest.raises(ConflictingFactsError) as err:
        validate_batch([a, c, b])
    assert "'Rome'" in str(err.value) and "'Berlin'" in str(err.value)
    assert validate_batch([a, c, a]) == [a, c]
    with pytest.raises(InvalidFactError, match="no facts"):
        validate_batch([])


def test_round_trip_and_bad_dicts():
    f = Fact("Eiffel Tower", "The {} is in", "Rome")
    assert Fact.from_dict(f.to_dict()) == f
    with pytest.raises(InvalidFactError, match="target"):
        Fact.from_dict({"subject": "x", "prompt": "{} y"})
