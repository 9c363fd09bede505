"""Issue 8 on the policy side: DPO pairs never cut, a NaN guard, resumable pair building and
Monte-Carlo labeling, and determinism (same seed, same config -> same data, pairs, metrics)."""

import json

import pytest
import torch

from reward_models.evaluation import evaluate_prm
from reward_models.labeling import HFRollout, monte_carlo_labels_to_file
from reward_models.process import ProcessRewardModel
from reward_models.reliability import NonFiniteLossError
from reward_models.testing import tiny_causal_lm, tiny_token_classifier, tiny_tokenizer
from reward_models.training import PRMConfig, PRMTrainer
from reward_models.types import DataError, StepPair, StepSample
from stepdpo.config import StepwiseDPOConfig
from stepdpo.pairs import build_step_pairs, build_step_pairs_to_file, load_pairs
from stepdpo.sampling import StepSampler
from stepdpo.tasks.arith import STEP_FORMAT, check_solution, checker_reward_model, make_samples, make_splits
from stepdpo.trainer import StepwiseDPOTrainer, tokenize_step_pair

PAIRS = [
    StepPair(prompt="Q: 2+3*4\n", prefix_steps=["3*4=12"], chosen="2+12=14", rejected="2+12=15"),
    StepPair(prompt="Q: 7-2\n", prefix_steps=["7-2=5"], chosen="Answer: 5", rejected="Answer: 6", is_final=True),
    StepPair(prompt="Q: 4+4-1\n", prefix_steps=[], chosen="4+4=8", rejected="4+4=9"),
    StepPair(prompt="Q: 9-3\n", prefix_steps=[], chosen="9-3=6", rejected="9-3=5"),
]
LONG = StepPair(prompt="Q: 1+1\n", prefix_steps=["1+1=2"], chosen="2+2=4 so 4+4=8 so 8+8=16 so 16+16=32",
                rejected="2+2=5")


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], max_steps=1, per_device_train_batch_size=4,
                learning_rate=5e-3, save_strategy="no", gradient_checkpointing=False, logging_steps=1,
                disable_tqdm=True, seed=0)
    base.update(kw)
    return StepwiseDPOConfig(**base)


def _total(tok, p):
    ids = tokenize_step_pair(tok, STEP_FORMAT, p.prompt, p.prefix_steps, p.chosen, p.rejected, p.is_final)
    return len(ids["prompt_ids"]), len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"]))


# -- point 2: DPO pairs ---------------------------------------------------------------------------
def test_dpo_pair_longer_than_max_length_is_dropped_not_cut(tmp_path):
    tok = tiny_tokenizer()
    limit = max(_total(tok, p)[1] for p in PAIRS)
    ctx, total = _total(tok, LONG)
    assert ctx < limit < total  # its context fits: a context-only check would keep it and cut its step
    trainer = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=_args(tmp_path, max_length=limit), tokenizer=tok,
                                 train_dataset=PAIRS + [LONG])
    assert len(trainer.train_dataset) == 4 and LONG.chosen not in trainer.train_dataset["chosen"]
    assert trainer.truncation_stats["train"] == {"pairs": 5, "pairs_dropped_too_long": 1, "pairs_context_cut": 0}
    out = trainer.train()
    assert out.metrics["truncation/train/pairs_dropped_too_long"] == 1.0
    keep_end = StepwiseDPOTrainer(model=tiny_causal_lm(tok), tokenizer=tok, train_dataset=PAIRS + [LONG],
                                  args=_args(tmp_path, max_length=limit, truncation_mode="keep_end"))
    assert len(keep_end.train_dataset) == 5 and keep_end.truncation_stats["train"]["pairs_context_cut"] == 1
    with pytest.raises(DataError, match="train_dataset: all 5 pairs are longer than max_length=3"):
        StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=_args(tmp_path, max_length=3), tokenizer=tok,
                           train_dataset=PAIRS + [LONG])


# -- point 5: numerics ----------------------------------------------------------------------------
def test_nan_policy_stops_dpo_training_with_step_and_batch(tmp_path):
    tok = tiny_tokenizer()
    trainer = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=_args(tmp_path, max_steps=2), tokenizer=tok,
                                 train_dataset=PAIRS)
    with torch.no_grad():
        trainer.model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="optimizer step 1, micro-batch 1"):
        trainer.train()


def test_nan_rewards_never_become_pairs():
    with pytest.raises(DataError, match="field 'chosen_score': must be finite"):
        StepPair(prompt="Q", prefix_steps=[], chosen="a", rejected="b", chosen_score=float("nan"), rejected_score=0.0)
    with pytest.raises(DataError, match="field 'margin': must be finite"):
        StepPair(prompt="Q", prefix_steps=[], chosen="a", rejected="b", margin=float("inf"))


# -- point 1: pair files --------------------------------------------------------------------------
def test_load_pairs_bad_bytes_skip_invalid_and_rejects(tmp_path):
    good = json.dumps(PAIRS[0].to_dict()).encode()
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(good + b"\n" + b'{"prompt": "Q\xff\xfe"}\n' + json.dumps({**PAIRS[1].to_dict(),
                                                                              "chosen_score": "NaN"}).encode()
                     + b"\n" + good + b"\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, row 2: not valid UTF-8"):
        load_pairs(path)
    rejects = tmp_path / "rejects.jsonl"
    pairs = load_pairs(path, skip_invalid=True, rejects_path=rejects)
    assert pairs == [PAIRS[0], PAIRS[0]]
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in rows] == [(2, None), (3, "chosen_score")]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no valid pairs"):
        load_pairs(rejects, skip_invalid=True)  # rows of another shape only


