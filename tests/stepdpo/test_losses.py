"""Extension losses (DPOP and user-registered ones) and the one seam to TRL's loss code they use."""

import copy

import pytest
import torch
import torch.nn.functional as F

from reward_models.testing import tiny_causal_lm, tiny_tokenizer
from reward_models.types import StepPair
from stepdpo.losses import PairLogps, dpop_loss, dpop_penalty, register_loss, sequence_logps
from stepdpo.trainer import StepwiseDPOTrainer

PAIRS = [
    StepPair(prompt="Q: 2+3*4\n", prefix_steps=["3*4=12"], chosen="2+12=14", rejected="2+12=15", margin=1.0),
    StepPair(prompt="Q: 7-2\n", prefix_steps=["7-2=5"], chosen="Answer: 5", rejected="Answer: 6", is_final=True,
             margin=0.3),
    StepPair(prompt="Q: 4+4-1\n", prefix_steps=[], chosen="4+4=8", rejected="4+4=19", margin=0.7),
    StepPair(prompt="Q: 9-3\n", prefix_steps=[], chosen="9-3=6", rejected="9-3=5", margin=0.5),
]


def test_dpop_by_hand():
    # chosen fell 0.5 nats below the reference: the margin (0.5 - (-1)) = 1.5 loses 50 * 0.5 = 25
    lp = PairLogps(torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -3.0]), torch.tensor([-1.5, -1.5]),
                   torch.tensor([-2.0, -2.0]))
    assert dpop_penalty(lp).tolist() == [0.5, 0.0]
    want = [-F.logsigmoid(torch.tensor(0.1 * ((-0.5) - (-1.0) - 25.0))).item(),
            -F.logsigmoid(torch.tensor(0.1 * (0.5 + 1.0))).item()]
    assert dpop_loss(lp, beta=0.1, lam=50.0).tolist() == pytest.approx(want)
    assert dpop_loss(lp, beta=0.1, lam=0.0).tolist() == pytest.approx(
        (-F.logsigmoid(0.1 * lp.margin)).tolist())


def test_sequence_logps_masks_and_ld_alpha():
    lp = torch.tensor([[-1.0, -2.0, -4.0, -8.0], [-1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]])  # chosen: 3 tokens; rejected: 1 (shared length 1)
    c, r = sequence_logps(lp, mask)
    assert (c.item(), r.item()) == (-14.0, -1.0)
    c, r = sequence_logps(lp, mask, ld_alpha=0.5)
    assert (c.item(), r.item()) == (-2.0 + 0.5 * -12.0, -1.0)


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("setting", ["plain", "weights", "precompute", "lora", "ld_alpha"])
def test_dpop_at_lambda_zero_is_trl_sigmoid(dpo_args, setting):
    """The seam: with lambda 0, DPOP computed by the trainer from TRL's own forward pass equals
    TRL's sigmoid loss, value and gradient, with precomputed reference log-probs, LoRA's
    adapter-off reference and ld_alpha; with pair weights (in DPOP's loss, through the gradient
    for TRL's) the gradients are equal."""
    tok = tiny_tokenizer()
    extra, peft = {}, None
    if setting == "weights":
        extra = {"margin_weighting": "margin"}
    if setting == "precompute":
        extra = {"precompute_ref_log_probs": True}
    if setting == "ld_alpha":
        extra = {"ld_alpha": 0.5}
    if setting == "lora":
        from peft import LoraConfig

        peft = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0)
    results = []
    base = tiny_causal_lm(tok, seed=3)
    ref = tiny_causal_lm(tok, seed=4) if setting != "lora" else None  # reference != policy: the ratios matter
    for loss_type in (["sigmoid"], ["dpop"]):
        model = copy.deepcopy(base)
        args = dpo_args(str(loss_type[0]), loss_type=loss_type, dpop_lambda=0.0, **extra)
        trainer = StepwiseDPOTrainer(model=model, ref_model=copy.deepcopy(ref) if ref is not None else None,
                                     args=args, tokenizer=tok, train_dataset=PAIRS, peft_config=peft)
        if setting == "lora":  # make the adapter non-zero so that the policy differs from its reference
            with torch.no_grad():
                for name, p in trainer.model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.2, generator=torch.Generator().manual_seed(7))
        batch = next(iter(trainer.get_train_dataloader()))
        if setting == "weights":
            assert not torch.all(batch["pair_weight"] == 1)
        results.append(_loss_and_grads(trainer, batch))
    (l_sig, g_sig), (l_dpop, g_dpop) = results
    if setting != "weights":  # with weights DPOP's value is the weighted mean, TRL's the plain one (same gradient)
        assert l_dpop == pytest.approx(l_sig, rel=1e-5)
    assert g_sig.keys() == g_dpop.keys() and g_sig
    for k in g_sig:
        torch.testing.assert_close(g_dpop[k], g_sig[k], rtol=1e-4, atol=1e-6)


