"""The truncation policy: whole steps only, the prompt's head kept, drops counted (issue 8, point 2)."""

from collections import Counter

import pytest
import torch

from reward_models.steps import StepFormat
from reward_models.testing import tiny_token_classifier
from reward_models.training import (
    IGNORE_INDEX,
    ORMConfig,
    ORMTrainer,
    OutcomeRow,
    PRMConfig,
    PRMTrainer,
    StepRow,
    build_orm_features,
    build_prm_features,
)
from reward_models.truncation import STAT_KEYS, count, empty_stats, truncate_steps
from reward_models.types import DataError

FMT = StepFormat()


# -- the pure policy ------------------------------------------------------------------------------
def test_fits_is_untouched():
    r = truncate_steps(4, [3, 3], 10)
    assert (r.prompt_keep, r.steps_keep, r.dropped, r.truncated) == (4, 2, False, False)


def test_trailing_whole_steps_are_dropped_never_part_of_one():
    r = truncate_steps(4, [3, 3, 3, 3], 12)  # 4 + 3 + 3 = 10 fits, + 3 = 13 does not
    assert (r.prompt_keep, r.steps_keep, r.steps_dropped, r.labeled_steps_dropped) == (4, 2, 2, 2)
    assert r.truncated and not r.dropped
    # a partially fitting step is dropped whole (4 + 3 = 7; the 5-token step would leave 1 token cut)
    r = truncate_steps(4, [3, 5], 11)
    assert (r.steps_keep, r.steps_dropped) == (1, 1)


def test_unscored_steps_do_not_count_as_labels_and_prompt_head_is_cut_for_a_scored_step():
    # only step 2 is scored: steps 0..1 fit with the full prompt but step 2 does not
    r = truncate_steps(10, [3, 3, 3], 15, scored=[2], min_prompt_tokens=4)
    assert (r.prompt_keep, r.steps_keep, r.prompt_tokens_cut, r.labeled_steps_dropped) == (6, 3, 4, 0)
    # the prompt may not shrink below min_prompt_tokens: the example is dropped
    r = truncate_steps(10, [3, 3, 3], 15, scored=[2], min_prompt_tokens=7)
    assert r.dropped and r.labeled_steps_dropped == 1
    # a short prompt is never cut below its own length... and a scored step longer than everything drops it
    assert truncate_steps(2, [20], 10).dropped


def test_counter_and_bad_arguments():
    stats = empty_stats()
    count(stats, truncate_steps(4, [3, 3], 10))
    count(stats, truncate_steps(4, [3, 3, 3], 10))
    count(stats, truncate_steps(2, [20], 10))
    assert set(STAT_KEYS) == set(stats)
    assert (stats["examples"], stats["examples_truncated"], stats["examples_dropped"], stats["steps_dropped"]) == (
        3, 1, 1, 1)
    with pytest.raises(ValueError, match="max_length"):
        truncate_steps(1, [1], 0)
    with pytest.raises(ValueError, match="out of range"):
        truncate_steps(1, [1], 5, scored=[3])


# -- PRM / ORM features ---------------------------------------------------------------------------
def test_prm_features_keep_exact_prefix_and_labels(tokenizer):
    row = StepRow("Q: 2+3+4\n", ["2+3=5", "5+4=9", "Answer: 9"], [1, 0, 1])
    tok = FMT.tokenize(tokenizer, row.prompt, row.steps)
    limit = tok.spans[1][1]  # prompt + two steps exactly
    stats = Counter()
    (f,) = build_prm_features([row], tokenizer, FMT, max_length=limit, truncation="steps", stats=stats)
    assert f["input_ids"] == tok.input_ids[:limit]
    assert [(i, v) for i, v in enumerate(f["labels"]) if v != IGNORE_INDEX] == [
        (tok.score_positions[0], 1.0), (tok.score_positions[1], 0.0)]
    assert stats["examples_truncated"] == 1 and stats["labeled_steps_dropped"] == 1
    # one token less: the second step no longer fits whole, so it goes entirely
    (f,) = build_prm_features([row], tokenizer, FMT, max_length=limit - 1, truncation="steps")
    assert f["input_ids"] == tok.input_ids[: tok.spans[0][1]]
    with pytest.raises(DataError, match="row 0: tokenizes to .* max_length"):
        build_prm_features([row], tokenizer, FMT, max_length=limit, truncation="error")


