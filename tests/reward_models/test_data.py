"""Loaders: every public format's fixture loads into the expected samples; bad rows are named."""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from reward_models.data import (
    FORMATS,
    convert_rows,
    detect_format,
    load_samples,
    load_samples_with_stats,
    save_samples,
    to_label,
    to_trl_stepwise,
)
from reward_models.steps import StepFormat
from reward_models.types import DataError, PreferencePair, StepPair, StepSample

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def read_rows(name):
    path = FIX / name
    if name.endswith(".json"):
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


# (file, detected format, per item: (number of steps, labels)) for step formats
STEP_CASES = [
    ("prm800k_phase1.jsonl", "prm800k", [(3, [1, 1, 1]), (3, [1, 1, 0])]),
    # phase 2 row 0 has a 4th step after the first -1: dropped by the stop-at-first-error rule
    ("prm800k_phase2.jsonl", "prm800k", [(3, [1, 1, 0]), (2, [1, 1]), (2, [1, 1])]),
    ("math_shepherd.jsonl", "math_shepherd", [(3, [1, 1, 1]), (3, [1, 0, 0]), (2, [1, 1])]),
    ("trl_stepwise.jsonl", "trl_stepwise", [(3, [1, 1, 0]), (2, [1, 1])]),
    ("input_value_label.json", "input_value_label", [(7, [1] * 7), (5, [1, 1, 0, 1, 0])]),
    ("rlhflow.jsonl", "rlhflow", [(3, [1, 1, 1]), (2, [0, 0])]),
    ("processbench.jsonl", "processbench", [(3, [1, 0, 0]), (2, [1, 1])]),
]