def test_dpop_penalty_counts_when_the_chosen_step_falls(dpo_args):
    """Policy = reference at first: zero penalty; after sigmoid-only steps push the chosen step's
    log-prob below the reference, DPOP's loss exceeds the sigmoid loss on the same batch."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3)
    args = dpo_args(loss_type=["sigmoid", "dpop"], loss_weights=[1.0, 0.0], dpop_lambda=50.0,
                     max_steps=6, learning_rate=5e-2)
    trainer = StepwiseDPOTrainer(model=model, args=args, tokenizer=tok, train_dataset=PAIRS)
    trainer.train()  # the dpop term has weight 0: trained by sigmoid only, but logged
    logs = [h for h in trainer.state.log_history if "dpop/loss" in h]
    assert logs[0]["logps/chosen_below_ref"] == pytest.approx(0.0, abs=1e-6)
    fell = [h for h in logs if h["logps/chosen_below_ref"] > 0.01]
    assert fell, [h["logps/chosen_below_ref"] for h in logs]
    assert all(h["dpop/loss"] > h["loss"] for h in fell)


def test_dpop_training_keeps_the_chosen_step_up(dpo_args):
    """Same pairs, same steps: under the sigmoid loss the chosen steps' log-probs fall below the
    reference's (likelihood displacement at a high learning rate); under DPOP they do not."""
    tok = tiny_tokenizer()
    below = {}
    for loss in ("sigmoid", "dpop"):
        model = tiny_causal_lm(tok, seed=5)
        args = dpo_args(str(loss), loss_type=[loss], dpop_lambda=50.0, max_steps=12, learning_rate=3e-2,
                         beta=0.5)
        trainer = StepwiseDPOTrainer(model=model, args=args, tokenizer=tok, train_dataset=PAIRS)
        trainer.train()
        batch = next(iter(trainer.get_train_dataloader()))
        inputs = {k: v for k, v in batch.items() if k != "pair_weight"}
        ref_c, _ = trainer.compute_ref_log_probs(trainer.ref_model, inputs)
        with torch.no_grad():
            out = trainer.model(**{k: inputs[k] for k in ("input_ids", "attention_mask")})
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
        c, _ = sequence_logps(logp, inputs["completion_mask"][:, 1:])
        below[loss] = torch.clamp(ref_c - c, min=0).mean().item()
    assert below["dpop"] < 0.25 * below["sigmoid"], below


def test_registered_loss_is_used_and_unknown_names_fail(dpo_args):
    calls = []

    def chosen_nll(lp, args):
        calls.append(lp.chosen.shape)
        return -lp.chosen

    register_loss("test_chosen_nll", chosen_nll, overwrite=True)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    trainer = StepwiseDPOTrainer(model=model, args=dpo_args(loss_type=["test_chosen_nll"]), tokenizer=tok,
                                 train_dataset=PAIRS)
    trainer.train()
    assert calls and calls[0] == torch.Size([4])
    assert any("test_chosen_nll/loss" in h for h in trainer.state.log_history)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_args(loss_type=["no_such_loss"])
    with pytest.raises(ValueError, match="TRL's own"):
        register_loss("sigmoid", chosen_nll)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dpop", chosen_nll)


def test_nll_replay_keeps_replayed_solutions_likely(dpo_args):
    """Same pairs and steps, with and without replay: the replayed solutions' NLL ends lower with
    replay on, and it is logged."""
    from reward_models.types import StepSample
    from stepdpo.sft import tokenize_sft_example

    tok = tiny_tokenizer()
    replay = [StepSample(prompt="Q: 8-3\n", steps=["8-3=5", "Answer: 5"]),
              StepSample(prompt="Q: 6+1\n", steps=["6+1=7", "Answer: 7"])]

    def nll(model):
        total = 0.0
        for s in replay:
            row = tokenize_sft_example(tok, s)
            ids = torch.tensor([row["input_ids"]])
            labels = torch.where(torch.tensor([row["completion_mask"]]).bool(), ids, -100)
            with torch.no_grad():
                total += model(input_ids=ids, labels=labels).loss.item()
        return total

    ends = {}
    for weight in (0.0, 1.0):
        model = tiny_causal_lm(tok, seed=1)
        args = dpo_args(str(weight), loss_type=["dpop"], replay_weight=weight, replay_batch_size=2, replay_source="dataset",
                         max_steps=8, learning_rate=1e-2)
        trainer = StepwiseDPOTrainer(model=model, args=args, tokenizer=tok, train_dataset=PAIRS,
                                     replay_dataset=replay if weight else None)
        trainer.train()
        ends[weight] = nll(trainer.model)
        logged = any("replay/nll" in h for h in trainer.state.log_history)
        assert logged == bool(weight)
    assert ends[1.0] < ends[0.0] - 0.5, ends
    with pytest.raises(ValueError, match="replay_dataset"):
        StepwiseDPOTrainer(model=tiny_causal_lm(tok), args=dpo_args(replay_weight=0.5, replay_source="dataset"),
                           tokenizer=tok,
                           train_dataset=PAIRS)
