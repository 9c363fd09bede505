import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from reward_models.testing import tiny_causal_lm, tiny_tokenizer
from reward_models.types import StepPair
from stepdpo.config import StepwiseDPOConfig
from stepdpo.pairs import build_step_pairs
from stepdpo.sampling import StepSampler
from stepdpo.tasks.arith import STEP_FORMAT, check_solution, checker_reward_model, make_samples
from stepdpo.trainer import StepwiseDPOTrainer, margin_weights, tokenize_step_pair

PAIRS = [
    StepPair(prompt="Q: 2+3*4\n", prefix_steps=["3*4=12"], chosen="2+12=14", rejected="2+12=15",
             chosen_score=1.0, rejected_score=0.0),
    StepPair(prompt="Q: 7-2\n", prefix_steps=["7-2=5"], chosen="Answer: 5", rejected="Answer: 6", is_final=True,
             chosen_score=0.9, rejected_score=0.6),
    StepPair(prompt="Q: 4+4-1\n", prefix_steps=[], chosen="4+4=8", rejected="4+4=9", chosen_score=0.8,
             rejected_score=0.1),
    StepPair(prompt="Q: 9-3\n", prefix_steps=[], chosen="9-3=6", rejected="9-3=5", chosen_score=0.7,
             rejected_score=0.2),
]


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], max_steps=2, per_device_train_batch_size=4,
                learning_rate=5e-3, save_strategy="no", gradient_checkpointing=False, logging_steps=1,
                disable_tqdm=True, seed=0)
    base.update(kw)
    return StepwiseDPOConfig(**base)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_tokenized_context_is_the_sampler_context(arith_policy, tmp_path):
    model, tok, cfg = arith_policy
    probs = make_samples(12, seed=21, cfg=cfg)
    sampler = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=0)
    res = build_step_pairs([p.prompt for p in probs], sampler, checker_reward_model(cfg), k=4, max_steps=4)
    assert res.pairs, res.stats
    trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=make_args(tmp_path), tokenizer=tok,
                                 train_dataset=res.pairs)
    regenerated = sampler.sample_next_steps([p.prompt for p in res.pairs], [p.prefix_steps for p in res.pairs], k=1)
    for row, (step,) in zip(trainer.train_dataset, regenerated):
        assert row["prompt_ids"] == step.context_ids
        piece = tok(row["chosen"] + "\n", add_special_tokens=False)["input_ids"]
        assert row["chosen_ids"][: len(piece)] == piece


def test_no_eos_after_mid_solution_step_in_the_collated_batch(tmp_path):
    tok = tiny_tokenizer()
    trainer = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path), tokenizer=tok,
                                 train_dataset=PAIRS)
    batch = next(iter(trainer.get_train_dataloader()))
    eos = tok.eos_token_id
    n = batch["input_ids"].shape[0] // 2
    by_chosen = {p.chosen: p for p in PAIRS}
    for row in range(2 * n):
        comp = batch["input_ids"][row][batch["completion_mask"][row].bool()].tolist()
        text = tok.decode(comp)
        pair = next(p for c, p in by_chosen.items() if text.startswith(c) or text.startswith(p.rejected))
        if pair.is_final:
            assert comp[-1] == eos and comp.count(eos) == 1
        else:
            assert eos not in comp and text.endswith("\n")
    assert any(p.is_final for p in PAIRS) and not all(p.is_final for p in PAIRS)


@pytest.mark.parametrize("loss_type,accum", [("sigmoid", 1), ("ipo", 1), (["sigmoid", "sft"], 2)])
def test_parameters_change(tmp_path, loss_type, accum):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    before = snapshot(model)
    args = make_args(tmp_path, loss_type=loss_type, gradient_accumulation_steps=accum,
                     per_device_train_batch_size=4 // accum)
    trainer = StepwiseDPOTrainer(model=model, args=args, processing_class=tok, train_dataset=PAIRS,
                                 eval_dataset=PAIRS[:2])
    assert trainer.ref_model is not None and trainer.ref_model is not model
    ref_before = snapshot(trainer.ref_model)
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())
    assert all(torch.equal(ref_before[k], v) for k, v in trainer.ref_model.named_parameters())
    assert trainer.state.global_step == 2
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and "eval_rewards/accuracies" in metrics


