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
    expected_rows = {"scoring": 4, "sampling": 1, "pairs": 1, "trainer": 3, "distributed": 2}
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
    # the seed-004 loops computed the same scores as the batched backends; shared-prefix verification ran
    assert max(scoring["details"][0]["max_abs_diff"].values()) < 1e-2
    assert scoring["details"][0]["max_abs_diff"]["verification_shared_vs_batched_logodds"] < 1e-4
    shared = scoring["details"][0]["verification_shared"]
    assert shared["path"] == "shared_prefix" and shared["model_tokens"] < shared["query_tokens"]
    sampling = json.loads((tmp_path / "results" / f"sampling-{suffix}.json").read_text())
    d = sampling["details"][0]  # K continuations prefilled once, the same samples as today's batched sampling
    assert d["prefill_rows"]["cached"][0] < d["prefill_rows"]["batched"][0]
    if suffix == "smoke":  # on CPU in float32; on a GPU another kernel's rounding may flip a draw
        assert d["identical_samples"] == d["candidates"]
    # online pair building under accelerate launch: 1 process with every prompt, 2 with half each, pairs gathered
    procs = json.loads((tmp_path / "results" / f"distributed-{suffix}.json").read_text())["details"][0]["processes"]
    assert procs["1"]["prompts_per_process"] == [8] and procs["2"]["prompts_per_process"] == [4, 4]
    for run in procs.values():
        assert all(p > 0 for p in run["pairs"]) and all(c > 0 for calls in run["generate_calls_per_process"]
                                                        for c in calls)
        assert run["pair_stats"]["n_prompts"] == 8
    assert procs["2"]["pair_stats"]["processes"] == 2
    text = md.read_text()
    assert "| benchmark | ours | baseline | ratio | target | met? |" in text
    assert "python -m bench.run --smoke" in text
    for name in expected_rows:
        assert f"### {name}-{suffix}" in text
    # the "does it help" benchmark: every arm trained for its rounds, results kept per problem for paired statistics
    helps = json.loads((tmp_path / "results" / f"helps-{suffix}.json").read_text())
    seed = helps["per_seed"][0]
    arms = seed["arms"]
    assert set(arms) == {"sft", "rft/checker", "outcome/checker", "stepwise/checker", "stepwise/prm"}
    n = seed["config"]["n_test"]
    for key, arm in arms.items():
        assert arm["n"] == n and len(arm["test_right"]) == n and sum(arm["test_right"]) == arm["correct"]
        assert 0.0 <= arm["pass_at_1"] <= 1.0 and 0.0 <= arm["maj_at_k"] <= 1.0
        rounds = 0 if key == "sft" else arm["protocol"]["rounds"]
        assert [r["round"] for r in arm["rounds"]] == list(range(rounds + 1))  # round 0 = the SFT policy
    assert arms["stepwise/checker"]["rounds"][1]["pairs"] > 0
    assert {c["a"] + " - " + c["b"] for c in helps["summary"]["comparisons"]} >= {
        "stepwise/checker - sft", "stepwise/checker - rft/checker", "stepwise/checker - outcome/checker"}
    assert set(helps["summary"]["targets"]) == {"sft", "rft/checker", "outcome/checker"}
    assert f"### helps-{suffix}" in text and "| arm | rounds | accuracy % |" in text
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


