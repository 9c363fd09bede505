"""Pins every behaviour of transformers' and TRL's private names that reward_models.hf_internals
relies on. A failure here after an upgrade names the hook that changed. (TRL's per-token
``log_probs`` output that the Stepwise DPO forward hook reads is pinned by
tests/stepdpo/test_losses.py::test_dpop_at_lambda_zero_is_trl_sigmoid.)"""

from pathlib import Path

import pytest
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from trl import DPOConfig, DPOTrainer

from reward_models.hf_internals import DPOHooks, StagedCheckpoints
from reward_models.testing import tiny_causal_lm, tiny_tokenizer

ROWS = [{"prompt": "Q: 1+2\n", "chosen": "1+2=3", "rejected": "1+2=4"},
        {"prompt": "Q: 2+2\n", "chosen": "2+2=4", "rejected": "2+2=5"}]


def _dpo_args(tmp_path, **kw):
    return DPOConfig(output_dir=str(tmp_path / "out"), report_to=[], max_steps=1, per_device_train_batch_size=2,
                     save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, bf16=False, **kw)


def test_trainer_save_checkpoint_writes_into_the_output_dir_it_asks_for(tmp_path):
    """StagedCheckpoints: Trainer._save_checkpoint(model, trial) writes checkpoint-<step> into
    self._get_output_dir(trial=...), nowhere else."""
    tok = tiny_tokenizer()

    class T(StagedCheckpoints, Trainer):
        pass

    ids = tok("Q: 1+2\n1+2=3")["input_ids"]
    data = Dataset.from_list([{"input_ids": ids, "labels": ids}] * 2)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], max_steps=1, save_strategy="no",
                             per_device_train_batch_size=2, disable_tqdm=True)
    trainer = T(model=tiny_causal_lm(tok), args=args, train_dataset=data)
    trainer.train()
    assert trainer.run_output_dir() == str(tmp_path / "out")
    trainer.save_checkpoint_into(str(tmp_path / "stage"), trainer.model, None)
    assert (tmp_path / "stage" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (tmp_path / "out" / "checkpoint-1").exists()
    assert trainer.run_output_dir() == str(tmp_path / "out")  # the redirection lasted one call


class Recording(DPOHooks, DPOTrainer):
    extra_signature_columns = ("extra",)

    def __init__(self, *a, **kw):
        self.prepared, self.precomputed = [], []
        super().__init__(*a, **kw)

    def prepare_dataset(self, dataset, processing_class, args, name, trl_prepare):
        self.prepared.append(name)
        return trl_prepare(dataset, processing_class, args, name)

    def precompute_reference(self, dataset, name, batch_size, trl_precompute):
        self.precomputed.append(name)
        return trl_precompute(dataset, name, batch_size)


def test_dpo_trainer_prepares_and_precomputes_through_its_private_hooks(tmp_path):
    """DPOHooks: DPOTrainer.__init__ calls _prepare_dataset(dataset, processing_class, args, name)
    for the train and eval sets, whose result has prompt/chosen/rejected ids; with
    precompute_ref_log_probs it calls _precompute_ref_logps(dataset, name, batch_size), which adds
    ref_chosen_logps/ref_rejected_logps, keyed on _precompute_model_hash."""
    tok = tiny_tokenizer()
    trainer = Recording(model=tiny_causal_lm(tok), args=_dpo_args(tmp_path, precompute_ref_log_probs=True),
                        train_dataset=Dataset.from_list(ROWS), eval_dataset=Dataset.from_list(ROWS),
                        processing_class=tok)
    assert trainer.prepared == ["train", "eval"] and trainer.precomputed == ["train", "eval"]
    cols = set(trainer.train_dataset.column_names)
    assert {"prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps"} <= cols
    assert all(v < 0 for v in trainer.train_dataset["ref_chosen_logps"])
    assert trainer.reference_model_hash is not None
    again = trainer.precompute_reference_as_trl_does(trainer.prepare_dataset_as_trl_does(Dataset.from_list(ROWS), "x"),
                                                     "x", 2)
    assert list(again["ref_chosen_logps"]) == pytest.approx(list(trainer.train_dataset["ref_chosen_logps"]))


def test_dpo_trainer_keeps_signature_columns_and_logs_metric_means(tmp_path):
    """DPOHooks: columns added to _signature_columns reach the collator; values appended to
    _metrics[mode][name] are logged as their mean with the next log."""
    tok = tiny_tokenizer()
    seen = []

    class Collator:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, examples):
            seen.append(set(examples[0]))
            return self.inner([{k: v for k, v in e.items() if k != "extra"} for e in examples])

    trainer = Recording(model=tiny_causal_lm(tok), ref_model=tiny_causal_lm(tok), args=_dpo_args(tmp_path),
                        processing_class=tok, train_dataset=Dataset.from_list([{**r, "extra": 1.0} for r in ROWS]))
    trainer.data_collator = Collator(trainer.data_collator)
    next(iter(trainer.get_train_dataloader()))
    assert "extra" in seen[0]
    trainer.model.train()
    trainer.log_metric("train", "custom/x", 2.0)
    trainer.log_metric("train", "custom/x", 4.0)
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["custom/x"] == pytest.approx(3.0)


