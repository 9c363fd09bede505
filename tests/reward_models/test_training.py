"""PRM / ORM / BT trainers: hand-computed losses, label conversion, configs, and training that learns."""

import json
import math

import pytest
import torch

from reward_models.base import refuse_pickles
from reward_models.steps import StepFormat
from reward_models.testing import tiny_causal_lm, tiny_sequence_classifier, tiny_token_classifier
from reward_models.training import (
    BTRewardConfig,
    BTRewardTrainer,
    ORMConfig,
    ORMTrainer,
    OutcomeRow,
    PRMConfig,
    PRMTrainer,
    RewardDataCollator,
    StepRow,
    build_orm_features,
    build_prm_features,
    convert_step_label,
    masked_bce_loss,
    masked_step_loss,
    predict_step_probs,
    read_outcome_rows,
    read_step_rows,
    resolve_label_scheme,
    soft_cross_entropy,
    token_pair_logits,
)
from reward_models.types import DataError, PreferencePair, StepSample
from stepdpo.tasks.arith import STEP_FORMAT, ArithConfig, make_samples

# Single-digit chains (every intermediate value in 0..9): a 64-wide 2-layer GPT-2 learns to spot
# arithmetic slips here within seconds on one CPU thread.
EASY = ArithConfig(ops="+-", start_min=1, start_max=9, min_operand=1, max_operand=9, max_value=9)


def _args(cls, tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", disable_tqdm=True,
                seed=0, logging_steps=5, per_device_train_batch_size=16)
    base.update(kw)
    return cls(**base)


# -- pure losses ------------------------------------------------------------------------------------
def test_soft_cross_entropy_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    assert soft_cross_entropy(logits, torch.tensor([1.0])).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert soft_cross_entropy(logits, torch.tensor([0.0])).item() == pytest.approx(-math.log(0.25), abs=1e-6)
    assert soft_cross_entropy(logits, torch.tensor([0.5])).item() == pytest.approx(
        -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), abs=1e-6)
    # equals ordinary cross-entropy for hard targets
    ref = torch.nn.functional.cross_entropy(logits.repeat(2, 1), torch.tensor([1, 0]))
    assert soft_cross_entropy(logits.repeat(2, 1), torch.tensor([1.0, 0.0])).item() == pytest.approx(ref.item())


def test_masked_step_loss_two_and_three_classes():
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])
    labels = torch.tensor([[-100.0, 1.0, 0.5]])  # position 2 has uniform logits: loss ln 2
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert masked_step_loss(logits, labels, 2).item() == pytest.approx(expected, abs=1e-6)

    logits3 = torch.zeros(1, 3, 3)
    logits3[0, 0] = torch.tensor([0.0, 0.0, math.log(2.0)])  # p = [1/4, 1/4, 1/2]
    logits3[0, 2] = torch.tensor([0.0, 0.0, math.log(2.0)])
    labels3 = torch.tensor([[2.0, -100.0, 0.0]])
    assert masked_step_loss(logits3, labels3, 3).item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)

    empty = torch.zeros(1, 2, 2, requires_grad=True)
    loss = masked_step_loss(empty, torch.full((1, 2), -100.0), 2)
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None


def test_masked_bce_and_token_pair():
    logits = torch.tensor([[0.0, math.log(3.0), math.log(3.0)]])  # sigmoid(ln 3) = 3/4
    labels = torch.tensor([[-100.0, 1.0, 0.0]])
    assert masked_bce_loss(logits, labels).item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, abs=1e-6)
    assert masked_bce_loss(logits.unsqueeze(-1), labels).item() == pytest.approx(masked_bce_loss(logits, labels).item())
    lm = torch.arange(10.0).view(1, 1, 10)
    assert token_pair_logits(lm, positive_id=7, negative_id=2).tolist() == [[[2.0, 7.0]]]