@pytest.mark.smoke
def test_helps_runs_only_the_arms_asked_for(tmp_path):
    # a partial run (e.g. the task variant on one seed): the SFT arm plus the named arms; no PRM unless an arm uses it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "helps.json"
    proc = subprocess.run([sys.executable, "-m", "bench.helps", "--mode", "smoke", "--arms", "rft/checker",
                           "--work-dir", str(tmp_path / "work"), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["per_seed"][0]["arms"]) == {"sft", "rft/checker"} and res["per_seed"][0]["prm"] is None
    assert [c["a"] + " - " + c["b"] for c in res["summary"]["comparisons"]] == ["rft/checker - sft"]
    assert "ProcessBench-style F1" not in res["markdown"]
    # a later run of another arm into the same file keeps the earlier arms; the PRM arm brings the PRM's report
    proc = subprocess.run([sys.executable, "-m", "bench.helps", "--mode", "smoke", "--arms", "stepwise/prm",
                           "--work-dir", str(tmp_path / "work"), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    seed = res["per_seed"][0]
    assert set(seed["arms"]) == {"sft", "rft/checker", "stepwise/prm"}
    report = seed["prm_report"]
    assert set(report["baselines"]) == {"position", "policy_likelihood"} and report["kind"] == "likelihood"
    assert report["best_of_n"]["n"] == 8 and set(report["best_of_n"]["best_of_n"]) == {"min", "prod", "mean", "last"}
    rounds = seed["arms"]["stepwise/prm"]["rounds"][1:]  # a round without pairs ends the arm, recorded as such
    assert "pair_quality" in rounds[0] and all("pair_quality" in r or "no_pairs" in r for r in rounds)
    assert "ProcessBench-style F1" in res["markdown"] and "PRM targets (issue 13)" in res["markdown"]
    bad = subprocess.run([sys.executable, "-m", "bench.helps", "--mode", "smoke", "--arms", "rft"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown --arms ['rft']" in bad.stderr


@pytest.mark.smoke
def test_prm_probe_scores_each_candidate_on_validation_samples(tmp_path):
    from bench import prm_probe
    from reward_models.testing import save_tiny, tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    policy = save_tiny(tiny_causal_lm(tok, seed=0, n_positions=128), tok, tmp_path / "policy")
    assert prm_probe.main(["--seed", "0", "--arms", "pos,V2", "--policy", str(policy),
                           "--out-dir", str(tmp_path / "results")]) == 0
    res = json.loads((tmp_path / "results" / "prm-probe-seed0.json").read_text())
    assert {"machine", "rows", "markdown"} <= set(res) and 300 < res["n_eval_solutions"] <= 400  # empty ones skipped
    pos, verifier = res["arms"]
    # an untrained policy's samples are (almost) all wrong, so AUROC may be undefined here: plumbing only
    assert pos["arm"].startswith("position") and {"step_auroc", "processbench_f1", "threshold"} <= set(pos)
    assert 0.0 <= verifier["acc_erroneous"] <= 1.0 and verifier["train_s"] > 0
    assert verifier["arm"] == "likelihood, 2 steps"
    assert "| position (minus the step index) |" in res["markdown"]


@pytest.mark.smoke
def test_gpu_script_dry_run_on_cpu(tmp_path):
    """``bench/gpu.sh`` runs every step (a 2-layer Qwen2 in bf16, seconds-long sizes, and a dry run of
    ``scripts/train_stepdpo.py`` with pairs built online) and leaves at most 8 files: one JSON per
    benchmark, the training run's summary, the log, the summary and the markdown."""
    out = tmp_path / "out"
    env = dict(os.environ, BENCH_GPU_DRY_RUN="1", OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8
    for name, n_rows in {"scoring": 4, "sampling": 1, "trainer": 3}.items():
        res = json.loads((out / f"{name}-smoke-bfloat16-qwen2-tiny.json").read_text())
        assert res["machine"]["dtype"] == "bfloat16" and len(res["rows"]) == n_rows
        assert "qwen2-tiny" in res["rows"][0]["benchmark"]
    summary = (out / "summary.txt").read_text()
    assert summary.count("ok  ") == 4 and "exit status 0" in summary
    run = json.loads((out / "train" / "train_stepdpo.json").read_text())  # where and how fast the policy sampled
    assert run["command"] == "train" and run["sampling"][0]["devices"] == ["cpu"]
    assert run["sampling"][0]["generated_tokens"] > 0 and "tokens/s" in summary
    assert "| benchmark | ours | baseline |" in (out / "BENCHMARKS-gpu.md").read_text()