def test_lora_changes_adapter_only_and_allocates_no_reference(tmp_path):
    from peft import LoraConfig
    from transformers import GPT2LMHeadModel

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    base = snapshot(model)
    gc.collect()
    n_models = sum(isinstance(o, GPT2LMHeadModel) for o in gc.get_objects())
    trainer = StepwiseDPOTrainer(model=model, args=make_args(tmp_path, learning_rate=5e-2), tokenizer=tok,
                                 train_dataset=PAIRS,
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                        lora_dropout=0.0))
    gc.collect()
    assert trainer.ref_model is None
    assert sum(isinstance(o, GPT2LMHeadModel) for o in gc.get_objects()) == n_models
    lora = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    assert lora
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(v, after[k]) for k, v in lora.items())
    base_after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in trainer.model.named_parameters() if "lora_" not in k}
    assert all(torch.equal(base[k], base_after[k]) for k in base)


class OnlyStepsPRM:
    """A user reward model with nothing but get_rewards_for_steps (no subclassing)."""

    def __init__(self, cfg):
        self.cfg, self.calls = cfg, 0

    def get_rewards_for_steps(self, steps, problem=None):
        self.calls += 1
        return check_solution(self.cfg.expression_of(problem), steps).labels


def test_user_reward_class_builds_pairs_and_trains(arith_policy, tmp_path):
    model, tok, cfg = arith_policy
    model = copy.deepcopy(model)
    prm = OnlyStepsPRM(cfg)
    prompts = [p.prompt for p in make_samples(12, seed=31, cfg=cfg)]
    before = snapshot(model)
    trainer = StepwiseDPOTrainer(model=model, args=make_args(tmp_path, num_candidates=4, sample_max_new_tokens=12,
                                                             max_solution_steps=4),
                                 tokenizer=tok, train_dataset=prompts, reward_model=prm)
    stats = trainer.pair_stats[0]
    assert prm.calls > 0 and stats["pairs"] == len(trainer.train_dataset) > 0
    for pair in trainer.last_pairs:
        assert prm.get_rewards_for_steps(pair.prefix_steps + [pair.chosen], pair.prompt)[-1] == 1.0
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())


@pytest.mark.parametrize("loss_name", ["sigmoid", "dpop"])
def test_margin_weights_give_the_hand_computed_gradient(tmp_path, loss_name):
    assert margin_weights([1.0, 3.0], "margin") == [0.5, 1.5]
    tok = tiny_tokenizer()
    pairs = PAIRS[2:]  # margins 0.7 and 0.5 -> weights 0.7/0.6 and 0.5/0.6
    model = tiny_causal_lm(tok)
    trainer = StepwiseDPOTrainer(model=model, args=make_args(tmp_path, margin_weighting="margin", beta=0.5,
                                                             loss_type=[loss_name], dpop_lambda=5.0),
                                 tokenizer=tok, train_dataset=pairs)
    with torch.no_grad():  # move the policy away from the reference so the loss is not trivially log 2
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(rows)
    w = batch["pair_weight"]
    assert w.tolist() == pytest.approx([0.7 / 0.6, 0.5 / 0.6])
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}

    def seq_logps(m, row, key):
        ids = torch.tensor([row["prompt_ids"] + row[key]])
        logits = m(input_ids=ids).logits[0, :-1]
        lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        return lp[len(row["prompt_ids"]) - 1:].sum()

    model.zero_grad()
    per_pair = []
    for row in rows:
        with torch.no_grad():
            ref_c = seq_logps(trainer.ref_model, row, "chosen_ids")
            ref = ref_c - seq_logps(trainer.ref_model, row, "rejected_ids")
        pol_c = seq_logps(model, row, "chosen_ids")
        pol = pol_c - seq_logps(model, row, "rejected_ids")
        penalty = torch.clamp(ref_c - pol_c, min=0) if loss_name == "dpop" else 0.0  # DPOP: lambda = 5
        per_pair.append(-F.logsigmoid(0.5 * (pol - ref - 5.0 * penalty)))
    per_pair = torch.stack(per_pair)
    # a registered loss (DPOP) weighs each pair in the loss; TRL's own types through the gradient (value unweighted)
    want = (per_pair * w).mean() if loss_name == "dpop" else per_pair.mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    unweighted = torch.autograd.grad(per_pair.mean(), model.transformer.wte.weight, retain_graph=True)[0]
    (per_pair * w).mean().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(got["transformer.wte.weight"], unweighted, rtol=1e-2, atol=1e-6)