# -- label conversion ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value,num_labels,scheme,neutral,expected", [
    (True, 2, "binary", "positive", 1.0), (False, 2, "binary", "positive", 0.0),
    ("+", 2, "binary", "positive", 1.0), ("-", 2, "binary", "positive", 0.0),
    (1, 2, "binary", "positive", 1.0), (0, 2, "binary", "positive", 0.0),
    (1, 2, "rating", "positive", 1.0), (-1, 2, "rating", "positive", 0.0),
    (0, 2, "rating", "positive", 1.0), (0, 2, "rating", "negative", 0.0),
    (-1, 3, "rating", "positive", 0.0), (0, 3, "rating", "positive", 1.0), (1, 3, "rating", "positive", 2.0),
    (True, 3, "rating", "positive", 2.0), ("-", 3, "rating", "positive", 0.0),
    (0.0, 3, "rating", "positive", 1.0), (-1.0, 2, "rating", "positive", 0.0),
    (0.25, 2, "binary", "positive", 0.25), (0.7, 2, "rating", "positive", 0.7), (1.0, 2, "binary", "positive", 1.0),
])
def test_convert_step_label_table(value, num_labels, scheme, neutral, expected):
    assert convert_step_label(value, num_labels=num_labels, scheme=scheme, neutral=neutral) == expected


@pytest.mark.parametrize("value,kw,match", [
    (0.5, {"num_labels": 3, "scheme": "rating"}, "num_labels=2"),
    (-1, {"scheme": "binary"}, "0 or 1"),
    (2, {"scheme": "rating"}, "-1, 0 or 1"),
    (1.5, {}, r"\[0, 1\]"),
    (float("nan"), {}, r"\[0, 1\]"),
    ("good", {}, "'\\+' or '-'"),
    (None, {}, "unsupported"),
])
def test_convert_step_label_errors(value, kw, match):
    with pytest.raises(DataError, match=match):
        convert_step_label(value, **kw)


def test_rows_features_and_errors(tokenizer):
    rows = read_step_rows([
        {"prompt": "Q: 2+3\n", "completions": ["2+3=5", "Answer: 5"], "labels": [True, True]},
        StepSample(prompt="Q: 2+3\n", steps=["2+3=6", "Answer: 6"], labels=[0.0, 0.0]),
        {"prompt": "Q: 2+3\n", "steps": ["2+3=5", "Answer: 6"], "labels": [1, -1]},
    ])
    assert resolve_label_scheme(rows, "auto", 2) == "rating" and resolve_label_scheme(rows[:2], "auto", 2) == "binary"
    assert resolve_label_scheme([StepRow("Q", ["a"], [-1.0])], "auto", 2) == "rating"
    feats = build_prm_features(rows, tokenizer, StepFormat(), scheme="rating")
    tok = StepFormat().tokenize(tokenizer, rows[2].prompt, rows[2].steps)
    assert [i for i, v in enumerate(feats[2]["labels"]) if v != -100] == tok.score_positions
    assert [feats[2]["labels"][p] for p in tok.score_positions] == [1.0, 0.0]
    last = build_prm_features(rows, tokenizer, StepFormat(), scheme="rating", last_step_only=True)
    assert [v for v in last[2]["labels"] if v != -100] == [0.0]
    short = StepRow("Q: 1\n", ["a"], [1])
    limit = len(build_prm_features([short], tokenizer, StepFormat())[0]["input_ids"])
    with pytest.raises(DataError, match=f"row 1: tokenizes to .* more than max_length={limit}"):
        build_prm_features([short, rows[1]], tokenizer, StepFormat(), max_length=limit)
    with pytest.raises(DataError, match=r"row 1, field 'labels\[1\]'"):
        build_prm_features([rows[0], StepRow("Q: 1\n", ["a", "b"], [1, "bad"])], tokenizer, StepFormat())
    with pytest.raises(DataError, match="row 0, field 'labels'.*1 labels for 2 steps"):
        read_step_rows([{"prompt": "Q", "completions": ["a", "b"], "labels": [True]}])
    with pytest.raises(DataError, match=r"row 1, field 'steps\[0\]'.*separator"):
        build_prm_features([rows[0], StepRow("Q", ["a\nb"], [1])], tokenizer, StepFormat())
    with pytest.raises(DataError, match="row 0, field 'steps': missing"):
        read_step_rows([{"prompt": "Q", "labels": [1]}])
    batch = RewardDataCollator(pad_token_id=0)(feats[:2])
    assert batch["labels"].dtype == torch.float and batch["attention_mask"].sum().item() == sum(
        len(f["input_ids"]) for f in feats[:2])