def test_trl_dpo_switches_checkpointing_off_through_the_current_names():
    """TRL's DPO trainer calls the ``disable_gradient_checkpointing`` of its module namespace around
    every reference forward; importing the trainer rebinds it to activation_checkpointing_off, which
    switches checkpointing off and back (with every_n_layers) without transformers' FutureWarning."""
    import warnings

    import trl.trainer.dpo_trainer as trl_dpo

    import stepdpo.trainer  # noqa: F401 - applies use_current_checkpointing_names()
    from reward_models.hf_internals import activation_checkpointing_off

    source = Path(trl_dpo.__file__).read_text()
    assert "disable_gradient_checkpointing(" in source  # still called by name from the module namespace
    assert trl_dpo.disable_gradient_checkpointing is activation_checkpointing_off
    model = tiny_causal_lm(tiny_tokenizer())
    model.activation_checkpointing_enable(every_n_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with trl_dpo.disable_gradient_checkpointing(model, {"use_reentrant": False, "every_n_layers": 1}):
            assert not model.is_activation_checkpointing
        assert model.is_activation_checkpointing


def test_a_deep_copy_of_a_dpo_trained_model_runs_its_own_weights(tmp_path):
    """TRL's add_fused_lm_head makes the model's plain forward call the original model's bound forward
    (a closure): a deep copy generated and scored with the original's weights. copyable_fused_forward
    gives the copy its own; the fused training path stays TRL's."""
    import copy

    import torch

    from reward_models.hf_internals import copyable_fused_forward

    tok = tiny_tokenizer()
    x = torch.tensor([[5, 6, 7]])

    def copy_follows_its_weights(model) -> bool:
        twin = copy.deepcopy(model)
        before = twin(input_ids=x).logits.sum().item()
        with torch.no_grad():
            for p in twin.parameters():
                p.add_(0.1)
        return twin(input_ids=x).logits.sum().item() != before

    trainer = DPOTrainer(model=tiny_causal_lm(tok), ref_model=tiny_causal_lm(tok), args=_dpo_args(tmp_path),
                         processing_class=tok, train_dataset=Dataset.from_list(ROWS))
    model = trainer.model
    assert not copy_follows_its_weights(model)  # TRL's patch: the behaviour copyable_fused_forward relies on
    assert copyable_fused_forward(model) and copy_follows_its_weights(model)
    assert not copyable_fused_forward(tiny_causal_lm(tok))  # an unpatched model is left alone
    trainer.train()  # the fused path still trains through TRL's forward
    assert trainer.state.global_step == 1
