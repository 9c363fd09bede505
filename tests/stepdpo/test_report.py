import json

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