def test_orm_rows_and_features(tokenizer):
    rows = read_outcome_rows([{"prompt": "Q: 1\n", "completion": "Answer: 1", "label": True},
                              StepSample(prompt="Q: 2+3\n", steps=["2+3=6", "Answer: 6"], labels=[0.0, 0.0])])
    assert [r.label for r in rows] == [1.0, 0.0]
    full = build_orm_features(rows, tokenizer, StepFormat())
    p_len = len(tokenizer("Q: 1\n")["input_ids"])
    assert all(v == -100 for v in full[0]["labels"][:p_len]) and all(v == 1.0 for v in full[0]["labels"][p_len:])
    last = build_orm_features(rows, tokenizer, StepFormat(), last_token_only=True)
    assert [v for v in last[1]["labels"] if v != -100] == [0.0] and last[1]["labels"][-1] == 0.0
    with pytest.raises(DataError, match="row 0, field 'label'"):
        read_outcome_rows([{"prompt": "Q", "completion": "x"}])
    with pytest.raises(DataError, match="row 0.*max_length"):
        build_orm_features([OutcomeRow("Q: 1\n", "Answer: 1", 1.0)], tokenizer, StepFormat(), max_length=3)


# -- configs --------------------------------------------------------------------------------------------
def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        PRMConfig(output_dir=str(tmp_path), backend="value")
    with pytest.raises(ValueError, match="num_labels=2"):
        PRMConfig(output_dir=str(tmp_path), backend="token", num_labels=3)
    with pytest.raises(ValueError, match="neutral"):
        PRMConfig(output_dir=str(tmp_path), neutral="maybe")
    with pytest.raises(ValueError, match="use_peft"):
        PRMConfig(output_dir=str(tmp_path), load_in_4bit=True)
    with pytest.raises(ValueError, match="one of load_in_4bit"):
        ORMConfig(output_dir=str(tmp_path), load_in_4bit=True, load_in_8bit=True, use_peft=True)
    with pytest.raises(ValueError, match="separator"):
        PRMConfig(output_dir=str(tmp_path), step_separator="")
    assert ORMConfig(output_dir=str(tmp_path), last_token_only=True).reduce == "last"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            PRMConfig(output_dir=str(tmp_path), use_peft=True, load_in_4bit=True)
        with pytest.raises(ValueError, match="CUDA"):
            ORMConfig(output_dir=str(tmp_path), optim="adamw_8bit")
        with pytest.raises(ValueError, match="CUDA"):
            BTRewardConfig(output_dir=str(tmp_path), use_peft=True, load_in_8bit=True)


def test_trl_parser_yaml_round_trip(tmp_path):
    from trl import TrlParser

    cfg = tmp_path / "prm.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\nbackend: token\nnum_labels: 2\nstep_tag: ' ки'\n"
                   "last_step_only: true\nuse_peft: true\nlora_r: 4\nlora_target_modules: [c_attn]\n"
                   "learning_rate: 5.0e-5\nmax_length: 256\n")
    (args,) = TrlParser([PRMConfig]).parse_args_and_config(args=["--config", str(cfg), "--learning_rate", "1e-3"])
    assert isinstance(args, PRMConfig)
    assert args.learning_rate == 1e-3 and args.backend == "token" and args.step_tag == " ки"
    assert args.last_step_only and args.use_peft and args.lora_r == 4 and args.lora_target_modules == ["c_attn"]
    assert args.step_format == StepFormat(separator="\n", tag=" ки") and args.max_length == 256