def test_prm_last_step_only_cuts_the_prompt_end_keeping_its_head(tokenizer):
    row = StepRow("Q: " + "1+" * 20 + "1\n", ["1+1=2", "Answer: 2"], [1, 1])
    tok = FMT.tokenize(tokenizer, row.prompt, row.steps)
    limit = len(tok.input_ids) - 5
    stats = Counter()
    (f,) = build_prm_features([row], tokenizer, FMT, last_step_only=True, max_length=limit, truncation="steps",
                              min_prompt_tokens=2, stats=stats)
    keep = tok.prompt_len - 5
    assert f["input_ids"] == tok.input_ids[:keep] + tok.input_ids[tok.prompt_len:]  # head kept, steps whole
    assert [i for i, v in enumerate(f["labels"]) if v != IGNORE_INDEX] == [tok.score_positions[1] - 5]
    assert stats["prompt_tokens_cut"] == 5
    # with a floor above what is left, the example is dropped and counted, never cut mid-step
    stats = Counter()
    assert build_prm_features([row], tokenizer, FMT, last_step_only=True, max_length=limit, truncation="steps",
                              min_prompt_tokens=tok.prompt_len, stats=stats) == []
    assert stats["examples_dropped"] == 1


def test_orm_completion_is_never_cut(tokenizer):
    rows = [OutcomeRow("Q: 1+2+3\n", ["1+2=3", "3+3=6", "Answer: 6"], 1.0), OutcomeRow("Q: " + "7" * 30 + "\n",
                                                                                       "Answer: 7", 0.0)]
    tok = FMT.tokenize(tokenizer, rows[0].prompt, rows[0].completion)
    n_steps = len(tok.input_ids) - tok.prompt_len
    stats = Counter()
    feats = build_orm_features(rows, tokenizer, FMT, max_length=n_steps + 2, truncation="steps",
                               min_prompt_tokens=2, stats=stats)
    assert len(feats) == 2 and feats[0]["input_ids"] == tok.input_ids[:2] + tok.input_ids[tok.prompt_len:]
    assert [v for v in feats[0]["labels"] if v != IGNORE_INDEX] == [1.0] * n_steps
    assert stats["examples_truncated"] == 2 and stats["steps_dropped"] == 0
    stats = Counter()
    assert build_orm_features(rows[:1], tokenizer, FMT, max_length=n_steps, truncation="steps",
                              min_prompt_tokens=1, stats=stats) == []
    assert stats["examples_dropped"] == 1


# -- trainers -------------------------------------------------------------------------------------
def _rows():
    return [{"prompt": "Q: 1+2+3+4\n", "steps": ["1+2=3", "3+3=6", "6+4=10", "Answer: 10"], "labels": [1, 1, 1, 1]},
            {"prompt": "Q: 1+1\n", "steps": ["1+1=2", "Answer: 2"], "labels": [1, 0]}]


def test_prm_trainer_truncates_counts_and_reports_in_metrics(tmp_path, tokenizer):
    torch.manual_seed(0)
    args = PRMConfig(output_dir=str(tmp_path / "prm"), report_to="none", save_strategy="no", max_steps=2,
                     per_device_train_batch_size=2, disable_tqdm=True, max_length=14, min_prompt_tokens=4)
    trainer = PRMTrainer(tiny_token_classifier(tokenizer, num_labels=2), args, train_dataset=_rows(),
                         processing_class=tokenizer)
    st = trainer.truncation_stats["train"]
    assert st["examples"] == 2 and st["examples_truncated"] >= 1 and st["labeled_steps_dropped"] >= 1
    assert all(len(f["input_ids"]) <= 14 for f in trainer.train_dataset.features)
    out = trainer.train()
    assert out.metrics["truncation/train/examples_truncated"] == st["examples_truncated"]
    logged = [h for h in trainer.state.log_history if "truncation/train/labeled_steps_dropped" in h]
    assert logged and logged[-1]["truncation/train/labeled_steps_dropped"] == st["labeled_steps_dropped"]
    with pytest.raises(DataError, match="row 0: tokenizes to"):
        PRMTrainer(tiny_token_classifier(tokenizer, num_labels=2),
                   PRMConfig(output_dir=str(tmp_path / "p2"), report_to="none", max_length=14, truncation="error"),
                   train_dataset=_rows(), processing_class=tokenizer)
    with pytest.raises(DataError, match="train_dataset: no usable example: 2 of 2"):
        PRMTrainer(tiny_token_classifier(tokenizer, num_labels=2),
                   PRMConfig(output_dir=str(tmp_path / "p3"), report_to="none", max_length=3),
                   train_dataset=_rows(), processing_class=tokenizer)
    with pytest.raises(ValueError, match="truncation must be one of"):
        PRMConfig(output_dir=str(tmp_path / "p4"), truncation="middle")


def test_orm_trainer_drops_unfittable_rows_with_counts(tmp_path, tokenizer):
    rows = [{"prompt": "Q: 1+1\n", "completion": "Answer: 2", "label": 1},
            {"prompt": "Q: 1\n", "completion": "1+1=2 " * 20, "label": 0}]
    args = ORMConfig(output_dir=str(tmp_path / "orm"), report_to="none", save_strategy="no", max_steps=1,
                     disable_tqdm=True, max_length=16)
    trainer = ORMTrainer(tiny_token_classifier(tokenizer, num_labels=1), args, train_dataset=rows,
                         processing_class=tokenizer)
    assert trainer.truncation_stats["train"]["examples_dropped"] == 1 and len(trainer.train_dataset) == 1