def test_precomputed_reference_logps_are_cached_on_disk(tmp_path):
    tok = tiny_tokenizer()
    args = make_args(tmp_path, precompute_ref_log_probs=True, max_steps=1)
    t1 = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=args, tokenizer=tok, train_dataset=PAIRS)
    assert t1.ref_model is None and t1.ref_logps_cache_hit is False
    files = list((tmp_path / "out" / "ref_logps_cache").glob("*.safetensors"))
    assert len(files) == 1
    t2 = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=args, tokenizer=tok, train_dataset=PAIRS)
    assert t2.ref_logps_cache_hit is True
    assert t2.train_dataset["ref_chosen_logps"] == pytest.approx(t1.train_dataset["ref_chosen_logps"])
    t3 = StepwiseDPOTrainer(model=tiny_causal_lm(tok, seed=5), args=args, tokenizer=tok, train_dataset=PAIRS)
    assert t3.ref_logps_cache_hit is False  # another model: another key
    t2.train()


def test_checkpoint_resume_reaches_the_same_weights(tmp_path):
    tok = tiny_tokenizer()
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=2)
    full = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=args, tokenizer=tok, train_dataset=PAIRS)
    full.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    assert (ckpt / "model.safetensors").exists()
    resumed = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=args, tokenizer=tok, train_dataset=PAIRS)
    resumed.train(resume_from_checkpoint=str(ckpt))
    a, b = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_tokenizer_alias_and_bad_arguments(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="processing_class= or tokenizer="):
        StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path), tokenizer=tok,
                           processing_class=tiny_tokenizer(), train_dataset=PAIRS)
    with pytest.raises(ValueError, match="rounds > 1 needs prompts"):
        StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path, rounds=2), tokenizer=tok,
                           train_dataset=PAIRS)
    ids = tokenize_step_pair(tok, STEP_FORMAT, "Q: 1+2\n", ["1+2=3"], "Answer: 3", "Answer: 4", is_final=True)
    assert ids["chosen_ids"][-1] == tok.eos_token_id


def test_iterative_rounds_regenerate_pairs(arith_policy, tmp_path):
    model, tok, cfg = arith_policy
    prompts = [p.prompt for p in make_samples(8, seed=41, cfg=cfg)]
    args = make_args(tmp_path, rounds=2, regenerate_every_steps=1, learning_rate=1e-4, sample_max_new_tokens=12, max_solution_steps=4)
    trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=args, tokenizer=tok, prompts=prompts,
                                 reward_model=checker_reward_model(cfg))
    trainer.train()
    assert [s["round"] for s in trainer.pair_stats] == [0, 1]
    assert trainer.state.global_step == 1 and args.max_steps == 2


class _RoundSnapshots:
    """Callback: the policy and reference weights at the start of each round's training."""

    def __init__(self):
        self.starts = []

    def attach(self, trainer):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                pol = trainer.accelerator.unwrap_model(trainer.model)
                ref = trainer.ref_model
                outer.starts.append({"policy": snapshot(pol), "ref": snapshot(ref) if ref is not None else
                                     {k: v for k, v in snapshot(pol).items() if ".ref." in k}})

        trainer.add_callback(CB())