# -- training ---------------------------------------------------------------------------------------------
def first_error_f1(probs, samples, threshold=0.5):
    """ProcessBench-style F1: harmonic mean of exact first-error accuracy on erroneous solutions and
    'no error predicted' accuracy on correct ones."""
    err, ok = [], []
    for p, s in zip(probs, samples):
        pred = next((i for i, v in enumerate(p) if v < threshold), None)
        gold = s.meta["first_error"]
        (ok if gold is None else err).append(pred == gold)
    a, b = sum(err) / len(err), sum(ok) / len(ok)
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_prm_learns_arithmetic_first_errors(tokenizer, tmp_path):
    test = make_samples(200, seed=1, cfg=EASY, error_rate=0.5)
    train = make_samples(1500, seed=0, cfg=EASY, error_rate=0.5, exclude={s.meta["expression"] for s in test})
    model = tiny_token_classifier(tokenizer, num_labels=2, seed=0)
    untrained = first_error_f1(predict_step_probs(model, tokenizer, test, STEP_FORMAT), test)
    args = _args(PRMConfig, tmp_path, per_device_train_batch_size=32, learning_rate=3e-3, num_train_epochs=6,
                 warmup_steps=20, logging_steps=10, save_strategy="steps", save_steps=200, save_total_limit=1)
    trainer = PRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=train)
    trainer.train()
    losses = _losses(trainer)
    trained = first_error_f1(predict_step_probs(trainer.model, tokenizer, test, STEP_FORMAT), test)
    print(f"first-error F1: untrained {untrained:.3f}, trained {trained:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    # measured: untrained 0.000, trained 0.586 (slips found, correct solutions kept); loss 0.652 -> 0.407
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1
    assert trained >= 0.45 and trained >= untrained + 0.3

    # the saved directory and the checkpoint both reload to the same scores
    out = tmp_path / "final"
    trainer.save_model(str(out))
    cfg = json.loads((out / "reward_config.json").read_text())
    assert cfg["type"] == "process" and cfg["backend"] == "head" and cfg["num_labels"] == 2
    assert cfg["step_format"] == STEP_FORMAT.to_dict() and cfg["output"] == "prob" and cfg["max_length"] == 256  # max_length 1024, capped to the model's 256 positions
    ckpt = next((tmp_path / "out").glob("checkpoint-*"))
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    for d in (out, ckpt):
        assert (d / "model.safetensors").exists() and (d / "reward_config.json").exists()
        assert (d / "tokenizer.json").exists() and (d / "training_args.json").exists()
        assert not (d / "training_args.bin").exists()
        refuse_pickles(d)  # load_reward_model's safety check passes (trainer resume state is not weights)
        tok = AutoTokenizer.from_pretrained(str(d))
        reloaded = AutoModelForTokenClassification.from_pretrained(str(d), use_safetensors=True)
        got = predict_step_probs(reloaded, tok, test[:20], STEP_FORMAT)
        assert [len(g) for g in got] == [s.num_steps for s in test[:20]]
        if d == out:
            want = predict_step_probs(trainer.model, tokenizer, test[:20], STEP_FORMAT)
            assert sum(got, []) == pytest.approx(sum(want, []), abs=1e-5)


def test_prm_token_backend_soft_labels_loss_falls(tokenizer, tmp_path):
    data = make_samples(200, seed=5, cfg=EASY, error_rate=0.5)
    rows = [{"prompt": s.prompt, "completions": s.steps, "labels": [0.1 + 0.8 * v for v in s.labels]} for s in data]
    model = tiny_causal_lm(tokenizer, seed=0)
    args = _args(PRMConfig, tmp_path, backend="token", learning_rate=3e-3, num_train_epochs=2)
    trainer = PRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=rows, eval_dataset=rows)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.05
    probs = predict_step_probs(trainer.model, tokenizer, data[:8], STEP_FORMAT, backend="token")
    assert [len(p) for p in probs] == [s.num_steps for s in data[:8]]
    trainer.save_model(str(tmp_path / "tok"))
    cfg = json.loads((tmp_path / "tok" / "reward_config.json").read_text())
    assert (cfg["backend"], cfg["positive_token"], cfg["negative_token"]) == ("token", "+", "-")