# -- point 3: incremental, resumable pair building and labeling ------------------------------------
class Interrupted(Exception):
    pass


class FlakyOnce:
    """Delegates to a reward model; raises once when it first sees one of ``poison`` prompts."""

    def __init__(self, rm, poison):
        self.rm, self.poison, self.armed = rm, set(poison), True

    def score_steps(self, prompts, steps):
        if self.armed and self.poison & set(prompts):
            self.armed = False
            raise Interrupted("killed mid-chunk")
        return self.rm.score_steps(prompts, steps)

    def score(self, prompts, completions):
        return self.rm.score(prompts, completions)


def test_pair_building_appends_and_resumes_without_duplicates(arith_policy, tmp_path):
    model, tok, cfg = arith_policy
    prompts = [s.prompt for s in make_samples(12, seed=5, cfg=cfg)]
    rm = checker_reward_model(cfg)
    kw = dict(chunk_size=4, k=4, max_steps=4)

    def sampler():
        return StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=0)

    full = build_step_pairs_to_file(prompts, sampler(), rm, tmp_path / "full.jsonl", **kw)
    assert full.pairs and full.stats["n_prompts"] == 12
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(Interrupted):
        build_step_pairs_to_file(prompts, sampler(), FlakyOnce(rm, prompts[4:8]), out, **kw)
    first_chunk = [StepPair.from_dict(json.loads(x)) for x in out.read_text().splitlines()]
    assert first_chunk == [p for p in full.pairs if p.prompt in prompts[:4]]  # written as soon as built
    with out.open("a") as f:
        f.write('{"prompt": "Q: torn half-written ro')  # as a kill during the next write would leave
    resumed = build_step_pairs_to_file(prompts, sampler(), rm, out, **kw)
    assert resumed.pairs == full.pairs and resumed.stats == full.stats
    assert load_pairs(out) == full.pairs  # no duplicate, no torn row
    with pytest.raises(DataError, match="other inputs or settings"):
        build_step_pairs_to_file(prompts[:5], sampler(), rm, out, **kw)
    again = build_step_pairs_to_file(prompts, sampler(), FlakyOnce(rm, prompts), out, **kw)  # all done: no calls
    assert again.pairs == full.pairs
    out.write_text("")
    with pytest.raises(DataError, match="shorter than its progress file"):
        build_step_pairs_to_file(prompts, sampler(), rm, out, **kw)


def test_mc_labeling_appends_and_resumes_to_the_same_labels(arith_policy, tmp_path):
    model, tok, cfg = arith_policy
    samples = [StepSample(prompt=s.prompt, steps=s.steps) for s in make_samples(6, seed=3, cfg=cfg, error_rate=0.5)]
    state = {"armed": False}

    def checker(prompt, steps):
        if state["armed"] and prompt == samples[3].prompt:
            state["armed"] = False
            raise Interrupted("killed mid-chunk")
        return check_solution(cfg.expression_of(prompt), steps).correct

    def run(path):
        return monte_carlo_labels_to_file(samples, HFRollout(model, tok, max_new_tokens=12, temperature=1.5, seed=0),
                                          checker, path, chunk_size=2, n_rollouts=8, mode="soft", progress=False,
                                          step_format=STEP_FORMAT)

    full = run(tmp_path / "full.jsonl")
    state["armed"] = True
    out = tmp_path / "mc.jsonl"
    with pytest.raises(Interrupted):
        run(out)
    assert len(out.read_text().splitlines()) == 2  # chunk 0 was saved before the interruption
    resumed = run(out)
    assert resumed == full and [s.prompt for s in resumed] == [s.prompt for s in samples]
    assert any(0 < v < 1 for s in full for v in s.labels)  # real rollouts, not a constant


# -- point 6: determinism -------------------------------------------------------------------------
def test_same_seed_same_dataset_pairs_and_metrics(arith_policy, tmp_path, tokenizer):
    a, b = make_splits(seed=3, n_train=40, n_test=10), make_splits(seed=3, n_train=40, n_test=10)
    assert a["train"].to_list() == b["train"].to_list() and a["test"].to_list() == b["test"].to_list()
    assert make_splits(seed=4, n_train=40, n_test=10)["train"].to_list() != a["train"].to_list()

    model, tok, cfg = arith_policy
    prompts = [s.prompt for s in make_samples(8, seed=9, cfg=cfg)]

    def pairs():
        return build_step_pairs(prompts, StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=1),
                                checker_reward_model(cfg), k=4, max_steps=4)

    p1, p2 = pairs(), pairs()
    assert p1.pairs and p1.pairs == p2.pairs and p1.stats == p2.stats

    rows = [s.to_dict() for s in make_samples(16, seed=2, cfg=cfg, error_rate=0.5)]
    held_out = make_samples(16, seed=11, cfg=cfg, error_rate=0.5)

    def metrics(name):
        trainer = PRMTrainer(tiny_token_classifier(tokenizer, num_labels=2, seed=0),
                             PRMConfig(output_dir=str(tmp_path / name), report_to="none", save_strategy="no",
                                       max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, seed=0,
                                       disable_tqdm=True, step_separator=STEP_FORMAT.separator),
                             train_dataset=rows, processing_class=tokenizer)
        trainer.train()
        prm = ProcessRewardModel.from_model(trainer.model, tokenizer, step_format=STEP_FORMAT)
        return evaluate_prm(prm, held_out, progress=False)

    m1, m2 = metrics("a"), metrics("b")
    assert m1.step_scores == m2.step_scores and m1.steps == m2.steps and m1.first_error == m2.first_error
    assert len({round(v, 6) for row in m1.step_scores for v in row}) > 1  # real, varied scores