@pytest.mark.parametrize("ref_update", ["previous_round", "initial"])
def test_rounds_on_policy_errors_and_reference_update(arith_policy, tmp_path, ref_update):
    """Greedy errors, rollouts at 0.8, DPOP, two rounds: with 'previous_round' the second round's
    reference is the policy as round 0 left it; with 'initial' it stays the starting policy."""
    model, tok, cfg = arith_policy
    probs = make_samples(24, seed=43, cfg=cfg)
    args = make_args(tmp_path, rounds=2, regenerate_every_steps=2, learning_rate=1e-3, sample_max_new_tokens=12,
                     max_solution_steps=4, sample_temperature=0.0, num_continuations=4, loss_type=["dpop"],
                     ref_update=ref_update, probe_pairs=3)
    trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=args, tokenizer=tok,
                                 prompts=[p.prompt for p in probs], reward_model=checker_reward_model(cfg),
                                 answers=[p.meta["expression"] for p in probs],
                                 answer_checker=lambda p, steps, a: check_solution(a, steps).correct)
    snaps = _RoundSnapshots()
    snaps.attach(trainer)
    trainer.train()
    assert [s["round"] for s in trainer.pair_stats] == [0, 1]
    assert all(s["n_solutions"] == 24 for s in trainer.pair_stats)  # greedy: one solution per problem
    first, second = snaps.starts
    assert all(torch.equal(first["ref"][k], first["policy"][k]) for k in first["ref"])
    moved = any(not torch.equal(second["policy"][k], first["policy"][k]) for k in first["policy"])
    assert moved
    same_as_policy = all(torch.equal(second["ref"][k], second["policy"][k]) for k in second["ref"])
    same_as_initial = all(torch.equal(second["ref"][k], first["ref"][k]) for k in second["ref"])
    assert (same_as_policy, same_as_initial) == ((True, False) if ref_update == "previous_round" else (False, True))
    probe = [h for h in trainer.state.log_history if "probe/logps_chosen" in h]
    assert probe and all(h["probe/logps_chosen"] < 0 for h in probe)


def test_lora_rounds_use_the_previous_round_adapter_as_reference(arith_policy, tmp_path):
    from peft import LoraConfig

    model, tok, cfg = arith_policy
    probs = make_samples(16, seed=44, cfg=cfg)
    args = make_args(tmp_path, rounds=2, regenerate_every_steps=2, learning_rate=5e-2, sample_max_new_tokens=12,
                     max_solution_steps=4, sample_temperature=0.0, num_continuations=4, loss_type=["dpop"])
    trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=args, tokenizer=tok,
                                 prompts=[p.prompt for p in probs], reward_model=checker_reward_model(cfg),
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                        lora_dropout=0.0))
    snaps = _RoundSnapshots()
    snaps.attach(trainer)
    trainer.train()
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    assert "ref" in peft_model.peft_config and peft_model.active_adapter == "default"
    _, second = snaps.starts
    refs = {k: v for k, v in second["policy"].items() if ".ref." in k}
    assert refs and all(torch.equal(v, second["policy"][k.replace(".ref.", ".default.")]) for k, v in refs.items())
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if ".ref." in n)
    final = dict(peft_model.named_parameters())
    assert any(not torch.equal(final[k.replace(".ref.", ".default.")], v) for k, v in refs.items())  # trained on


def test_default_judge_is_the_policy_verification_prompt(tmp_path):
    pytest.importorskip("reward_models.process", reason="reward_models.process is not available yet")
    tok = tiny_tokenizer()
    trainer = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path, sample_max_new_tokens=6,
                                                                            max_solution_steps=2,
                                                                            pair_strategy="per_depth"),
                                 tokenizer=tok, prompts=["Q: 1+2\n", "Q: 3+4\n", "Q: 5-1\n"])
    assert trainer.pair_stats[0]["n_groups"] > 0


ALL_LOSSES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


