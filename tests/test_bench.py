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
