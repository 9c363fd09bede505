import json

import pytest

from stepdpo import report


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plots_and_report(tmp_path):
    log = [{"step": i, "loss": 1.0 / i, "rewards/margins": 0.1 * i} for i in range(1, 6)]
    curves = {"loss": report.curves_from_log_history(log, ["loss"]),
              "margin": report.curves_from_log_history(log, ["rewards/margins", "absent"])}
    assert curves["margin"].keys() == {"rewards/margins"}
    _png(report.plot_training_curves(curves, tmp_path / "curves.png"))
    _png(report.plot_step_scores([["1+2=3", "Answer: 3"], ["1+2=4"]], [[0.9, 0.8], [0.1]], tmp_path / "h.png",
                                 labels=[[1, 1], [0]]))
    _png(report.plot_accuracy({"before": (30, 100), "after": (45, 100)}, tmp_path / "acc.png"))
    m = report.write_metrics(tmp_path, {"accuracy": 0.5})
    assert json.loads(m.read_text()) == {"accuracy": 0.5, "versions": report.library_versions()}
    r = report.write_report(tmp_path, "T", [("A", report.markdown_table([{"x": 1.23456}]))],
                            [("acc", tmp_path / "acc.png")])
    text = r.read_text()
    assert "| 1.235 |" in text and "![acc](acc.png)" in text


def test_result_files_record_the_library_versions(tmp_path):
    import json

    import trl

    from stepdpo.commands.common import write_json
    from stepdpo.report import library_versions, write_metrics

    v = library_versions()
    assert v["trl"] == trl.__version__ and set(v) >= {"python", "torch", "transformers", "peft", "stepdpo"}
    assert json.loads(write_metrics(tmp_path, {"a": 1}).read_text())["versions"] == v
    assert json.loads(write_json(tmp_path / "s.json", {"b": 2}).read_text()) == {"b": 2, "versions": v}


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures the plot helpers make, kept open for inspection (closed after the test)."""
    plt = report._plt()
    close, figs = plt.close, []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    yield figs
    for fig in figs:
        close(fig)


def test_accuracy_labels_sit_above_the_error_bars(tmp_path, kept_figures):
    from matplotlib.container import BarContainer

    figs = kept_figures
    results = {"before": (30, 100), "after": (45, 100), "few": (2, 5), "all right": (10, 10), "none": (0, 0)}
    report.plot_accuracy(results, tmp_path / "acc.png")
    ax = figs[-1].axes[0]
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    segments = bars.errorbar.lines[2][0].get_segments()
    tops = {round(float(seg[0, 0]), 6): float(seg[:, 1].max()) for seg in segments}
    labels = {round(t.get_position()[0], 6): t for t in ax.texts}
    assert len(tops) == len(results) and labels.keys() == tops.keys()
    for x, top in tops.items():
        y = labels[x].get_position()[1]
        assert labels[x].get_va() == "bottom" and y > top + 0.005  # the text starts above the error bar's cap
        assert y + 0.15 <= ax.get_ylim()[1]  # and its two lines fit in the axes
    lows = [float(seg[:, 1].min()) for seg in segments]
    assert all(v <= 1.0 for v in tops.values()) and min(lows) >= 0.0
    acc, below, above = report.accuracy_error_bars(results)
    assert acc[3] == 1.0 and above[3] == 0.0 and below[2] == acc[2] == 0.4  # cut at 1 and 0


def test_curves_end_where_the_loss_ends_and_panels_share_the_steps(tmp_path, kept_figures):
    """Rewards logged after the last loss entry (a trailing step, the end-of-training summary row
    into which TRL averages its leftover metrics) do not run past the loss curve."""
    log = [{"step": 0, "pairs/count": 5}] + [{"step": s, "loss": 1.0 / s, "rewards/chosen": 0.1 * s}
                                             for s in (1, 2, 3)]
    log += [{"step": 4, "rewards/chosen": 0.4}, {"step": 5, "train_runtime": 1.0, "train_loss": 0.5,
                                                 "rewards/chosen": 0.9}]
    loss = report.curves_from_log_history(log, ["loss"])
    last = max(loss["loss"][0])
    rewards = report.curves_from_log_history(log, ["rewards/chosen"], max_step=last)
    assert last == 3 and max(rewards["rewards/chosen"][0]) <= last
    assert report.curves_from_log_history(log, ["rewards/chosen"])["rewards/chosen"][0] == [1, 2, 3, 4]
    figs = kept_figures
    report.plot_training_curves({"loss": loss, "rewards": report.curves_from_log_history(log, ["rewards/chosen"]),
                                 "other run": {"loss": ([0, 50], [1.0, 2.0])}}, tmp_path / "c.png",
                                same_steps=("loss", "rewards"))
    a, b, c = figs[-1].axes
    assert a.get_xlim() == b.get_xlim() and a.get_xlim()[0] < 1 and a.get_xlim()[1] > 4
    assert c.get_xlim()[1] > 50  # a panel not listed keeps its own range


def test_step_score_heatmap_names_the_source_of_its_labels(tmp_path, kept_figures):
    figs = kept_figures
    report.plot_step_scores([["1+2=3"]], [[0.9]], tmp_path / "h.png", labels=[[1]], title="t",
                            label_source="human label")
    report.plot_step_scores([["1+2=3"]], [[0.9]], tmp_path / "h2.png", title="t")
    assert [f.axes[0].get_title() for f in figs] == ["t  (✓/✗ = human label)", "t"]
