"""Monte-Carlo step labels: real checker, real aggregation, scripted and tiny-HF policies."""

import pytest
import torch

from reward_models.labeling import HFRollout, aggregate_rollouts, monte_carlo_labels, to_trl_stepwise
from reward_models.types import DataError, StepSample
from stepdpo.tasks.arith import (
    STEP_FORMAT,
    ArithConfig,
    gold_steps,
    is_correct,
    make_samples,
    parse_expression,
)

CFG = ArithConfig()


def arith_checker(prompt, steps):
    return is_correct(CFG.expression_of(prompt), steps)


class ScriptedPolicy:
    """Completes a prefix that is on the gold path with the gold remainder on even rollouts and with a
    wrong answer on odd ones; any other prefix always gets a wrong answer. Records its batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, contexts, n):
        self.batches.append(len(contexts))
        out = []
        for ctx in contexts:
            head, _, rest = ctx.partition("\n")
            prompt = head + "\n"
            prefix = STEP_FORMAT.split(rest)
            gold = gold_steps(parse_expression(CFG.expression_of(prompt)))
            on_path = prefix == gold[: len(prefix)]
            good = STEP_FORMAT.join(gold[len(prefix):]) if len(prefix) < len(gold) else "Answer: -1"
            out.append([good if on_path and j % 2 == 0 else "Answer: -1" for j in range(n)])
        return out


def test_aggregate_rollouts():
    assert aggregate_rollouts([False, False, True], "hard") == 1.0
    assert aggregate_rollouts([False, False], "hard") == 0.0
    assert aggregate_rollouts([True, False, True, True], "soft") == 0.75
    with pytest.raises(ValueError):
        aggregate_rollouts([True], "median")


def test_hard_labels_match_gold_first_error():
    samples = make_samples(40, seed=3, error_rate=0.5)
    assert any(s.meta["first_error"] is not None for s in samples)
    policy = ScriptedPolicy()
    out = monte_carlo_labels(samples, policy, arith_checker, n_rollouts=4, mode="hard", batch_size=16,
                             step_format=STEP_FORMAT, progress=False)
    assert len(out) == len(samples)
    for s, o in zip(samples, out):
        assert o.steps == s.steps and o.prompt == s.prompt
        assert o.labels == s.labels  # gold prefixes -> 1, from the injected error on -> 0
        assert o.first_error == s.meta["first_error"]
    # batched: every call holds at most batch_size contexts, all but the last exactly batch_size
    assert max(policy.batches) == 16 and all(b == 16 for b in policy.batches[:-1])
    # a complete correct solution's last prefix needs no rollouts
    correct = next(o for o in out if o.meta["first_error"] is None)
    assert correct.meta["mc"][-1] is None and correct.meta["mc_rollouts"] == 4


def test_soft_labels_are_fractions():
    samples = make_samples(30, seed=4, error_rate=0.5)
    out = monte_carlo_labels(samples, ScriptedPolicy(), arith_checker, n_rollouts=4, mode="soft",
                             step_format=STEP_FORMAT, progress=False)
    for s, o in zip(samples, out):
        fe = s.meta["first_error"]
        for i, v in enumerate(o.labels):
            if fe is not None and i >= fe:
                assert v == 0.0 and o.meta["mc"][i] == 0
            elif fe is None and i == s.num_steps - 1:
                assert v == 1.0  # complete correct solution
            else:
                assert v == 0.5 and o.meta["mc"][i] == 2  # half the rollouts finish correctly
    ds = to_trl_stepwise(out)
    assert ds.column_names == ["prompt", "completions", "labels"] and ds[0]["completions"] == out[0].steps
    assert to_trl_stepwise(out, hard=True)[0]["labels"] == [v >= 0.5 for v in out[0].labels]


def test_inputs_and_errors():
    out = monte_carlo_labels([{"prompt": "Q: 2+3\n", "completions": ["2+3=5", "Answer: 5"]}], ScriptedPolicy(),
                             arith_checker, n_rollouts=2, progress=False)
    assert out[0].labels == [1.0, 1.0]
    with pytest.raises(DataError, match="row 1"):
        monte_carlo_labels([("Q: 2+3\n", ["2+3=5"]), ("Q: 2+3\n", [])], ScriptedPolicy(), arith_checker,
                           progress=False)
    with pytest.raises(ValueError, match="completions for context 0"):
        monte_carlo_labels([("Q: 2+3\n", ["2+3=6"])], lambda c, n: [["x"]] * len(c), arith_checker, n_rollouts=3,
                           progress=False)
    with pytest.raises(ValueError, match="mode"):
        monte_carlo_labels([("Q: 2+3\n", ["2+3=6"])], ScriptedPolicy(), arith_checker, mode="avg")


def test_hf_rollout_shapes_determinism_and_left_padding(tokenizer):
    from reward_models.testing import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, seed=0)
    samples = [StepSample(prompt=CFG.prompt(e), steps=s) for e, s in
               [("2+3-4", ["2+3=5", "5-4=1", "Answer: 1"]), ("12+7", ["12+7=20", "Answer: 20"])]]
    state = torch.get_rng_state()
    a = monte_carlo_labels(samples, (model, tokenizer), arith_checker, n_rollouts=3, mode="soft", batch_size=2,
                           step_format=STEP_FORMAT, progress=False, max_new_tokens=6, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    b = monte_carlo_labels(samples, (model, tokenizer), arith_checker, n_rollouts=3, mode="soft", batch_size=2,
                           step_format=STEP_FORMAT, progress=False, max_new_tokens=6, seed=7)
    assert [o.labels for o in a] == [o.labels for o in b]
    assert [len(o.labels) for o in a] == [3, 2]
    assert all(v in (0.0, 1 / 3, 2 / 3, 1.0) for o in a for v in o.labels)
    assert a[0].labels[-1] == 1.0 and a[0].meta["mc"][-1] is None  # complete correct: no rollouts

    roll = HFRollout(model, tokenizer, max_new_tokens=5, seed=1)
    ctx = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]
    first, again = roll.generate_ids(ctx, 4), HFRollout(model, tokenizer, max_new_tokens=5, seed=1).generate_ids(ctx, 4)
    assert first == again and len(first) == 2 and all(len(r) == 4 and all(isinstance(t, str) for t in r)
                                                      for r in first)
    # greedy completions of the short context agree alone and left-padded in a batch
    greedy = HFRollout(model, tokenizer, max_new_tokens=5, temperature=0)
    assert greedy.generate_ids(ctx[:1], 1)[0] == greedy.generate_ids(ctx, 1)[0]


def test_monte_carlo_dataset_trains_a_prm(tokenizer, tmp_path):
    from reward_models.testing import tiny_token_classifier
    from reward_models.training import PRMConfig, PRMTrainer

    samples = make_samples(24, seed=9, error_rate=0.5)
    labeled = monte_carlo_labels(samples, ScriptedPolicy(), arith_checker, n_rollouts=2, mode="soft",
                                 step_format=STEP_FORMAT, progress=False)
    ds = to_trl_stepwise(labeled)
    model = tiny_token_classifier(tokenizer, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    args = PRMConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, report_to="none",
                     save_strategy="no", disable_tqdm=True)
    trainer = PRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=ds)
    trainer.train()
    assert any(not torch.equal(v.detach(), before[k]) for k, v in trainer.model.named_parameters())
