import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_models.steps import MATH_SHEPHERD_FORMAT, QWEN_PRM_FORMAT, StepFormat
from reward_models.types import DataError

FORMATS = [StepFormat("\n"), StepFormat("\n\n"), MATH_SHEPHERD_FORMAT, QWEN_PRM_FORMAT,
           StepFormat("\n", tag="<extra_0>")]

# steps: any unicode text (trailing whitespace included) without the separators/tags in use
step_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), min_size=1, max_size=12
).filter(lambda s: s.strip() and "ки" not in s and "<extra_0>" not in s)


def decode(tok, ids):
    return tok.decode(ids, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.text(max_size=10), steps=st.lists(step_text, min_size=1, max_size=5))
def test_spans_partition_and_decode_back(tokenizer, fmt, prompt, steps):
    enc = fmt.tokenize(tokenizer, prompt, steps)
    # spans are contiguous and cover the completion exactly
    assert enc.spans[0][0] == enc.prompt_len
    assert enc.spans[-1][1] == len(enc.input_ids)
    for (s0, e0), (s1, _) in zip(enc.spans, enc.spans[1:]):
        assert e0 == s1 and s0 < e0
    # each span decodes to its step's piece, and the whole to the joined text (unicode intact)
    for i, (step, (s, e)) in enumerate(zip(steps, enc.spans)):
        piece = fmt.piece(step, last=i == len(steps) - 1)
        assert decode(tokenizer, enc.input_ids[s:e]) == piece
        assert piece.startswith(step)
        assert s <= enc.score_positions[i] < e
    assert decode(tokenizer, enc.input_ids) == prompt + fmt.join(steps)
    assert fmt.split(fmt.join(steps)) == steps


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.text(min_size=1, max_size=10), steps=st.lists(step_text, min_size=2, max_size=5),
       k=st.integers(min_value=1, max_value=4))
def test_prefix_ids_are_a_prefix(tokenizer, fmt, prompt, steps, k):
    k = min(k, len(steps) - 1)
    full = fmt.tokenize(tokenizer, prompt, steps).input_ids
    context = fmt.tokenize(tokenizer, prompt, steps[:k], complete=False)
    assert full[: len(context.input_ids)] == context.input_ids
    assert context.spans == fmt.tokenize(tokenizer, prompt, steps).spans[:k]


def test_tag_score_position_is_the_tag(tokenizer):
    enc = MATH_SHEPHERD_FORMAT.tokenize(tokenizer, "Q: 1+2\n", ["1+2=3", "Answer: 3"])
    tag_id = tokenizer.convert_tokens_to_ids("ки")
    assert [enc.input_ids[p] for p in enc.score_positions] == [tag_id, tag_id]
    # no separator after the last step of a complete Math-Shepherd solution
    assert decode(tokenizer, enc.input_ids).endswith("Answer: 3 ки")
    plain = StepFormat("\n").tokenize(tokenizer, "Q\n", ["a b", "c"])
    nl = tokenizer.convert_tokens_to_ids("Ċ")
    assert [plain.input_ids[p] for p in plain.score_positions] == [nl, nl]


def test_trailing_whitespace_and_unicode_survive(tokenizer):
    fmt = StepFormat("\n")
    steps = ["x = 1  ", "ü → ∑ 😀 ", "\t tab"]
    enc = fmt.tokenize(tokenizer, "Prompt ", steps)
    got = [decode(tokenizer, enc.input_ids[s:e])[: -len(fmt.separator)] for s, e in enc.spans]
    assert got == steps


@pytest.mark.parametrize("bad,msg", [("", "empty"), ("   ", "empty"), ("a\nb", "separator"), (3, "string")])
def test_bad_steps_are_rejected_with_the_index(tokenizer, bad, msg):
    with pytest.raises(DataError, match=msg) as err:
        StepFormat("\n").tokenize(tokenizer, "p", ["ok", bad])
    assert "steps[1]" in str(err.value)


def test_format_validation_and_round_trip():
    with pytest.raises(ValueError):
        StepFormat("")
    with pytest.raises(ValueError):
        StepFormat("\n", tag="a\n")
    fmt = StepFormat("\n\n", tag=" ки", final_separator=False)
    assert StepFormat.from_dict(fmt.to_dict()) == fmt
    with pytest.raises(DataError, match="unknown"):
        StepFormat.from_dict({"sep": "\n"})
    assert fmt.stop_strings == ["\n\n"]
    assert fmt.split("a ки\n\nb ки") == ["a", "b"]


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(st.text(max_size=10), min_size=1, max_size=4),
       steps=st.lists(st.lists(step_text, min_size=0, max_size=4), min_size=4, max_size=4))
def test_tokenize_many_equals_one_call_per_piece(tokenizer, fmt, prompts, steps):
    """One batched tokenizer call for all solutions gives the ids of tokenizing the prompt and
    every piece on its own (the layout scores are read from), and what tokenize gives each."""
    steps = steps[: len(prompts)]
    many = fmt.tokenize_many(tokenizer, prompts, steps)
    for prompt, sol, enc in zip(prompts, steps, many):
        ids = list(tokenizer(prompt)["input_ids"]) if prompt else []
        for i, s in enumerate(sol):
            ids += tokenizer(fmt.piece(s, last=i == len(sol) - 1), add_special_tokens=False)["input_ids"]
        assert enc.input_ids == ids or (not prompt and enc.input_ids[1:] == ids)  # (a BOS for an empty prompt)
        assert enc == fmt.tokenize(tokenizer, prompt, sol)


def test_tokenize_many_names_the_row_of_a_bad_step(tokenizer):
    fmt = StepFormat("\n")
    with pytest.raises(DataError) as e:
        fmt.tokenize_many(tokenizer, ["a", "b", "c"], [["x"], ["y"], ["z", "bad\nstep"]], rows=[4, 7, 9])
    assert e.value.row == 9 and "steps[1]" in str(e.value)
    with pytest.raises(DataError) as e:
        fmt.tokenize_many(tokenizer, ["a", "b"], [["x"], [" "]])
    assert e.value.row == 1
