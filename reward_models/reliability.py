"""Trainer safeguards shared by every trainer of the project (PRM, ORM, BT, Stepwise DPO).

:class:`ReliableTrainerMixin`, placed before the ``transformers.Trainer`` subclass in the
bases, adds:

* **Atomic checkpoints.** ``transformers`` 5.23 writes ``checkpoint-N`` in place, so a run
  killed while saving leaves a partial ``checkpoint-N`` that ``resume_from_checkpoint=True``
  would pick. Here every process writes into ``output_dir/.tmp-checkpoint-N/checkpoint-N``;
  after a barrier the main process alone renames it to ``output_dir/checkpoint-N``
  (``os.replace`` on the same file system), so ``checkpoint-N`` exists only complete.
  ``resume_from_checkpoint=True`` (or the string ``"true"``, as a command line gives it)
  resumes from the newest *complete* checkpoint (:func:`latest_complete_checkpoint`) and
  ignores temporary or partial folders.
  Optimizer/scheduler/RNG states are ``torch.save`` files that ``transformers`` reads back
  with ``weights_only=True`` (no arbitrary unpickling); model weights are safetensors.
* **A finite-loss guard.** A NaN or infinite training loss stops training at once with
  :class:`NonFiniteLossError` naming the optimizer step, the micro-batch and the epoch
  (``transformers`` would otherwise only filter it out of the logged mean).
* **Truncation counts in the metrics**: ``trainer.truncation_stats`` (see
  :mod:`reward_models.truncation`) is added to ``train()``'s metrics and log history.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch

from reward_models.hf_internals import StagedCheckpoints

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-"
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "last", "latest"), ("false", "no", "0", "none", "")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint folder is complete when it holds ``trainer_state.json``, which
    the Trainer's checkpoint save writes last (after weights, optimizer, scheduler and RNG
    states; with DeepSpeed the weights may live in its own sub-folders, so they are not
    checked by name). Checkpoints written by this module are complete by construction."""
    return os.path.isfile(os.path.join(os.fspath(path), "trainer_state.json"))


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (partial ones are skipped and logged).

    >>> latest_complete_checkpoint("/nonexistent") is None
    True
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := CHECKPOINT_RE.match(name))), reverse=True)
    for _, name in found:
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("skipping partial checkpoint %s (no trainer_state.json: its save was interrupted)", path)
    return None


UNNAMED_BASE = "[None](https://huggingface.co/None)"  # what TRL's card template renders for no hub id


def name_base_model(card: str | os.PathLike, base: str | None) -> None:
    """In a model card TRL wrote, name a base model that has no hub id (a local folder or a model built
    in memory) instead of TRL's ``[None](https://huggingface.co/None)``.

    >>> import tempfile, pathlib; p = pathlib.Path(tempfile.mkdtemp()) / "README.md"
    >>> _ = p.write_text("a fine-tuned version of [None](https://huggingface.co/None)."); name_base_model(p, None)
    >>> p.read_text()
    'a fine-tuned version of a model built locally (no hub id).'
    """
    path = Path(card)
    if not path.is_file():
        return
    text = path.read_text()
    if UNNAMED_BASE in text:
        path.write_text(text.replace(UNNAMED_BASE, f"the local model `{base}`" if base
                                     else "a model built locally (no hub id)"))


class ReliableTrainerMixin(StagedCheckpoints):
    """Atomic checkpoints, resume from complete checkpoints only, a finite-loss guard,
    truncation counts in the metrics (see the module docstring)."""

    _micro_batch = 0

    def create_model_card(self, *args, **kwargs):
        """The Trainer's model card, with a base model that has no hub id named (see :func:`name_base_model`)."""
        out = super().create_model_card(*args, **kwargs)  # type: ignore[misc]
        config = getattr(self.model, "config", None)  # type: ignore[attr-defined]
        base = getattr(config, "_name_or_path", None) or None
        if self.is_world_process_zero():  # type: ignore[attr-defined]
            name_base_model(os.path.join(self.args.output_dir, "README.md"),  # type: ignore[attr-defined]
                            os.path.abspath(base) if base and os.path.isdir(base) else base)
        return out

    # -- finite-loss guard ------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        self._micro_batch += 1
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        if not bool(torch.isfinite(loss.detach()).all()):
            state = self.state  # type: ignore[attr-defined]
            epoch = state.epoch if state.epoch is not None else 0.0
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss.detach().float().mean())}) at optimizer step "
                f"{state.global_step + 1}, micro-batch {self._micro_batch} of this run (epoch {epoch:.2f}); "
                "training stopped. Check the data of that batch (labels, rewards), the learning rate, or use "
                "bf16/fp32 instead of fp16. The last complete checkpoint is unaffected.")
        return loss

    # -- atomic checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, model, trial):
        args = self.args  # type: ignore[attr-defined]
        run_dir = self.run_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"  # type: ignore[attr-defined]
        staging = os.path.join(run_dir, TMP_PREFIX + name)
        accelerator = self.accelerator  # type: ignore[attr-defined]
        if args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)  # left over by a killed run
        accelerator.wait_for_everyone()
        self.save_checkpoint_into(staging, model, trial)
        accelerator.wait_for_everyone()
        if args.should_save:
            state = self.state  # type: ignore[attr-defined]
            best = state.best_model_checkpoint
            if best and os.path.dirname(best) == staging:
                state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                state.save_to_json(os.path.join(staging, name, "trainer_state.json"))
            final = os.path.join(run_dir, name)
            if os.path.exists(final):  # the same step saved again (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=args.save_total_limit,
                               best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)
        accelerator.wait_for_everyone()

    # -- resume + metrics -------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        self._micro_batch = 0
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in TRUE_WORDS:
            resume_from_checkpoint = True  # `--resume_from_checkpoint true` on a command line
        elif isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in FALSE_WORDS:
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir}")  # type: ignore
            logger.info("resuming from %s", resume_from_checkpoint)
        out = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,  # type: ignore[misc]
                            ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        stats = getattr(self, "truncation_stats", None) or {}
        flat = {f"truncation/{split}/{k}": float(v) for split, d in stats.items() for k, v in d.items()}
        if flat and out is not None:
            out.metrics.update(flat)
            self.log(dict(flat))  # type: ignore[attr-defined]  # reaches log_history and report_to integrations
        return out


__all__ = ["NonFiniteLossError", "ReliableTrainerMixin", "is_complete_checkpoint", "latest_complete_checkpoint"]
