"""Benchmarks: our code paths against the naive baselines, measured side by side in one run.

Run everything with ``python -m bench.run`` (``--quick`` for a < 5 minute version, ``--full``
for the sizes in the issue; CUDA is used automatically when present). Each benchmark writes
``bench/results/<name>-<mode>[-cuda].json`` and the runner regenerates the table in
``BENCHMARKS.md`` from all result files.

* :mod:`bench.scoring` - PRM step scoring: batched head / verification backends vs the
  seed-004 per-step loop (one forward per step at batch 1) and vs a bare forward pass.
* :mod:`bench.pairs` - pair building: batched candidate sampling vs one candidate per call.
* :mod:`bench.trainer` - ``StepwiseDPOTrainer`` vs plain ``trl.DPOTrainer`` on identical pairs
  (time per step, peak memory), and LoRA vs full fine-tuning with a reference copy.
"""