def test_prm_three_classes_and_last_step_only(tokenizer, tmp_path):
    rows = [{"prompt": "Q: 2+3\n", "completions": ["2+3=5", "5=5", "Answer: 5"], "labels": [1, 0, 1]},
            {"prompt": "Q: 4-1\n", "completions": ["4-1=2", "Answer: 2"], "labels": [-1, -1]}] * 8
    model = tiny_token_classifier(tokenizer, num_labels=3, seed=0)
    args = _args(PRMConfig, tmp_path, num_labels=3, learning_rate=1e-2, max_steps=15, last_step_only=True)
    trainer = PRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=rows, eval_dataset=rows)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.3
    probs = predict_step_probs(trainer.model, tokenizer, rows[:2], num_labels=3)
    assert probs[0][-1] > 0.8 and probs[1][-1] < 0.2  # last steps: good vs bad
    with pytest.raises(DataError, match="row 0, field 'labels\\[0\\]'.*num_labels=2"):
        PRMTrainer(model=model, args=args, processing_class=tokenizer,
                   train_dataset=[{"prompt": "Q", "completions": ["a"], "labels": [0.5]}])


def test_prm_lora_changes_adapter_and_head_only(tokenizer, tmp_path):
    data = make_samples(64, seed=6, cfg=EASY, error_rate=0.5)
    model = tiny_token_classifier(tokenizer, num_labels=2, seed=0)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = _args(PRMConfig, tmp_path, use_peft=True, lora_r=4, learning_rate=1e-2, max_steps=8,
                 activation_checkpointing=True, gradient_accumulation_steps=2)
    trainer = PRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=data)
    trainer.train()
    changed_lora = changed_head = 0
    for name, p in trainer.model.named_parameters():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
        if "lora_" in name:
            changed_lora += int(not torch.equal(p.detach(), torch.zeros_like(p)) if "lora_B" in name else 0)
        elif "modules_to_save" in name:
            key = key.replace(".modules_to_save.default", "")
            changed_head += int(not torch.equal(p.detach(), original[key]))
        else:
            assert not p.requires_grad and torch.equal(p.detach(), original[key]), name
    assert changed_lora > 0 and changed_head > 0
    assert "classifier" in trainer.model.peft_config["default"].modules_to_save
    out = tmp_path / "lora"
    trainer.save_model(str(out))
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "reward_config.json").read_text())["type"] == "process"


def test_orm_trains_and_saves(tokenizer, tmp_path):
    data = make_samples(32, seed=7, cfg=EASY, error_rate=0.5)  # fit a small set: the loss must fall
    model = tiny_token_classifier(tokenizer, num_labels=1, seed=0)
    args = _args(ORMConfig, tmp_path, learning_rate=1e-2, max_steps=80, warmup_steps=5)
    trainer = ORMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.05
    trainer.save_model(str(tmp_path / "orm"))
    cfg = json.loads((tmp_path / "orm" / "reward_config.json").read_text())
    assert (cfg["type"], cfg["backend"], cfg["reduce"]) == ("outcome", "head", "mean")
    with pytest.raises(ValueError, match="num_labels=1"):
        ORMTrainer(model=tiny_token_classifier(tokenizer, num_labels=2), args=args, processing_class=tokenizer,
                   train_dataset=data)