def test_every_trl_loss_type_gives_a_finite_loss_and_gradient(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    trainer = StepwiseDPOTrainer(model=model, args=make_args(tmp_path, margin_weighting="sigmoid",
                                                             label_smoothing=1e-3), tokenizer=tok, train_dataset=PAIRS)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.train()
    for loss_type in ALL_LOSSES:
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        inputs = dict(batch)
        if loss_type.startswith("aot"):  # TRL's aot losses sort pairs: run them without per-pair weights
            inputs.pop("pair_weight")
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        grad = model.transformer.wte.weight.grad
        assert torch.isfinite(loss), loss_type
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, loss_type
    with pytest.raises(ValueError, match="aot"):
        make_args(tmp_path, margin_weighting="margin", loss_type="aot")


def test_default_judge_missing_gives_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "reward_models.process", None)  # as if the module were absent
    tok = tiny_tokenizer()
    with pytest.raises(ImportError, match="reward_model=..."):
        StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path, sample_max_new_tokens=4,
                                                                      max_solution_steps=1),
                           tokenizer=tok, prompts=["Q: 1+2\n"])


def test_step_dpo_dataset_with_its_own_separator_and_row_errors(tmp_path):
    from datasets import Dataset

    from reward_models.types import DataError

    tok = tiny_tokenizer()
    rows = [{"prompt": "Q: 2+3*4\n\n", "initial_reason_steps": "3*4=12\n\n", "chosen": "2+12=14",
             "rejected": "2+12=15"}]
    args = make_args(tmp_path, step_separator="\n\n")
    trainer = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=args, tokenizer=tok,
                                 train_dataset=Dataset.from_list(rows))
    row = trainer.train_dataset[0]
    fmt = args.step_format
    assert row["prefix_steps"] == ["3*4=12"]
    assert row["prompt_ids"] == fmt.tokenize(tok, "Q: 2+3*4\n\n", ["3*4=12"], complete=False).input_ids
    assert row["chosen_ids"] == tok("2+12=14\n\n", add_special_tokens=False)["input_ids"]
    bad = PAIRS[:1] + [{"prompt": "Q: 1\n", "prefix_steps": [], "chosen": "x", "rejected": 3}]
    with pytest.raises(DataError, match="train_dataset, row 1, field 'rejected'"):
        StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path), tokenizer=tok,
                           train_dataset=[p.to_dict() if isinstance(p, StepPair) else p for p in bad])


def test_outcome_pairs_train_through_the_same_trainer(arith_policy, tmp_path):
    """Whole-solution pairs: the SFT layout (prompt, every step piece, EOS after a finished solution
    only), and training on them moves the policy towards the chosen solutions."""
    from stepdpo.pairs import OutcomePair
    from stepdpo.sft import tokenize_sft_example
    from stepdpo.trainer import tokenize_solution_pair

    model, tok, cfg = arith_policy
    probs = make_samples(8, seed=31, cfg=cfg)
    pairs = [OutcomePair(prompt=s.prompt, chosen_steps=s.steps, rejected_steps=s.steps[:-1] + ["Answer: 999"],
                         chosen_score=1.0, rejected_score=0.0, rejected_finished=bool(i % 2)) for i, s in enumerate(probs)]
    ids = tokenize_solution_pair(tok, STEP_FORMAT, probs[0].prompt, probs[0].steps, ["1+1=2"], True, False)
    sft = tokenize_sft_example(tok, probs[0], STEP_FORMAT)
    assert ids["prompt_ids"] + ids["chosen_ids"] == sft["input_ids"]
    assert ids["rejected_ids"] == tok("1+1=2\n", add_special_tokens=False)["input_ids"]
    trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=make_args(tmp_path, max_steps=6, learning_rate=1e-3),
                                 tokenizer=tok, train_dataset=pairs)
    eos = tok.eos_token_id
    for row, p in zip(trainer.train_dataset, pairs):
        assert row["chosen_ids"][-1] == eos and row["chosen_ids"].count(eos) == 1
        assert (row["rejected_ids"][-1] == eos) == p.rejected_finished

    def margin(m):
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
        with torch.no_grad():
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        lp = (lp * batch["completion_mask"][:, 1:]).sum(-1)
        return (lp[: len(pairs)] - lp[len(pairs):]).mean().item()

    before = margin(trainer.model)
    trainer.train()
    assert margin(trainer.model) > before + 0.5
    with pytest.raises(Exception, match="no steps"):
        StepwiseDPOTrainer(model=copy.deepcopy(model), args=make_args(tmp_path), tokenizer=tok,
                           train_dataset=[{"prompt": "Q: 1+1\n", "chosen_steps": ["1+1=2"], "rejected_steps": []}])


