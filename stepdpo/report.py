"""Run reports: ``metrics.json``, ``report.md`` and PNG plots in a run's output directory.

Plots (matplotlib, Agg backend, so they render headless):

* ``training_curves.png`` - DPO loss, reward margin, chosen/rejected rewards over steps
  (from a trainer's ``state.log_history``; any other logged curves such as a PRM's loss can
  be passed too);
* ``step_scores.png`` - heatmap of a reward model's step scores for a few solutions;
* ``accuracy.png`` - accuracy before/after (bars with counts);
* ``calibration.png`` - reliability diagram (``reward_models.evaluation.reliability_diagram``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def paired_difference(after: Sequence[int], before: Sequence[int]) -> dict[str, float]:
    """Paired difference of two per-problem 0/1 results on the same problems: the mean difference,
    its standard error (from the per-problem differences), and the problems gained and lost.

    >>> paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    {'diff': 0.5, 'se': 0.2887, 'gained': 2, 'lost': 0, 'n': 4}
    """
    if len(after) != len(before) or not after:
        raise ValueError(f"need two non-empty results of the same length, got {len(after)} and {len(before)}")
    d = [int(a) - int(b) for a, b in zip(after, before)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return {"diff": mean, "se": round(math.sqrt(var / n), 4), "gained": sum(x > 0 for x in d),
            "lost": sum(x < 0 for x in d), "n": n}


def curves_from_log_history(log_history: Sequence[dict], keys: Sequence[str], *,
                            max_step: float | None = None) -> dict[str, tuple[list, list]]:
    """``{key: (steps, values)}`` for each key logged in a HF trainer's ``log_history``.

    The end-of-training summary row (the one with ``train_runtime``) is skipped: TRL adds to it
    the averages of metrics gathered since the last logging step, which are no one step's
    values. ``max_step`` drops points logged after that step (e.g. the last step of another
    curve, so that two panels cover the same steps).

    >>> curves_from_log_history([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval": 1}], ["loss"])
    {'loss': ([1, 2], [2.0, 1.5])}
    >>> log = [{"step": 1, "loss": 2.0, "rewards/margins": 0.1}, {"step": 3, "rewards/margins": 0.3}]
    >>> curves_from_log_history(log, ["rewards/margins"], max_step=1)
    {'rewards/margins': ([1], [0.1])}
    """
    out: dict[str, tuple[list, list]] = {}
    for key in keys:
        xs, ys = [], []
        for row in log_history:
            if "train_runtime" in row:
                continue
            if key in row and isinstance(row[key], (int, float)) and math.isfinite(row[key]):
                step = row.get("step", len(xs))
                if max_step is not None and step > max_step:
                    continue
                xs.append(step)
                ys.append(float(row[key]))
        if xs:
            out[key] = (xs, ys)
    return out


def plot_training_curves(curves: dict[str, dict[str, tuple[list, list]]], path: str | Path,
                         same_steps: Sequence[str] = ()) -> Path:
    """One panel per group: ``{"DPO loss": {"loss": (steps, values)}, "rewards": {...}}``. The
    panels named in ``same_steps`` are drawn over one step range (that of their data together),
    e.g. two panels of the same training run."""
    plt = _plt()
    groups = [(title, c) for title, c in curves.items() if c]
    if not groups:
        raise ValueError("no curves to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.5), squeeze=False)
    for ax, (title, series) in zip(axes[0], groups):
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    shared = [(ax, series) for ax, (title, series) in zip(axes[0], groups) if title in same_steps]
    steps = [x for _, series in shared for xs, _ in series.values() for x in xs]
    if len(shared) > 1 and steps:
        lo, hi = min(steps), max(steps)
        pad = 0.04 * (hi - lo) if hi > lo else 0.5
        for ax, _ in shared:
            ax.set_xlim(lo - pad, hi + pad)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_step_scores(solutions: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], path: str | Path,
                     labels: Sequence[Sequence[float]] | None = None, title: str = "step scores",
                     label_source: str = "label") -> Path:
    """Heatmap: one row per solution, one cell per step, annotated with the step text and, with
    ``labels``, a ✓/✗ mark; ``label_source`` names where the labels came from in the title (e.g.
    ``"checker label"``, ``"human label"``)."""
    plt = _plt()
    import numpy as np

    n = len(solutions)
    width = max(len(s) for s in solutions)
    grid = np.full((n, width), np.nan)
    for i, row in enumerate(scores):
        grid[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(min(2.2 * width + 2, 18), 0.55 * n + 1.5))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i, steps in enumerate(solutions):
        for j, step in enumerate(steps):
            mark = ""
            if labels is not None and labels[i] is not None and j < len(labels[i]):
                mark = " ✓" if labels[i][j] >= 0.5 else " ✗"
            ax.text(j, i, f"{step[:14]}{mark}\n{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(width), [f"step {j + 1}" for j in range(width)])
    ax.set_yticks(range(n), [f"#{i}" for i in range(n)])
    ax.set_title(title + (f"  (✓/✗ = {label_source})" if labels is not None else ""))
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def accuracy_error_bars(results: dict[str, tuple[int, int]]) -> tuple[list[float], list[float], list[float]]:
    """Accuracy of each ``(correct, total)`` and its 95% normal-approximation error bar below and
    above, cut at 0 and 1.

    >>> accuracy_error_bars({"a": (9, 10)})
    ([0.9], [0.1859], [0.1])
    """
    acc = [c / t if t else 0.0 for c, t in results.values()]
    err = [1.96 * math.sqrt(a * (1 - a) / t) if t else 0.0 for a, (_, t) in zip(acc, results.values())]
    return acc, [round(min(e, a), 4) for a, e in zip(acc, err)], [round(min(e, 1 - a), 4) for a, e in zip(acc, err)]


def plot_accuracy(results: dict[str, tuple[int, int]], path: str | Path, title: str = "held-out accuracy") -> Path:
    """Bars of ``{name: (correct, total)}`` with a 95% normal-approximation error bar; each bar's
    value sits above the top of its error bar."""
    plt = _plt()
    names = list(results)
    acc, below, above = accuracy_error_bars(results)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    bars = ax.bar(names, acc, yerr=[below, above], capsize=4,
                  color=["#8c8c8c", "#2b83ba", "#1a9641", "#d7191c"][: len(names)])
    for b, a, up, (c, t) in zip(bars, acc, above, results.values()):
        ax.text(b.get_x() + b.get_width() / 2, a + up + 0.02, f"{a:.1%}\n({c}/{t})", ha="center", va="bottom",
                fontsize=8)
    top = max(a + up for a, up in zip(acc, above)) + 0.22  # room for the two-line labels
    ax.set_ylim(0, max(top, 0.25))
    ax.set_yticks([v / 5 for v in range(6) if v / 5 <= top])
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def library_versions() -> dict[str, str]:
    """Versions of Python, the project and the libraries results depend on (recorded in every
    result file: the same recipe can give other numbers on other versions)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("stepdpo", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (a uniquely named temporary file, then rename), with the
    library versions (:func:`library_versions`) under ``versions``."""
    from stepdpo.distributed import atomic_write_text

    metrics = {**metrics, "versions": metrics.get("versions") or library_versions()}
    return atomic_write_text(Path(output_dir) / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True,
                                                                          default=str))


def write_report(output_dir: str | Path, title: str, sections: Sequence[tuple[str, str]],
                 images: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Write ``report.md``: a title, markdown sections and embedded images (relative paths)."""
    out = Path(output_dir)
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip(), ""]
    if images:
        lines += ["## Plots", ""]
        for caption, img in images:
            rel = os.path.relpath(img, out)
            lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table from dicts (floats to 4 significant digits).

    >>> print(markdown_table([{"a": 1, "b": 0.123456}]))
    | a | b |
    |---|---|
    | 1 | 0.1235 |
    """
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


__all__ = ["accuracy_error_bars", "curves_from_log_history", "markdown_table", "paired_difference", "plot_accuracy",
           "plot_step_scores", "plot_training_curves", "write_metrics", "write_report"]
