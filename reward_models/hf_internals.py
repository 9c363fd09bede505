"""The one module that uses private names of ``transformers`` and TRL.

Everything else in the two packages goes through the public methods these mixins add. Each
hook says what it relies on; ``tests/reward_models/test_hf_internals.py`` pins every one of them
against the installed versions (pyproject.toml pins the range they were written for), so an
upgrade that changes one fails there, by name, instead of silently changing training.

* :class:`StagedCheckpoints` - ``transformers.Trainer._save_checkpoint(model, trial)`` writes
  the checkpoint into ``self._get_output_dir(trial)/checkpoint-<step>`` and rotates old ones
  there; redirecting ``_get_output_dir`` for one call stages the checkpoint in another folder.
* :class:`DPOHooks` - ``trl.DPOTrainer``'s dataset preparation (``_prepare_dataset``, called by
  ``__init__`` for the train and eval sets), its reference log-prob precomputation
  (``_precompute_ref_logps``, and the ``_precompute_model_hash`` it keys the cache on), the
  columns the Trainer keeps (``_set_signature_columns_if_needed`` / ``_signature_columns``) and
  its metric buffers (``_metrics[mode][name]``, averaged into every log).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class StagedCheckpoints:
    """The Trainer's checkpoint save routed to :meth:`save_checkpoint` (override it), and
    :meth:`save_checkpoint_into` - the Trainer's own save, written into another folder
    (checkpoint rotation is then the caller's)."""

    def _save_checkpoint(self, model, trial):
        self.save_checkpoint(model, trial)

    def save_checkpoint(self, model, trial) -> None:
        """Save ``checkpoint-<step>`` (default: the Trainer's own save)."""
        super()._save_checkpoint(model, trial)  # type: ignore[misc]

    def run_output_dir(self, trial=None) -> str:
        """The folder the Trainer saves ``checkpoint-<step>`` folders into."""
        return self._get_output_dir(trial=trial)  # type: ignore[attr-defined]

    def save_checkpoint_into(self, folder: str, model, trial) -> None:
        args = self.args  # type: ignore[attr-defined]
        limit = args.save_total_limit
        self._get_output_dir = lambda trial=None: folder  # every rank writes into the staging folder
        args.save_total_limit = None  # rotation runs on the real folder, by the caller
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            del self._get_output_dir
            args.save_total_limit = limit


class DPOHooks:
    """TRL ``DPOTrainer``'s private hooks, routed to public methods of the subclass:

    * ``prepare_dataset(dataset, processing_class, args, name, trl_prepare)`` replaces
      ``_prepare_dataset``; ``trl_prepare`` is TRL's own (for data the subclass does not handle).
    * ``precompute_reference(dataset, name, batch_size, trl_precompute)`` replaces
      ``_precompute_ref_logps``; ``trl_precompute`` is TRL's own.
    * ``extra_signature_columns``: dataset columns the Trainer must keep for the collator.
    * :meth:`log_metric` adds a value to the metrics TRL averages into the next log;
      :attr:`reference_model_hash` is the hash TRL keys precomputed reference log-probs on.
    """

    extra_signature_columns: tuple[str, ...] = ()

    def prepare_dataset(self, dataset, processing_class, args, name: str, trl_prepare: Callable):
        return trl_prepare(dataset, processing_class, args, name)

    def precompute_reference(self, dataset, name: str, batch_size: int, trl_precompute: Callable):
        return trl_precompute(dataset, name, batch_size)

    def prepare_dataset_as_trl_does(self, dataset, name: str):
        """Prepare ``dataset`` the way TRL's ``__init__`` does (through :meth:`prepare_dataset`)."""
        return self._prepare_dataset(dataset, self.processing_class, self.args, name)  # type: ignore[attr-defined]

    def precompute_reference_as_trl_does(self, dataset, name: str, batch_size: int):
        """Add reference log-probs to ``dataset`` as TRL's ``__init__`` does (through
        :meth:`precompute_reference`)."""
        return self._precompute_ref_logps(dataset, name, batch_size)

    def log_metric(self, mode: str, name: str, value: float) -> None:
        """Add ``value`` to metric ``name`` of ``mode`` ("train"/"eval"): TRL logs the mean."""
        self._metrics[mode][name].append(value)  # type: ignore[attr-defined]

    @property
    def reference_model_hash(self) -> Any:
        return self._precompute_model_hash  # type: ignore[attr-defined]

    # -- the private hooks ------------------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return self.prepare_dataset(dataset, processing_class, args, dataset_name,
                                    super()._prepare_dataset)  # type: ignore[misc]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return self.precompute_reference(dataset, name, batch_size, super()._precompute_ref_logps)  # type: ignore

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        extra = [c for c in self.extra_signature_columns if c not in self._signature_columns]  # type: ignore
        if extra:
            self._signature_columns = list(self._signature_columns) + extra  # type: ignore[has-type]


__all__ = ["DPOHooks", "StagedCheckpoints"]
