"""Shared-prefix (token-tree) scoring: the packed layout is exact, and the verification backend's
default path gives the per-question scores of the seed-004 loop."""

import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_models import shared_prefix as sp
from reward_models.process import (
    DEFAULT_STEP_TEMPLATE,
    EARLIER_DEFAULT_STEP_TEMPLATES,
    TEXT_ONLY_STEP_TEMPLATE,
    ProcessRewardModel,
)
from reward_models.testing import tiny_causal_lm, tiny_qwen2_causal_lm

PROMPTS = ["Q: 2+3*4\n", "Q: 7-5\n", "Q: 9\n", "Q: 1+1+1+1\n"]
STEPS = [["3*4=12", "2+12=14", "Answer: 14"], ["7-5=2", "Answer: 2"], ["Answer: 9"],
         ["1+1=2", "2+1=3", "3+1=4", "Answer: 4"]]




def seed004_loop(model, tokenizer, prm, prompts, steps):
    """One forward per question at batch 1, ``log_softmax`` of the last logits, Yes minus No."""
    yes, no = prm.candidate_ids
    out = []
    with torch.no_grad():
        for p, s in zip(prompts, steps):
            row = []
            for q in prm.verification_queries(p, s):
                lp = torch.log_softmax(model(input_ids=torch.tensor([tokenizer(q)["input_ids"]])).logits[0, -1].double(), 0)
                row.append(float(lp[yes] - lp[no]))
            out.append(row)
    return out


def flat(rows):
    return [v for row in rows for v in row]


# -- the packed layout ---------------------------------------------------------------------------------
seqs_strategy = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=7), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=seqs_strategy, cap=st.one_of(st.none(), st.integers(1, 20)), n_groups=st.integers(1, 3))
def test_packing_reproduces_every_sequence(seqs, cap, n_groups):
    groups = [k % n_groups for k in range(len(seqs))]
    packed = sp.pack_token_trees(seqs, groups, max_row_tokens=cap)
    assert len(packed.ends) == len(seqs) and packed.num_query_tokens == sum(map(len, seqs))
    distinct = {(g, tuple(s[:k])) for s, g in zip(seqs, groups) for k in range(1, len(s) + 1)}
    assert packed.num_tokens >= len(distinct)  # every distinct prefix at least once
    if cap is None:
        assert packed.num_tokens == len(distinct)  # and exactly once when rows are not split
        assert len(packed.rows) == len(set(groups))
    rows_of_group = {}
    for q, (seq, (r, node)) in enumerate(zip(seqs, packed.ends)):
        rows_of_group.setdefault(groups[q], set()).add(r)
        row = packed.rows[r]
        mask = row.attention_mask()
        seen = np.flatnonzero(mask[node])  # what the query's last token attends to: the query itself
        seen = seen[np.argsort([row.position_ids[j] for j in seen])]
        assert [row.input_ids[j] for j in seen] == seq
        assert [row.position_ids[j] for j in seen] == list(range(len(seq)))
        assert node >= len(row) - row.num_ends  # ends are laid out last
        if cap is not None:
            assert len(row) <= max(cap, max(map(len, seqs)))
    for r in {r for rs in rows_of_group.values() for r in rs}:  # a row holds one group only
        assert sum(r in rs for rs in rows_of_group.values()) == 1


def test_packing_rejects_empty_sequences():
    with pytest.raises(ValueError, match="empty"):
        sp.pack_token_trees([[1], []])


def test_tree_inputs_pad_left_and_never_leave_a_row_empty():
    packed = sp.pack_token_trees([[1, 2, 3], [1, 2, 4], [5]], groups=[0, 0, 1])
    ids, pos, mask = sp.tree_inputs(packed.rows, pad_id=0)
    assert ids.shape == (2, 4) and mask.shape == (2, 1, 4, 4)
    assert ids[1].tolist() == [0, 0, 0, 5] and pos[1].tolist() == [0, 0, 0, 0]
    assert mask.any(-1).all()  # every position attends to something (no NaN rows)
    assert not mask[1, 0, 3, :3].any()  # nothing attends to padding


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_tree_logits_equal_each_sequence_run_alone(tokenizer, attn, family):
    build = tiny_causal_lm if family == "gpt2" else tiny_qwen2_causal_lm
    model = build(tokenizer, seed=3).eval()
    model.config._attn_implementation = attn
    assert sp.tree_attention_supported(model)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(5, 300, (30,), generator=g).tolist()
    seqs = [base[:n] + torch.randint(5, 300, (m,), generator=g).tolist() for n, m in
            [(30, 0), (10, 5), (20, 7), (20, 1), (3, 12), (0, 9)]] + [base[:12]]
    packed = sp.pack_token_trees(seqs, groups=[0, 0, 0, 1, 1, 1, 0], max_row_tokens=40)
    cand = [7, 11, 42]
    with torch.inference_mode():
        got = sp.tree_next_token_logits(model, packed, cand, pad_id=0, token_budget=64)
        want = torch.stack([model(input_ids=torch.tensor([s])).logits[0, -1, cand] for s in seqs])
        got_full = sp.tree_next_token_logits(model, packed, cand, pad_id=0, token_budget=64, logits_to_keep=False)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_full, want, atol=1e-5)


