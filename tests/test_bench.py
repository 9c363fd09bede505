"""``python -m bench.run --smoke`` keeps working (benchmarks are not tests: nothing is timed here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
def test_bench_smoke_writes_results_and_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    md = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out-dir", str(tmp_path / "results"),
                           "--markdown", str(md)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    suffix = "smoke-cuda" if "-cuda.json" in proc.stdout else "smoke"
    expected_rows = {"scoring": 3, "pairs": 1, "trainer": 3}
    for name, n_rows in expected_rows.items():
        res = json.loads((tmp_path / "results" / f"{name}-{suffix}.json").read_text())
        assert res["mode"] == "smoke" and res["benchmark"] == name
        assert {"date_utc", "cpu_count", "torch_threads", "torch", "device"} <= set(res["machine"])
        assert res["machine"]["torch_threads"] == 1
        assert len(res["rows"]) == n_rows
        for row in res["rows"]:
            assert {"benchmark", "ours", "baseline", "ratio", "target", "met", "notes"} <= set(row)
            assert row["ours"]["value"] > 0 and row["baseline"]["value"] > 0
            assert row["ratio"] == pytest.approx(row["ours"]["value"] / row["baseline"]["value"], rel=1e-2)
    scoring = json.loads((tmp_path / "results" / f"scoring-{suffix}.json").read_text())
    # the seed-004 loops computed the same scores as the batched backends
    assert max(scoring["details"][0]["max_abs_diff"].values()) < 1e-2
    text = md.read_text()
    assert "| benchmark | ours | baseline | ratio | target | met? |" in text
    assert "python -m bench.run --smoke" in text
    for name in expected_rows:
        assert f"### {name}-{suffix}" in text
    # the "does it help" benchmark: its own accuracy table, every arm trained or marked as having no pairs
    helps = json.loads((tmp_path / "results" / f"helps-{suffix}.json").read_text())
    arms = helps["per_seed"][0]["arms"]
    assert set(arms) == {"sft", "outcome/checker", "outcome/prm", "step_same_pairs/checker", "step_same_pairs/prm",
                         "step_same_samples/checker", "step_same_samples/prm", "nll_only/checker"}
    for key, arm in arms.items():
        assert arm["n"] == helps["per_seed"][0]["config"]["n_test"]
        assert (arm["accuracy"] is None) == (key != "sft" and arm["pairs"] == 0)
    assert any(arm["pairs"] > 0 for key, arm in arms.items() if key != "sft")
    assert arms["step_same_pairs/prm"]["pairs"] <= arms["outcome/prm"]["pairs"]
    assert f"### helps-{suffix}" in text and "| arm | judge | pairs |" in text
    # re-rendering from the stored per-seed numbers gives the same table; --markdown-only rebuilds the file
    from bench.helps import rerender

    rerender(str(tmp_path / "results" / f"helps-{suffix}.json"))
    again = json.loads((tmp_path / "results" / f"helps-{suffix}.json").read_text())
    assert again["markdown"] == helps["markdown"]
    md.write_text("")
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--markdown-only", "--out-dir", str(tmp_path / "results"),
                           "--markdown", str(md)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert md.read_text().count("### ") == text.count("### ")