def test_round_sample_replay_trains_on_the_right_solutions_of_each_round(arith_policy, tmp_path):
    """replay_weight > 0 with replay_source='round_samples': every round replays exactly the right
    solutions its own pair building sampled (the data RFT would train on), and logs their NLL."""
    model, tok, cfg = arith_policy
    probs = make_samples(24, seed=45, cfg=cfg)
    args = make_args(tmp_path, rounds=2, regenerate_every_steps=2, sample_max_new_tokens=12, max_solution_steps=4,
                     num_continuations=4, replay_weight=1.0, replay_batch_size=4, learning_rate=1e-3)
    seen = []

    class Spy(StepwiseDPOTrainer):
        def _build_pair_dataset(self, *a, **kw):
            ds = super()._build_pair_dataset(*a, **kw)
            seen.append(list(self._round_replay))
            return ds

    trainer = Spy(model=copy.deepcopy(model), args=args, tokenizer=tok, prompts=[p.prompt for p in probs],
                  reward_model=checker_reward_model(cfg), answers=[p.meta["expression"] for p in probs],
                  answer_checker=lambda p, steps, a: check_solution(a, steps).correct)
    trainer.train()
    assert len(seen) == 2 and all(seen)
    by_prompt = {p.prompt: p.meta["expression"] for p in probs}
    for rows in seen:
        assert all(check_solution(by_prompt[s.prompt], s.steps).correct for s in rows)
        assert len({(s.prompt, tuple(s.steps)) for s in rows}) == len(rows)
    assert any("replay/nll" in h for h in trainer.state.log_history)
    assert trainer.loss_weights == [] and trainer._extension_losses == [("dpop", 0.01)]  # weighted next to the NLL
    assert all(s["replayed"] == len(rows) for s, rows in zip(trainer.pair_stats, seen))


def test_round_sample_replay_is_off_on_given_pairs_or_without_answers(arith_policy, tmp_path, caplog):
    model, tok, cfg = arith_policy
    with caplog.at_level("WARNING"):
        on_pairs = StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=make_args(tmp_path, replay_weight=1.0),
                                      tokenizer=tok, train_dataset=PAIRS)
    assert on_pairs._replay is None and on_pairs._extension_losses == [("dpop", 1.0)]
    assert "replay_source='dataset'" in caplog.text
    caplog.clear()
    probs = make_samples(8, seed=46, cfg=cfg)
    with caplog.at_level("WARNING"):
        no_answers = StepwiseDPOTrainer(model=copy.deepcopy(model), tokenizer=tok, prompts=[p.prompt for p in probs],
                                        args=make_args(tmp_path, sample_max_new_tokens=12, max_solution_steps=4),
                                        reward_model=checker_reward_model(cfg))
    assert no_answers._replay is None and "no answers were given" in caplog.text


def test_a_trained_model_deep_copies_without_its_trainer(tmp_path):
    """The next round's reference is a deep copy of the trained policy: the trainer's forward hook
    must not drag the trainer (with its replay stream, which cannot be copied) along, nor keep it alive."""
    import weakref

    from reward_models.types import StepSample

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    replay = [StepSample(prompt="Q: 1+1\n", steps=["1+1=2", "Answer: 2"])]
    trainer = StepwiseDPOTrainer(model=model, args=make_args(tmp_path, replay_weight=1.0, replay_source="dataset"),
                                 tokenizer=tok, train_dataset=PAIRS, replay_dataset=replay)
    trainer.train()
    copied = copy.deepcopy(trainer.model)  # raised "cannot pickle 'generator' object" while the hook held the trainer
    ids = torch.tensor([tok("Q: 1+1\n1+1=2\n")["input_ids"]])
    torch.testing.assert_close(copied(input_ids=ids).logits, trainer.model(input_ids=ids).logits)
    alive = weakref.ref(trainer)
    del trainer
    gc.collect()
    assert alive() is None
    model(input_ids=ids)  # the orphaned hook is a no-op


