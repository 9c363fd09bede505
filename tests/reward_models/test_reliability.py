"""Interrupted runs and numerics (issue 8, points 3 and 5): atomic checkpoints, resume after
SIGKILL to the same weights, and a loss guard that names the step and batch."""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reward_models.reliability import NonFiniteLossError, is_complete_checkpoint, latest_complete_checkpoint
from reward_models.testing import tiny_sequence_classifier, tiny_token_classifier
from reward_models.training import (
    BTRewardConfig,
    BTRewardTrainer,
    ORMConfig,
    ORMTrainer,
    PRMConfig,
    PRMTrainer,
)

ROWS = [{"prompt": f"Q: {a}+{b}\n", "steps": [f"{a}+{b}={a + b + (i % 2)}", f"Answer: {a + b + (i % 2)}"],
         "labels": [1 - i % 2, 1 - i % 2]} for i, (a, b) in enumerate((a, b) for a in range(1, 5) for b in range(1, 5))]


def _prm(tmp_path, tokenizer, name="out", **kw):
    base = dict(output_dir=str(tmp_path / name), report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
                per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3)
    base.update(kw)
    return PRMTrainer(tiny_token_classifier(tokenizer, num_labels=2), PRMConfig(**base), train_dataset=ROWS,
                      processing_class=tokenizer)


# -- numerics -----------------------------------------------------------------------------------
def test_nan_loss_stops_training_naming_step_and_batch(tmp_path, tokenizer):
    trainer = _prm(tmp_path, tokenizer, logging_steps=1)
    trainer.train()  # finite: trains fine
    with torch.no_grad():
        trainer.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at optimizer step 1, "
                                                 r"micro-batch 1 .*epoch 0"):
        trainer.train()


def test_inf_loss_stops_orm_and_bt_trainers(tmp_path, tokenizer):
    orm = ORMTrainer(tiny_token_classifier(tokenizer, num_labels=1),
                     ORMConfig(output_dir=str(tmp_path / "orm"), report_to="none", save_strategy="no", max_steps=3,
                               disable_tqdm=True, per_device_train_batch_size=2, gradient_accumulation_steps=2),
                     train_dataset=[{"prompt": "Q: 1\n", "completion": "Answer: 1", "label": 1}] * 8,
                     processing_class=tokenizer)
    calls = {"n": 0}
    original = orm.compute_loss

    def third_is_inf(*a, **k):
        calls["n"] += 1
        loss = original(*a, **k)
        return loss * float("inf") if calls["n"] == 3 else loss

    orm.compute_loss = third_is_inf
    with pytest.raises(NonFiniteLossError, match="inf.*optimizer step 2, micro-batch 3"):
        orm.train()
    model = tiny_sequence_classifier(tokenizer)
    bt = BTRewardTrainer(model, BTRewardConfig(output_dir=str(tmp_path / "bt"), report_to="none", save_strategy="no",
                                               max_steps=1, disable_tqdm=True, per_device_train_batch_size=2,
                                               bf16=False, activation_checkpointing=False, max_length=64),
                         train_dataset=[{"prompt": "Q\n", "chosen": "A", "rejected": "B"}] * 2,
                         processing_class=tokenizer)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="optimizer step 1"):
        bt.train()


# -- atomic checkpoints ---------------------------------------------------------------------------
def test_checkpoints_appear_complete_or_not_at_all(tmp_path, tokenizer, monkeypatch):
    trainer = _prm(tmp_path, tokenizer, save_strategy="steps", save_steps=2, save_total_limit=1)
    trainer.train()
    out = Path(trainer.args.output_dir)
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-4"]  # rotation kept
    assert is_complete_checkpoint(out / "checkpoint-4")
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    # a save that dies half-way leaves no checkpoint-N, only a temporary folder resume ignores
    trainer = _prm(tmp_path, tokenizer, name="crash", save_strategy="steps", save_steps=2)

    def boom(*a, **k):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", boom)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    crash = Path(trainer.args.output_dir)
    assert not (crash / "checkpoint-2").exists() and (crash / ".tmp-checkpoint-2" / "checkpoint-2").is_dir()
    assert latest_complete_checkpoint(crash) is None


def test_resume_skips_partial_checkpoints(tmp_path, tokenizer):
    trainer = _prm(tmp_path, tokenizer, save_strategy="steps", save_steps=2)
    trainer.train()
    out = Path(trainer.args.output_dir)
    (out / "checkpoint-9").mkdir()  # e.g. written by a tool that is not atomic, then killed
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"")
    assert latest_complete_checkpoint(out) == str(out / "checkpoint-4")
    resumed = _prm(tmp_path, tokenizer, save_strategy="steps", save_steps=2, max_steps=6)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6  # resumed at 4, not at the partial 9
    with pytest.raises(ValueError, match="no complete checkpoint"):
        _prm(tmp_path, tokenizer, name="empty").train(resume_from_checkpoint=True)