@pytest.mark.parametrize("name,fmt,expected", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_format_fixtures(name, fmt, expected):
    items, stats = load_samples_with_stats(FIX / name)
    assert stats.formats == {str(FIX / name): fmt}
    assert all(isinstance(s, StepSample) for s in items)
    assert [(s.num_steps, s.labels) for s in items] == [(n, [float(v) for v in lab]) for n, lab in expected]
    assert stats.rows == len(expected) and stats.items == len(items) and stats.rejected == 0
    for s in items:
        assert s.meta["format"] == fmt and s.meta["source"] == str(FIX / name)
    # the explicit format gives the same result
    assert [s.to_dict() for s in load_samples(FIX / name, format=fmt)] == [s.to_dict() for s in items]


def test_prm800k_fields_and_neutral_option():
    a, b = load_samples(FIX / "prm800k_phase1.jsonl")
    assert a.prompt == "What is $2+3\\cdot 4$?" and a.answer == "14"
    # chosen_completion picks the 2nd completion of step 1; step 2 uses the human completion
    assert a.steps == ["First, $3\\cdot 4 = 12$.", "Then $2+12 = 14$.", "So the answer is $\\boxed{14}$."]
    assert b.steps[2] == "So there are 5 divisors." and b.meta["stopped"] == "first error at step 2"
    assert b.first_error == 2 and b.meta["finish_reason"] == "found_error"
    p2 = FIX / "prm800k_phase2.jsonl"
    # the erroneous step has alternatives; the pre-generated one (2nd of 3) is the trajectory's
    assert load_samples(p2)[0].steps[2] == "That is 11 values."
    assert load_samples(p2, neutral="half")[0].labels == [1.0, 0.5, 0.0]
    assert load_samples(p2, neutral="negative")[2].labels == [0.0, 1.0]
    assert load_samples(p2)[2].labels == [1.0, 1.0]  # default: neutral counts as positive
    with pytest.raises(ValueError, match="neutral"):
        load_samples(p2, neutral="maybe")


def test_math_shepherd_and_rlhflow_split_question():
    s = load_samples(FIX / "math_shepherd.jsonl")
    assert s[0].prompt == "Janet has 3 apples and buys 2 more. How many apples does she have?"
    assert s[0].steps[1] == "Step 2: She buys 2, so 3 + 2 = 5."
    assert s[2].prompt == "What is 7 - 3?" and s[2].steps == ["7 - 3 = 4.", "The answer is: 4"]  # no "Step 1:"
    assert s[1].meta["task"] == "GSM8K"
    pb = load_samples(FIX / "processbench.jsonl")
    assert [x.first_error for x in pb] == [1, None] and pb[0].meta["final_answer_correct"] is False
    r = load_samples(FIX / "rlhflow.jsonl")
    assert r[1].prompt == "What is 6 / 2?" and r[1].steps[0] == "Step 1: 6 / 2 = 4."


def test_step_dpo_pairs():
    pairs = load_samples(FIX / "step_dpo.jsonl")
    assert all(isinstance(p, StepPair) for p in pairs)
    a, b = pairs
    # row 0 is laid out like Math-Step-DPO-10K: the prefix ends with the next step's label
    assert a.prefix_steps == ["Let's think step by step.", "Step 1: The first 3 positive odd numbers are 1, 3 and 5."]
    assert a.chosen == "Step 2: Their sum is 1 + 3 + 5 = 9. The answer is: 9"
    assert a.rejected == "Step 2: Their sum is 1 + 3 + 5 = 8. The answer is: 8"
    row = read_rows("step_dpo.jsonl")[0]
    assert StepFormat().join(a.prefix_steps) + a.chosen == row["initial_reason_steps"] + row["chosen"]
    assert a.is_final is True  # chosen states "The answer is"
    assert b.prefix_steps == ["Let's think step by step."]
    assert b.is_final is False and b.chosen == "Step 1: 4 boxes hold 4 * 6 = 24 eggs."  # trailing \n stripped
    assert a.meta["dataset"] == "MATH" and a.meta["answer"] == "9"
    # with a separator that never occurs, the whole prefix is one unfinished step
    whole = load_samples(FIX / "step_dpo.jsonl", step_format=StepFormat(separator="\n\n"))
    assert whole[0].prefix_steps == [] and whole[0].chosen == row["initial_reason_steps"] + row["chosen"]


def test_chosen_rejected_transcripts_and_chat():
    a, b = load_samples(FIX / "hh_rlhf.jsonl")
    assert isinstance(a, PreferencePair)
    assert a.prompt == "\n\nHuman: What is a good name for a cat?\n\nAssistant:"
    assert a.chosen == " Many people like Luna or Milo." and a.rejected == " Cats do not need names."
    assert b.prompt.endswith("\n\nHuman: Tell me a fact about the sun.\n\nAssistant:")
    assert b.prompt.count("\n\nAssistant:") == 2 and b.chosen == " The sun is a star."
    c, d = load_samples(FIX / "chat_preference.jsonl")
    assert c.prompt == "\n\nHuman: What is 2+2?\n\nAssistant:" and (c.chosen, c.rejected) == ("4", "5")
    assert d.prompt.startswith("\n\nSystem: Be brief.") and d.meta["prompt_messages"][1]["content"] == "Capital of France?"
    custom = load_samples(FIX / "chat_preference.jsonl", render_chat=lambda m: "|".join(x["content"] for x in m))
    assert custom[1].prompt == "Be brief.|Capital of France?"


# (file, row index to break, mutation, expected field in the message)
BAD_ROWS = [
    ("prm800k_phase1.jsonl", lambda r: r["label"]["steps"][0]["completions"][1].update(rating=5),
     "label.steps[0].completions[1].rating"),
    ("prm800k_phase2.jsonl", lambda r: r["question"].pop("problem"), "question.problem"),
    ("math_shepherd.jsonl", lambda r: r.update(label=r["label"].replace(" +", " x", 1)), "label"),
    ("trl_stepwise.jsonl", lambda r: r["labels"].pop(), "labels"),
    ("input_value_label.json", lambda r: r["label"].__setitem__(1, "?"), "label[1]"),
    ("rlhflow.jsonl", lambda r: r["conversations"][1].update(role="user"), "conversations[1].role"),
    ("step_dpo.jsonl", lambda r: r.update(chosen=""), "chosen"),
    ("processbench.jsonl", lambda r: r.update(label=2), "label"),
    ("hh_rlhf.jsonl", lambda r: r.update(rejected=r["rejected"].replace("Assistant", "Bot")), "chosen"),
    ("chat_preference.jsonl", lambda r: r.update(rejected=[{"role": "user", "content": "x"}]), "rejected"),
]


@pytest.mark.parametrize("name,mutate,field", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_malformed_row_is_named(tmp_path, name, mutate, field):
    rows = read_rows(name)
    mutate(rows[1])
    if name.endswith(".json"):
        path = tmp_path / name
        path.write_text(json.dumps(rows))
        where = "row 1"  # 0-based index in a JSON array
    else:
        path = write_jsonl(tmp_path / name, rows)
        where = "row 2"  # 1-based line number in JSONL
    with pytest.raises(DataError) as err:
        load_samples(path)
    assert str(path) in str(err.value) and where in str(err.value) and f"field '{field}'" in str(err.value)
    assert err.value.row == int(where.split()[1]) and err.value.field == field
    # skip_invalid keeps the good rows, counts the bad one and writes it out
    rejects = tmp_path / "rejects.jsonl"
    items, stats = load_samples_with_stats(path, skip_invalid=True, rejects_path=rejects)
    assert stats.rejected == 1 and len(items) == len(rows) - 1 == stats.items
    (rec,) = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert rec["row"] == err.value.row and rec["field"] == field and rec["data"] == rows[1]


def test_prm800k_without_usable_step_and_shepherd_count_mismatch(tmp_path):
    row = read_rows("prm800k_phase2.jsonl")[1]
    row["label"]["steps"][0] = {"completions": [{"text": "hm", "rating": 0}, {"text": "hm2", "rating": 1}],
                                "human_completion": None, "chosen_completion": None}
    with pytest.raises(DataError, match=r"row 0, field 'label.steps': no usable step"):
        convert_rows([row], "prm800k")
    ms = read_rows("math_shepherd.jsonl")[0]
    ms["label"] = ms["label"].rsplit(" +", 1)[0]  # one mark fewer than ки tags
    with pytest.raises(DataError, match=r"row 0, field 'label'.*3 'ки' tags"):
        convert_rows([ms])


def test_file_types_and_directory(tmp_path):
    rows = read_rows("trl_stepwise.jsonl")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    write_jsonl(tmp_path / "d.json", rows)  # JSON Lines under a .json name
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    (tmp_path / "notes.txt").write_text("ignored: not a data file")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.jsonl").write_text("ignored: hidden")
    for f in ["a.jsonl.gz", "b.json", "c.json.gz", "d.json", "e.parquet"]:
        got = load_samples(tmp_path / f)
        assert [s.labels for s in got] == [[1.0, 1.0, 0.0], [1.0, 1.0]], f
    items, stats = load_samples_with_stats(tmp_path)
    assert len(items) == 10 and list(stats.formats) == [str(tmp_path / f) for f in
                                                       ["a.jsonl.gz", "b.json", "c.json.gz", "d.json", "e.parquet"]]
    assert items[8].meta["source"].endswith("e.parquet") and items[8].meta["row"] == 0


def test_file_level_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load_samples(empty)
    good = json.dumps(read_rows("trl_stepwise.jsonl")[0]).encode()
    bad_bytes = tmp_path / "latin.jsonl"
    bad_bytes.write_bytes(good + b"\n" + good.replace(b"larger", b"gr\xf6\xdfer") + b"\n")
    with pytest.raises(DataError, match=r"latin.jsonl, row 2: not valid UTF-8"):
        load_samples(bad_bytes)
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_bytes(good + b"\n\n" + good[:-5] + b"\n")
    with pytest.raises(DataError, match=r"broken.jsonl, row 3: invalid JSON"):
        load_samples(bad_json)
    items, stats = load_samples_with_stats(bad_json, skip_invalid=True)
    assert len(items) == 1 and stats.rejected == 1 and "row 3" in stats.errors[0]
    whole = tmp_path / "bad.json"
    whole.write_bytes(b'[{"a": 1},\n \xff]')
    with pytest.raises(DataError, match=r"bad.json: not valid UTF-8 at line 2"):
        load_samples(whole)
    with pytest.raises(DataError, match="expected a JSON list"):
        (tmp_path / "s.json").write_text('"hello"')
        load_samples(tmp_path / "s.json")
    with pytest.raises(FileNotFoundError):
        load_samples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no valid rows"):
        write_jsonl(tmp_path / "allbad.jsonl", [{"prompt": "p", "completions": ["a"], "labels": [2]}])
        load_samples(tmp_path / "allbad.jsonl", skip_invalid=True)


def test_detection_error_lists_formats_and_keys(tmp_path):
    with pytest.raises(DataError) as err:
        detect_format({"question": "q", "answer": "a"}, "x.jsonl", 1)
    msg = str(err.value)
    assert msg.startswith("x.jsonl, row 1:") and "['answer', 'question']" in msg
    assert all(name in msg for name in FORMATS)
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        load_samples(FIX / "trl_stepwise.jsonl", format="nope")
    # a wrong explicit format names the missing field
    with pytest.raises(DataError, match=r"row 1, field 'input': missing"):
        load_samples(FIX / "trl_stepwise.jsonl", format="input_value_label")


def test_hub_name(monkeypatch):
    # offline (tests/conftest.py sets HF_HUB_OFFLINE=1): a clear error, not a traceback from datasets
    with pytest.raises(DataError, match="not a local file or directory.*HF_HUB_OFFLINE=1"):
        load_samples("someone/not-cached-prm-data")
    import datasets

    rows = read_rows("math_shepherd.jsonl")
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = load_samples("peiyi9979/Math-Shepherd", split="train[:3]")
    assert calls == [("peiyi9979/Math-Shepherd", None, "train[:3]")]
    assert [s.labels for s in got][1] == [1.0, 0.0, 0.0] and got[0].meta["row"] == 0


def test_save_round_trip_and_trl_export(tmp_path):
    samples = load_samples(FIX / "math_shepherd.jsonl")
    pairs = load_samples(FIX / "step_dpo.jsonl")
    prefs = load_samples(FIX / "hh_rlhf.jsonl")
    for items, name in [(samples, "s.jsonl"), (pairs, "p.jsonl.gz"), (prefs, "q.jsonl")]:
        path = save_samples(tmp_path / name, items)
        back = load_samples(path)
        assert [x.to_dict() for x in back] == [x.to_dict() for x in items]  # meta keeps the original source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl.gz", "q.jsonl", "s.jsonl"]  # no temp files
    from stepdpo.tasks.arith import make_samples

    arith = make_samples(5, seed=1, error_rate=0.5)
    back = load_samples(save_samples(tmp_path / "arith" / "a.jsonl", arith))
    assert [x.to_dict() for x in back] == [x.to_dict() for x in arith]  # meta["source"] stays "arith"
    (tmp_path / "arith" / "a.jsonl").unlink()
    with pytest.raises(TypeError):
        save_samples(tmp_path / "x.jsonl", [{"prompt": "p"}])
    assert not (tmp_path / "x.jsonl").exists()
    ds = to_trl_stepwise(samples)
    assert ds.column_names == ["prompt", "completions", "labels"]
    assert ds[1]["labels"] == [True, False, False] and ds[1]["completions"][0] == "Step 1: Each pen costs $2."
    with pytest.raises(DataError, match="row 0, field 'labels'"):
        to_trl_stepwise([StepSample("p", ["a"])])


def test_label_conventions():
    assert [to_label(v) for v in (True, False, "+", " - ", 1, 0, 0.7)] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.7]
    for bad in ("yes", 2, -1, None):
        with pytest.raises(DataError):
            to_label(bad)


def test_fixture_dir_loads_as_a_whole(tmp_path):
    # a directory mixing formats: each file is detected on its own
    for name in ("trl_stepwise.jsonl", "step_dpo.jsonl"):
        shutil.copy(FIX / name, tmp_path / name)
    items, stats = load_samples_with_stats(tmp_path)
    assert sorted(stats.formats.values()) == ["step_dpo", "trl_stepwise"]
    assert [type(x).__name__ for x in items] == ["StepPair"] * 2 + ["StepSample"] * 2
