import math

import pytest

from reward_models.types import DataError, PreferencePair, StepPair, StepSample


def test_step_sample_valid_and_first_error():
    s = StepSample(prompt="p", steps=["a", "b", "c"], labels=[1, True, 0.2])
    assert s.labels == [1.0, 1.0, 0.2]
    assert s.first_error == 2
    assert StepSample.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("kwargs,field", [
    (dict(prompt="", steps=["a"]), "prompt"),
    (dict(prompt="p", steps=[]), "steps"),
    (dict(prompt="p", steps=["a", " "]), "steps[1]"),
    (dict(prompt="p", steps=["a", 3]), "steps[1]"),
    (dict(prompt="p", steps=["a", "b"], labels=[1]), "labels"),
    (dict(prompt="p", steps=["a"], labels=[2]), "labels[0]"),
    (dict(prompt="p", steps=["a"], labels=[math.nan]), "labels[0]"),
    (dict(prompt="p", steps=["a"], labels=["+"]), "labels[0]"),
])
def test_step_sample_errors_name_the_field(kwargs, field):
    with pytest.raises(DataError) as err:
        StepSample(**kwargs)
    assert err.value.field == field
    assert f"field '{field}'" in str(err.value)


def test_error_location():
    err = DataError("bad", field="labels").at(source="data.jsonl", row=7)
    assert str(err) == "data.jsonl, row 7, field 'labels': bad"
    with pytest.raises(DataError, match="unknown field"):
        StepSample.from_dict({"prompt": "p", "steps": ["a"], "extra": 1})


def test_pairs():
    p = StepPair(prompt="p", prefix_steps=["a"], chosen="b", rejected="c", chosen_score=0.9, rejected_score=0.2)
    assert p.margin == pytest.approx(0.7)
    assert StepPair.from_dict(p.to_dict()) == p
    with pytest.raises(DataError, match="chosen_score"):
        StepPair(prompt="p", prefix_steps=[], chosen="b", rejected="c", chosen_score=float("nan"))
    with pytest.raises(DataError, match="weight"):
        StepPair(prompt="p", prefix_steps=[], chosen="b", rejected="c", weight=-1)
    with pytest.raises(DataError, match="rejected"):
        PreferencePair(prompt="p", chosen="x", rejected="")
    assert PreferencePair(prompt="", chosen="x", rejected="y").margin is None