# -- SIGKILL mid-run, resume, same final weights --------------------------------------------------
def _train(out: str, mode: str) -> None:
    """18 steps of PRM training with a checkpoint every 3. ``stall``: the save at step 9 hangs
    after writing weights and optimizer (so the test can kill the process mid-save);
    ``resume``: resume from the newest complete checkpoint."""
    from reward_models.testing import tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    args = PRMConfig(output_dir=out, report_to="none", save_strategy="steps", save_steps=3, max_steps=18,
                     per_device_train_batch_size=4, learning_rate=1e-3, seed=0, disable_tqdm=True,
                     logging_steps=100)
    trainer = PRMTrainer(tiny_token_classifier(tok, num_labels=2, seed=0), args, train_dataset=ROWS,
                         processing_class=tok)
    if mode == "stall":
        save_rng = trainer._save_rng_state

        def stalled(output_dir):
            if trainer.state.global_step == 9:
                time.sleep(60)  # killed here, in the middle of writing checkpoint-9
            return save_rng(output_dir)

        trainer._save_rng_state = stalled
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    trainer.save_model(out + "/final")


def _child(out: str) -> None:
    try:
        _train(out, "stall")
    finally:
        os._exit(0)


def test_sigkill_mid_save_then_resume_reaches_the_same_weights(tmp_path):
    # a forked child (no re-import: fast) trains and is killed with SIGKILL while saving checkpoint-9
    killed = tmp_path / "killed"
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(str(killed),))
    proc.start()
    deadline = time.time() + 60
    partial = [killed / ".tmp-checkpoint-9" / "checkpoint-9" / "optimizer.pt", killed / "checkpoint-9" / "optimizer.pt"]
    while time.time() < deadline and not any(p.exists() for p in partial):
        assert proc.is_alive(), "the training child died before its checkpoint"
        time.sleep(0.02)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert is_complete_checkpoint(killed / "checkpoint-6")
    assert not (killed / "checkpoint-9").exists()  # the interrupted save never took the final name
    assert latest_complete_checkpoint(killed) == str(killed / "checkpoint-6")
    _train(str(killed), "resume")
    full = tmp_path / "full"
    _train(str(full), "fast")
    a = load_file(str(killed / "final" / "model.safetensors"))
    b = load_file(str(full / "final" / "model.safetensors"))
    start = tiny_token_classifier(num_labels=2, seed=0).state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(b[k], start[k]) for k in b if k in start)  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not [p for p in killed.iterdir() if p.name.startswith(".tmp-")]  # the leftover was cleaned


# -- empty data -----------------------------------------------------------------------------------
def test_empty_datasets_are_refused_by_every_trainer(tmp_path, tokenizer):
    from reward_models.types import DataError

    kw = dict(report_to="none", save_strategy="no")
    with pytest.raises(DataError, match="train_dataset: the dataset is empty"):
        PRMTrainer(tiny_token_classifier(tokenizer), PRMConfig(output_dir=str(tmp_path / "p"), **kw), train_dataset=[],
                   processing_class=tokenizer)
    with pytest.raises(DataError, match="train_dataset: the dataset is empty"):
        ORMTrainer(tiny_token_classifier(tokenizer, num_labels=1), ORMConfig(output_dir=str(tmp_path / "o"), **kw),
                   train_dataset=[], processing_class=tokenizer)
    with pytest.raises(DataError, match="train_dataset: the dataset is empty"):
        BTRewardTrainer(tiny_sequence_classifier(tokenizer),
                        BTRewardConfig(output_dir=str(tmp_path / "b"), bf16=False, **kw), train_dataset=[],
                        processing_class=tokenizer)


# -- unsafe files ---------------------------------------------------------------------------------
def test_pickle_in_a_model_directory_is_refused_with_an_explanation(tmp_path, tokenizer):
    from reward_models.base import load_reward_model
    from reward_models.testing import save_tiny

    trainer = _prm(tmp_path, tokenizer, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "prm"))
    assert load_reward_model(tmp_path / "prm").score_steps(["Q: 1+1\n"], [["1+1=2"]])  # safetensors: loads
    (tmp_path / "prm" / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n")  # a pickle payload
    with pytest.raises(ValueError, match=r"pytorch_model.bin.*can execute code when loaded.*safetensors"):
        load_reward_model(tmp_path / "prm")
    base = save_tiny(tiny_token_classifier(tokenizer), tokenizer, tmp_path / "base")
    (base / "model.ckpt").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        PRMTrainer(str(base), PRMConfig(output_dir=str(tmp_path / "x"), report_to="none"), train_dataset=ROWS)