def test_bt_reward_trainer_with_margin(tokenizer, tmp_path):
    data = make_samples(64, seed=8, cfg=EASY, error_rate=0.0)
    wrong = make_samples(64, seed=8, cfg=EASY, error_rate=1.0)
    pairs = [PreferencePair(prompt=g.prompt, chosen=STEP_FORMAT.join(g.steps), rejected=STEP_FORMAT.join(b.steps),
                            margin=0.5) for g, b in zip(data, wrong)]
    model = tiny_sequence_classifier(tokenizer, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    args = _args(BTRewardConfig, tmp_path, learning_rate=3e-3, num_train_epochs=2, bf16=False,
                 activation_checkpointing=False, max_length=128)
    trainer = BTRewardTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=pairs)
    assert "margin" in trainer.train_dataset.column_names
    trainer.train()
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert "score.weight" in changed and len(changed) > len(before) // 2
    losses = _losses(trainer)
    assert sum(losses[-2:]) / 2 < losses[0]
    trainer.save_model(str(tmp_path / "bt"))
    assert json.loads((tmp_path / "bt" / "reward_config.json").read_text())["type"] == "bradley_terry"
    assert (tmp_path / "bt" / "model.safetensors").exists()
    with pytest.raises(DataError, match="row 1, field 'chosen'"):
        BTRewardTrainer(model=model, args=args, processing_class=tokenizer,
                        train_dataset=[pairs[0].to_dict(), {"prompt": "Q", "chosen": "", "rejected": "x"}])


def test_prm_from_path_loads_safely(tokenizer, tmp_path):
    from reward_models.testing import save_tiny

    base = save_tiny(tiny_causal_lm(tokenizer, seed=1), tokenizer, tmp_path / "base")
    rows = [{"prompt": "Q: 2+3\n", "completions": ["2+3=5", "Answer: 5"], "labels": [True, True]}] * 4
    args = _args(PRMConfig, tmp_path, max_steps=2)
    trainer = PRMTrainer(model=str(base), args=args, train_dataset=rows)  # tokenizer found next to the weights
    assert type(trainer.model).__name__ == "GPT2ForTokenClassification" and trainer.model.config.num_labels == 2
    trainer.train()
    with pytest.raises(TypeError, match="token-classification"):
        PRMTrainer(model=tiny_causal_lm(tokenizer), args=args, processing_class=tokenizer, train_dataset=rows)
    (base / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        PRMTrainer(model=str(base), args=args, train_dataset=rows)


def test_orm_and_bt_lora_save_adapters_only(tokenizer, tmp_path):
    data = make_samples(16, seed=10, cfg=EASY, error_rate=0.5)
    orm = ORMTrainer(model=tiny_token_classifier(tokenizer, num_labels=1), processing_class=tokenizer,
                     args=_args(ORMConfig, tmp_path, use_peft=True, lora_r=2, max_steps=2, last_token_only=True),
                     train_dataset=data)
    pairs = [{"prompt": s.prompt, "chosen": "Answer: 1", "rejected": "Answer: 2"} for s in data]
    bt = BTRewardTrainer(model=tiny_sequence_classifier(tokenizer), processing_class=tokenizer, train_dataset=pairs,
                         args=_args(BTRewardConfig, tmp_path, use_peft=True, lora_r=2, max_steps=2, bf16=False,
                                    activation_checkpointing=False))
    for name, trainer, kind in (("orm", orm, "outcome"), ("bt", bt, "bradley_terry")):
        head = "classifier" if name == "orm" else "score"
        assert head in trainer.model.peft_config["default"].modules_to_save
        trainer.train()
        out = tmp_path / name
        trainer.save_model(str(out))
        assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
        assert json.loads((out / "reward_config.json").read_text())["type"] == kind
        refuse_pickles(out)
    assert json.loads((tmp_path / "orm" / "reward_config.json").read_text())["reduce"] == "last"


# -- verification backend: a generative verifier trained with next-token loss ---------------------
def test_verification_features_and_next_token_loss(tokenizer):
    from reward_models.process import DEFAULT_STEP_TEMPLATE, fill_template
    from reward_models.training import build_verification_features, weighted_next_token_loss

    rows = [StepRow("Q: 2+3\n", ["2+3=5", "Answer: 5"], [True, True]),
            StepRow("Q: 4-1\n", ["4-1=2", "Answer: 2"], [False, False])]
    feats = build_verification_features(rows, tokenizer, STEP_FORMAT, DEFAULT_STEP_TEMPLATE, 7, 9,
                                        lm_loss_weight=0.5)
    assert len(feats) == 4 + 1  # one question per step, one next-token example for the all-good row
    q = fill_template(DEFAULT_STEP_TEMPLATE, problem="Q: 4-1\n", previous_steps="4-1=2\n", step="Answer: 2")
    want = list(tokenizer(q)["input_ids"])
    assert feats[4]["input_ids"] == want + [9] and feats[4]["labels"] == [-100] * len(want) + [9]
    lm = feats[2]  # row 0: its two questions, then its next-token example
    assert lm["labels"][-1] == lm["input_ids"][-1] and set(lm["weights"]) == {0.0, 0.5}
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = math.log(3.0)  # position 1 predicts token 2 with p = 3/6
    loss = weighted_next_token_loss(logits, torch.tensor([[-100, -100, 2]]), torch.tensor([[0.0, 0.0, 1.0]]))
    assert loss.item() == pytest.approx(-math.log(0.5), abs=1e-6)


def test_verification_backend_learns_and_reloads_as_a_yes_no_prm(tokenizer, tmp_path):
    from reward_models.base import load_reward_model
    from reward_models.evaluation import auroc

    test = make_samples(60, seed=1, cfg=EASY, error_rate=0.5)
    train = make_samples(300, seed=0, cfg=EASY, error_rate=0.5, exclude={s.meta["expression"] for s in test})
    model = tiny_causal_lm(tokenizer, seed=0)
    args = _args(PRMConfig, tmp_path, backend="verification", learning_rate=3e-3, max_steps=60,
                 per_device_train_batch_size=32, lm_loss_weight=0.2)
    trainer = PRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=train, eval_dataset=test)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(tmp_path / "ver"))
    cfg = json.loads((tmp_path / "ver" / "reward_config.json").read_text())
    assert (cfg["type"], cfg["backend"], cfg["output"], cfg["yes_token"]) == ("process", "verification", "prob", " Yes")
    prm = load_reward_model(tmp_path / "ver", device="cpu")
    scores = prm.score_steps([s.prompt for s in test], [s.steps for s in test])
    a = auroc([v for r in scores for v in r], [lab for s in test for lab in s.labels])
    print(f"verification PRM: eval loss {before:.3f} -> {after:.3f}, held-out step AUROC {a:.3f}")
    assert after < before - 0.3  # from ~log(V) (any token) to the Yes/No decision
    assert all(0 <= v <= 1 for r in scores for v in r) and a > 0.55
    with pytest.raises(ValueError, match="lm_loss_weight"):
        _args(PRMConfig, tmp_path, backend="head", lm_loss_weight=0.5)