def test_use_vllm_without_vllm_is_a_clear_error(arith_policy, tmp_path):
    from trl.import_utils import is_vllm_available

    if is_vllm_available():
        pytest.skip("vLLM is installed here: the GPU test below exercises it")
    model, tok, cfg = arith_policy
    with pytest.raises(ImportError, match="pip install vllm"):
        StepwiseDPOTrainer(model=copy.deepcopy(model), args=make_args(tmp_path, use_vllm=True), tokenizer=tok,
                           prompts=[p.prompt for p in make_samples(4, seed=1, cfg=cfg)],
                           reward_model=checker_reward_model(cfg))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM sampling needs a CUDA GPU")
def test_use_vllm_samples_with_the_colocated_engine(arith_policy, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    model, tok, cfg = arith_policy
    path = tmp_path / "policy"  # vLLM loads the architecture from disk, then gets the trainer's weights
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    args = make_args(tmp_path, use_vllm=True, rounds=2, regenerate_every_steps=1, sample_max_new_tokens=12,
                     max_solution_steps=4, sample_temperature=1.0, vllm_gpu_memory_utilization=0.2)
    trainer = StepwiseDPOTrainer(model=policy, args=args, tokenizer=tok,
                                 prompts=[p.prompt for p in make_samples(16, seed=41, cfg=cfg)],
                                 reward_model=checker_reward_model(cfg))
    trainer.train()
    assert [s["round"] for s in trainer.pair_stats] == [0, 1] and all(s["pairs"] > 0 for s in trainer.pair_stats)
    assert {e["sampler"] for e in trainer.shard_log} == {"VLLMStepSampler"}


def test_pair_weights_that_are_not_applied_raise(tmp_path, monkeypatch):
    """TRL's loss types are weighted through the forward hook on TRL's per-token log-probs; if
    that output ever goes missing (a TRL change), training stops instead of silently ignoring
    the weights."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    trainer = StepwiseDPOTrainer(model=model, args=make_args(tmp_path, margin_weighting="margin",
                                                             loss_type=["sigmoid"]), tokenizer=tok, train_dataset=PAIRS)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert not torch.all(batch["pair_weight"] == 1)
    model.train()
    trainer.compute_loss(model, dict(batch)).backward()  # applied: fine
    monkeypatch.setattr(trainer, "_on_policy_forward", lambda module, args, output: None)  # as if no log_probs
    with pytest.raises(RuntimeError, match="weights were set but not applied"):
        trainer.compute_loss(model, dict(batch))
    without = {k: v for k, v in batch.items() if k != "pair_weight"}
    trainer.compute_loss(model, without)  # no weights: nothing to apply


def test_pair_stats_reach_the_log_history_and_the_callbacks(arith_policy, tmp_path):
    """Each round's pair statistics are logged as its training starts, as an entry of their own
    (``pairs/...`` numbers, no training metric mixed in): they reach ``state.log_history`` and every
    callback (so every ``report_to`` integration), and the loss entries stay as they were."""
    from transformers import TrainerCallback

    model, tok, cfg = arith_policy
    prompts = [p.prompt for p in make_samples(8, seed=41, cfg=cfg)]
    seen = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    args = make_args(tmp_path, rounds=2, regenerate_every_steps=1, learning_rate=1e-4, sample_max_new_tokens=12,
                     max_solution_steps=4)
    trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=args, tokenizer=tok, prompts=prompts,
                                 reward_model=checker_reward_model(cfg), callbacks=[Record()])
    trainer.train()
    logged = [h for h in seen if "pairs/count" in h]
    assert [h["pairs/round"] for h in logged] == [0, 1]
    for h, stats in zip(logged, trainer.pair_stats):
        assert h["pairs/count"] == stats["pairs"] > 0
        for key in ("chosen_verified", "skipped_all_bad", "n_groups", "processes"):
            assert h[f"pairs/{key}"] == stats[key]
        assert {k for k in h if not k.startswith("pairs/")} <= {"epoch", "num_input_tokens_seen"}
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h.values())
    history = trainer.state.log_history  # the last round's (each train() starts a new state)
    entry = [h for h in history if "pairs/count" in h]
    assert len(entry) == 1 and entry[0]["pairs/round"] == 1 and entry[0]["step"] == 0
    losses = [h for h in history if "loss" in h]
    assert losses and all("rewards/chosen" in h and not any(k.startswith("pairs/") for k in h) for h in losses)
    assert history.index(entry[0]) < history.index(losses[0])


def test_activation_checkpointing_runs_without_deprecation_warnings(arith_policy, tmp_path):
    """TRL's configs set ``gradient_checkpointing`` (True by default) and TRL switches checkpointing
    off around reference forwards and sampling with names transformers 5.2x deprecated: a run with
    checkpointing on - pairs built with it on (round 1), DPOP and TRL's own loss - warns about none
    of them, and checkpointing is back on (with its every_n_layers) afterwards."""
    import warnings

    model, tok, cfg = arith_policy
    prompts = [p.prompt for p in make_samples(8, seed=41, cfg=cfg)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert StepwiseDPOConfig(output_dir=str(tmp_path / "d"), report_to=[]).activation_checkpointing is True
        args = make_args(tmp_path, rounds=2, regenerate_every_steps=1, learning_rate=1e-4, sample_max_new_tokens=12,
                         max_solution_steps=4, gradient_checkpointing=True)
        assert args.activation_checkpointing and args.gradient_checkpointing
        trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), args=args, tokenizer=tok, prompts=prompts,
                                     reward_model=checker_reward_model(cfg))
        trainer.train()
        assert trainer.model.is_activation_checkpointing
        tiny = tiny_causal_lm(tiny_tokenizer())
        trl_loss = StepwiseDPOTrainer(model=tiny, args=make_args(tmp_path, max_steps=1, loss_type=["sigmoid"],
                                                                 gradient_checkpointing=True),
                                      tokenizer=tiny_tokenizer(), train_dataset=PAIRS)
        trl_loss.train()
    about = [str(w.message) for w in caught
             if issubclass(w.category, FutureWarning) and "checkpointing" in str(w.message)]
    assert not about
    from reward_models.hf_internals import activation_checkpointing_off

    tiny.activation_checkpointing_enable(every_n_layers=2)
    flags = [m.gradient_checkpointing for m in tiny.modules() if hasattr(m, "gradient_checkpointing")]
    with activation_checkpointing_off(tiny, {"every_n_layers": 2, "use_reentrant": False}):
        assert not tiny.is_activation_checkpointing
    assert [m.gradient_checkpointing for m in tiny.modules() if hasattr(m, "gradient_checkpointing")] == flags


def test_pair_building_shows_progress_unless_disable_tqdm(arith_policy, tmp_path, capsys):
    """A bar over the sampling and scoring stages of pair building on the main process, off with
    ``disable_tqdm``; the pairs are the same either way."""
    model, tok, cfg = arith_policy
    prompts = [p.prompt for p in make_samples(8, seed=41, cfg=cfg)]
    built = {}
    for disable in (False, True):
        trainer = StepwiseDPOTrainer(model=copy.deepcopy(model), tokenizer=tok, prompts=prompts,
                                     args=make_args(tmp_path, disable_tqdm=disable, sample_max_new_tokens=12,
                                                    max_solution_steps=4),
                                     reward_model=checker_reward_model(cfg))
        err = capsys.readouterr().err
        shown = "building step pairs (8 prompts)" in err
        assert shown == (not disable) and ("scoring" in err) == (not disable)
        built[disable] = [p.to_dict() for p in trainer.last_pairs]
    assert built[False] == built[True]