def test_support_check():
    model = tiny_causal_lm(seed=0)
    assert sp.tree_attention_supported(model)
    model.config._attn_implementation = "flash_attention_2"
    assert not sp.tree_attention_supported(model)
    assert sp.exactness_tolerance(model) == 1e-4
    assert sp.exactness_tolerance(model.to(torch.bfloat16)) > 1e-4


# -- the verification backend -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_verification_shared_prefix_equals_seed004_loop(tokenizer, family):
    lm = (tiny_causal_lm if family == "gpt2" else tiny_qwen2_causal_lm)(tokenizer, seed=5)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", batch_size=3)
    assert prm.settings.shared_prefix
    got = prm.score_steps(PROMPTS, STEPS)
    info = prm.last_verification
    assert info["path"] == "shared_prefix" and info["queries"] == 10
    assert info["model_tokens"] < 0.8 * info["query_tokens"]  # the problem and previous steps are not repeated
    want = seed004_loop(lm, tokenizer, prm, PROMPTS, STEPS)
    assert flat(got) == pytest.approx(flat(want), abs=1e-4)
    old = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", batch_size=3, shared_prefix=False)
    assert flat(old.score_steps(PROMPTS, STEPS)) == pytest.approx(flat(got), abs=1e-4)
    assert old.last_verification["path"] == "per_query"
    assert old.last_verification["model_tokens"] == info["query_tokens"]


def test_verification_shares_prefixes_across_solutions_of_one_problem(tokenizer):
    """K continuations after one prefix (pair building): the problem and the common steps run once."""
    lm = tiny_causal_lm(tokenizer, seed=2)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    prefix = ["1+1=2", "2+1=3"]
    sols = [prefix + [f"3+1={k}", f"Answer: {k}"] for k in range(4, 8)]
    got = prm.score_steps(["Q: 1+1+1+1\n"] * 4, sols)
    one = [prm.score_steps(["Q: 1+1+1+1\n"], [s])[0] for s in sols]
    assert flat(got) == pytest.approx(flat(one), abs=1e-5)
    assert flat(got) == pytest.approx(flat(seed004_loop(lm, tokenizer, prm, ["Q: 1+1+1+1\n"] * 4, sols)), abs=1e-4)
    together = prm.score_steps(["Q: 1+1+1+1\n"] * 4, sols) and prm.last_verification["model_tokens"]
    apart = sum(prm.score_steps(["Q: 1+1+1+1\n"], [s]) and prm.last_verification["model_tokens"] for s in sols)
    assert together < apart


def test_default_template_computes_each_step_once(tokenizer):
    """With the default question the step judged ends the solution so far, so question j up to its
    step is the start of question j+1: the tree holds the longest question once plus the question
    text once per other step (before issue 17 the step was repeated after "New step: ")."""
    lm = tiny_causal_lm(tokenizer, seed=3)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    prompt, steps = PROMPTS[3], STEPS[3]
    queries = prm.verification_queries(prompt, steps)
    tail = "Is this step correct? Yes or No:"
    assert all(q.endswith("\n" + tail) for q in queries)
    for q, nxt in zip(queries, queries[1:]):
        assert nxt.startswith(q[: -len(tail)])  # the problem, the steps so far, the step judged and its newline
    got = prm.score_steps([prompt], [steps])
    tail_tokens = len(tokenizer(tail)["input_ids"])
    longest = len(tokenizer(queries[-1])["input_ids"])
    assert prm.last_verification["path"] == "shared_prefix"
    assert prm.last_verification["model_tokens"] == longest + (len(steps) - 1) * tail_tokens
    before = ProcessRewardModel.from_model(lm, tokenizer, backend="verification",
                                           prompt_template=EARLIER_DEFAULT_STEP_TEMPLATES[0])
    before.score_steps([prompt], [steps])
    assert prm.last_verification["model_tokens"] < 0.8 * before.last_verification["model_tokens"]
    assert flat(got) == pytest.approx(flat(seed004_loop(lm, tokenizer, prm, [prompt], [steps])), abs=1e-4)


