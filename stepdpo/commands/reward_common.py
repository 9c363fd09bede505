"""Shared parts of ``stepdpo train-prm``, ``train-orm`` and ``train-bt``: data arguments,
model building (tiny offline models or a path handed to the trainer) and evaluation after
training."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepdpo.commands import common

logger = logging.getLogger(__name__)


@dataclass
class RewardScriptArguments(common.DataArguments):
    """Base model and data of a reward-model training run."""

    _argument_group_name = "model and data"

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Base model: a hub id (e.g. Qwen/Qwen2.5-Math-1.5B-Instruct), a local folder (safetensors "
                "only), or tiny-gpt2[:<layers>x<width>] (offline test model)."})
    eval_dataset_name: str | None = field(default=None, metadata={
        "help": "Held-out data to evaluate the saved model on after training (same sources as dataset_name)."})
    eval_split: str = field(default="test", metadata={"help": "Split of eval_dataset_name."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})
    data_neutral: str = field(default="positive", metadata={
        "help": "How PRM800K's neutral rating (0) is read: 'positive' (1.0), 'negative' (0.0) or 'half' (0.5)."})
    arith_error_rate: float = field(default=0.5, metadata={
        "help": "With 'arith' data: the share of solutions with an injected wrong step."})
    dry_run: bool = field(default=False, metadata={
        "help": "Check the whole recipe quickly: at most 8 examples, 2 optimizer steps, no checkpoints."})


def shrink_for_dry_run(script_args, training_args) -> None:
    common.shrink_for_dry_run(script_args)
    script_args.max_eval_samples = min(script_args.max_eval_samples or common.DRY_RUN_SAMPLES, common.DRY_RUN_SAMPLES)
    common.shrink_training_for_dry_run(training_args)


def read(script_args, step_format, seed: int, eval_: bool = False):
    source = script_args.eval_dataset_name if eval_ else script_args.dataset_name
    if not source:
        return None
    return common.read_data(source, split=script_args.eval_split if eval_ else script_args.dataset_split,
                       config=script_args.dataset_config,
                       max_samples=script_args.max_eval_samples if eval_ else script_args.max_samples,
                       step_format=step_format, arith_error_rate=script_args.arith_error_rate, seed=seed,
                       neutral=script_args.data_neutral, skip_invalid=script_args.skip_invalid,
                       rejects_path=None if eval_ else script_args.rejects_path)


def model_and_tokenizer(script_args, build_tiny, trust_remote_code: bool, seed: int, output_dir: str):
    """``(path, tokenizer)``: the trainer loads the path (safetensors only, quantization and
    LoRA applied). A tiny model is first built and saved to ``<output_dir>/base_model``."""
    name = script_args.model_name_or_path
    if not name:
        raise SystemExit("no base model given: set model_name_or_path (a hub id, a folder, or tiny-gpt2)")
    if common.is_tiny(name):
        name = common.save_tiny_base(name, build_tiny, output_dir, seed)
    name = common.absolute_if_local(name)
    return name, common.load_tokenizer(name, trust_remote_code)


def train_and_save(trainer, training_args, command: str, **counts: int) -> dict[str, Any]:
    """Train (resuming when asked), save to ``output_dir``, and return the run summary."""
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return {"command": command, **counts, "output_dir": training_args.output_dir,
            "train_loss": float(result.training_loss), "global_step": int(trainer.state.global_step)}


def evaluate_saved(output_dir: str, samples, title: str) -> dict[str, Any]:
    """Step-level metrics of the saved model on labeled samples; writes eval_metrics.json and
    calibration.png next to the model."""
    from reward_models.base import load_reward_model
    from reward_models.evaluation import evaluate_prm, reliability_diagram

    rm = load_reward_model(output_dir)
    res = evaluate_prm(rm, samples)
    metrics = res.to_dict()
    flat_s = [v for row in res.step_scores for v in row]
    flat_l = [v for s in samples for v in s.labels]
    if flat_s and all(0.0 <= v <= 1.0 for v in flat_s):
        reliability_diagram(flat_s, flat_l, Path(output_dir) / "calibration.png", title=f"{title}: reliability")
    common.write_json(Path(output_dir) / "eval_metrics.json", metrics)
    return metrics


def labeled_samples(data, what: str):
    from reward_models.types import StepSample

    samples = [s for s in data.of_type(StepSample) if s.labels is not None]
    if not samples:
        raise SystemExit(f"{data.source} holds no step-labeled solutions to {what} (PRM800K, Math-Shepherd, TRL "
                         "stepwise, ProcessBench, arith, ... formats)")
    return samples


def check_separator(samples, training_args) -> None:
    """An explicit ``step_separator`` that occurs inside a step stops the run with the file, row and
    field (``auto`` picks one that does not: see ``StepFormatArgs.resolve_separator``)."""
    from reward_models.steps import AUTO_SEPARATOR
    from reward_models.types import DataError

    sep = training_args.step_separator
    if sep == AUTO_SEPARATOR:
        return
    for k, s in enumerate(samples):
        for j, step in enumerate(s.steps):
            if sep in step:
                raise DataError(f"this step contains the step separator {sep!r}: {step[:60]!r}; set --step_separator "
                                "to a text no step contains, or leave it at 'auto' to have one picked",
                                source=s.meta.get("source"), row=s.meta.get("row", k + 1), field=f"steps[{j}]")


def train_step_model(script_args, training_args, trainer_cls, build_tiny, what: str, command: str) -> dict[str, Any]:
    """The whole of ``train-prm`` / ``train-orm``: read the labeled solutions (and the held-out
    ones), build or load the model, train and save it, evaluate the saved model, and write
    ``stepdpo_<command>.json``. ``build_tiny(tokenizer, seed, **sizes)`` builds a tiny-gpt2 model."""
    if script_args.dry_run:
        shrink_for_dry_run(script_args, training_args)
    fmt = training_args.step_format
    article = "an" if what[0] in "AEIOU" else "a"
    data = read(script_args, fmt, training_args.seed)
    train = labeled_samples(data, f"train {article} {what} on")
    check_separator(train, training_args)
    evals = read(script_args, fmt, training_args.seed, eval_=True)
    eval_samples = labeled_samples(evals, "evaluate") if evals is not None else None
    model, tokenizer = model_and_tokenizer(script_args, build_tiny, training_args.trust_remote_code,
                                           training_args.seed, training_args.output_dir)
    logger.info("%s: %d labeled solutions from %s", command, len(train), script_args.dataset_name)
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train, processing_class=tokenizer)
    summary = train_and_save(trainer, training_args, command, train_examples=len(train))
    summary.update(common.rejected_rows(data, evals))
    if trainer.accelerator.is_main_process:
        if eval_samples:
            m = evaluate_saved(training_args.output_dir, eval_samples, what)
            summary.update({"eval_auroc": m["steps"]["auroc"], "eval_processbench_f1": m["first_error"]["f1"],
                            "eval_ece": m["ece"]})
        common.write_json(f"{training_args.output_dir}/stepdpo_{command.replace('-', '_')}.json",
                          {**summary, "log_history": trainer.state.log_history})
        common.print_summary(command, summary)
    return summary
