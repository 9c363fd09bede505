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
* :func:`use_current_checkpointing_names` - ``trl.trainer.dpo_trainer`` looks up
  ``disable_gradient_checkpointing`` (from ``trl.models.utils``) in its module namespace for every
  reference forward pass; that function reads transformers' deprecated ``is_gradient_checkpointing``
  names. Rebinding the module attribute to :func:`activation_checkpointing_off` (same switch, current
  names) removes a FutureWarning from every run.
* :func:`copyable_fused_forward` - ``trl.trainer.utils.add_fused_lm_head`` replaces the model's
  ``forward`` with a method whose plain (non-fused) path calls the *original model's* bound
  ``forward``, captured in a closure; a ``copy.deepcopy`` of the model keeps that closure, so the
  copy generates and scores with the original's weights. The replacement calls the copy's own.
"""

from __future__ import annotations

import contextlib
import functools
import types
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


@contextlib.contextmanager
def activation_checkpointing_off(model, checkpointing_kwargs: dict | None = None):
    """``model`` with activation (gradient) checkpointing off inside the block and as it was after.

    TRL 1.16's ``disable_gradient_checkpointing``, which its DPO trainer wraps around every
    reference forward pass, written with transformers' current names: TRL's uses
    ``is_gradient_checkpointing`` and ``gradient_checkpointing_enable/disable``, deprecated in
    transformers 5.2x, a FutureWarning in every run. Turned back on, it takes
    ``every_n_layers`` and ``offload`` out of ``checkpointing_kwargs`` as the Trainer does when
    it first turns it on (TRL's would hand them to ``torch.utils.checkpoint``). A model with only
    the old names (older transformers) goes to TRL's own; one with neither has nothing to switch.
    """
    if not hasattr(model, "is_activation_checkpointing"):
        if hasattr(model, "is_gradient_checkpointing"):
            from trl.models.utils import disable_gradient_checkpointing

            with disable_gradient_checkpointing(model, checkpointing_kwargs):
                yield
        else:
            yield
        return
    was_on = bool(model.is_activation_checkpointing)
    if was_on:
        model.activation_checkpointing_disable()
    try:
        yield
    finally:
        if was_on:
            kwargs = dict(checkpointing_kwargs or {})
            every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                                  every_n_layers=every_n_layers, offload=offload)


def use_current_checkpointing_names() -> None:
    """Point TRL's DPO trainer at :func:`activation_checkpointing_off` instead of its
    ``disable_gradient_checkpointing`` (the same switch; only while it still uses TRL's own, and
    only where transformers has the current names)."""
    import trl.trainer.dpo_trainer as trl_dpo
    from transformers import PreTrainedModel
    from trl.models.utils import disable_gradient_checkpointing

    if (getattr(trl_dpo, "disable_gradient_checkpointing", None) is disable_gradient_checkpointing
            and hasattr(PreTrainedModel, "is_activation_checkpointing")):
        trl_dpo.disable_gradient_checkpointing = activation_checkpointing_off


def copyable_fused_forward(model) -> bool:
    """Make TRL's fused-LM-head ``forward`` of ``model`` safe to deep-copy (see the module docstring):
    its fused path (``fused_lm_head=True``, TRL's training forward) is TRL's own, which reads the
    backbone and head off ``self``; its plain path runs ``type(model).forward`` on ``self``. Returns
    whether ``model`` had TRL's patch."""
    patched = model.__dict__.get("forward")
    if not (isinstance(patched, types.MethodType) and patched.__self__ is model
            and getattr(patched.__func__, "__code__", None) is not None
            and patched.__func__.__code__.co_name == "_fused_forward"):  # (functools.wraps renamed the rest)
        return False
    fused = patched.__func__

    @functools.wraps(type(model).forward)  # the signature `generate` validates its kwargs against
    def forward(self, *args, fused_lm_head=False, **kwargs):
        if fused_lm_head:
            return fused(self, *args, fused_lm_head=True, **kwargs)
        return type(self).forward(self, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
    return True


__all__ = ["DPOHooks", "StagedCheckpoints", "activation_checkpointing_off", "copyable_fused_forward",
           "use_current_checkpointing_names"]