def test_token_backend_trains_the_ids_the_scorer_reads(tokenizer, tmp_path):
    """One token lookup (reward_models.hf_utils.token_id) for training and scoring: a label token of
    several tokens is read by its first token in both (training used to refuse it)."""
    from reward_models.hf_utils import token_id

    multi = " correct step"
    assert len(tokenizer(multi, add_special_tokens=False)["input_ids"]) > 1
    rows = [{"prompt": "Q: 2+3\n", "completions": ["2+3=5"], "labels": [1]}]
    args = _args(PRMConfig, tmp_path, backend="token", positive_token=multi, negative_token="-", max_steps=1)
    trainer = PRMTrainer(model=tiny_causal_lm(tokenizer, seed=0), args=args, processing_class=tokenizer,
                         train_dataset=rows)
    assert trainer.positive_id == token_id(tokenizer, multi, "positive_token")
    assert trainer.positive_id == tokenizer(multi, add_special_tokens=False)["input_ids"][0]


def test_configs_take_checkpointing_by_its_current_name_without_a_warning():
    """TRL's RewardConfig sets the deprecated gradient_checkpointing=True: transformers warned in every run."""
    import warnings

    from reward_models.training import BTRewardConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        on = BTRewardConfig(output_dir="/tmp/bt", report_to=[], bf16=False)
        off = BTRewardConfig(output_dir="/tmp/bt", report_to=[], bf16=False, gradient_checkpointing=False)
    assert (on.activation_checkpointing, off.activation_checkpointing) == (True, False)