def test_a_saved_earlier_default_keeps_its_question(tokenizer):
    old = EARLIER_DEFAULT_STEP_TEMPLATES[0]
    prm = ProcessRewardModel.from_model(tiny_causal_lm(tokenizer, seed=3), tokenizer, backend="verification",
                                        prompt_template=old)
    assert prm.verification_queries("Q: 7-5\n", ["7-5=2", "Answer: 2"])[1] == (
        "Problem: Q: 7-5\n\nSolution so far:\n7-5=2\nNew step: Answer: 2\nIs the new step correct? Yes or No:")
    assert prm.question_template("") == TEXT_ONLY_STEP_TEMPLATE  # no problem: the reference API's question


@pytest.mark.parametrize("template", [
    DEFAULT_STEP_TEMPLATE,
    "{problem}|{previous_steps}|{step}?",
    "Step: {step}\nProblem: {problem}\nBefore: {previous_steps}Correct?",  # the step first: little to share
])
def test_any_template_gives_the_per_question_scores(tokenizer, template):
    lm = tiny_causal_lm(tokenizer, seed=4)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", prompt_template=template)
    got = prm.score_steps(PROMPTS, STEPS)
    assert flat(got) == pytest.approx(flat(seed004_loop(lm, tokenizer, prm, PROMPTS, STEPS)), abs=1e-4)
    if template.startswith("Step"):  # under 10% of the tokens would be saved: one sequence per question
        assert prm.last_verification["path"] == "per_query"


def test_model_without_4d_masks_falls_back(tokenizer, caplog):
    from reward_models.process import yes_no_logodds

    lm = tiny_causal_lm(tokenizer, seed=5)
    want = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", shared_prefix=False).score_steps(
        PROMPTS, STEPS)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    lm.config._attn_implementation = "flash_attention_2"  # only the name is read: the model never runs with it
    with pytest.raises(ValueError, match="4D attention mask"):
        yes_no_logodds(lm, tokenizer, ["a"], prm.candidate_ids, 0, 4, None, shared_prefix=True)
    with caplog.at_level(logging.INFO):
        assert not prm._shared_prefix_works([[1, 2]], ["p"])  # decided before any forward
    assert "takes no custom 4D attention mask" in caplog.text
    lm.config._attn_implementation = "sdpa"
    got = prm.score_steps(PROMPTS, STEPS)  # decided once per reward model: stays on the per-question path
    assert prm.last_verification["path"] == "per_query"
    assert flat(got) == pytest.approx(flat(want), abs=1e-6)


def test_first_use_check_falls_back_when_scores_differ(tokenizer, monkeypatch, caplog):
    lm = tiny_causal_lm(tokenizer, seed=5)
    want = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", shared_prefix=False).score_steps(
        PROMPTS, STEPS)
    import reward_models.process as process

    real = process.tree_next_token_logits

    def wrong(*args, **kwargs):  # e.g. a model that ignores the custom mask
        out = real(*args, **kwargs)
        out[:, 0] += 0.5
        return out

    monkeypatch.setattr(process, "tree_next_token_logits", wrong)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    with caplog.at_level(logging.WARNING):
        got = prm.score_steps(PROMPTS, STEPS)
    assert "scoring one sequence per question" in caplog.text
    assert prm.last_verification["path"] == "per_query"
    assert flat(got) == pytest.approx(flat(want), abs=1e-6)


def test_first_use_check_falls_back_when_the_model_rejects_the_mask(tokenizer, monkeypatch, caplog):
    lm = tiny_causal_lm(tokenizer, seed=5)
    import reward_models.process as process

    def broken(*args, **kwargs):
        raise RuntimeError("attn_mask is not supported by this kernel")

    monkeypatch.setattr(process, "tree_next_token_logits", broken)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    with caplog.at_level(logging.WARNING):
        got = prm.score_steps(PROMPTS, STEPS)
    assert "shared-prefix scoring failed" in caplog.text and prm.last_verification["path"] == "per_query"
    assert flat(got) == pytest.approx(flat(seed004_loop(lm, tokenizer, prm, PROMPTS, STEPS)), abs=1e-4)


def test_live_policy_keeps_training_mode(tokenizer):
    lm = tiny_causal_lm(tokenizer, seed=1).train()
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    prm.score_steps(PROMPTS[:2], STEPS[:2])
    assert lm.training and prm.last_verification["path"] == "shared_prefix"
