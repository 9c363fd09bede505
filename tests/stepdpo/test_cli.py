"""The `stepdpo` command line, the scripts/ entry points and every YAML in configs/.

Every accelerate config is loaded by accelerate's own loader (and its keys checked against
`accelerate launch`'s options); every recipe is parsed by the TrlParser of the command it
names and dry-run with its model swapped for the tiny offline GPT-2 and its hub data for a
local fixture of the same format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stepdpo.cli import main as cli_main
from stepdpo.commands import COMMANDS, command_module
from stepdpo.commands.common import (
    final_number,
    numeric_checker,
    parse,
    parse_tiny_spec,
    read_data,
    read_recipe,
    run,
)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# the reward-model trainers and Monte-Carlo labeling land with branch issue4train
HAS_TRAINERS = _has("reward_models.training") and _has("reward_models.labeling")
needs_trainers = pytest.mark.skipif(not HAS_TRAINERS, reason="reward_models.training/labeling not merged yet")
NEEDS_TRAINERS = {"train-prm", "train-orm", "train-bt", "label"}

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
FIX = ROOT / "tests" / "fixtures"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted(p.name for p in (CONFIGS / "accelerate").glob("*.yaml"))

# hub data of the real recipes -> a local fixture of the same format (no hub access in tests);
# "{prm:<recipe>}" = the reward model saved by that recipe's dry run
DRY_RUN_OVERRIDES: dict[str, list[str]] = {
    "demo_prm.yaml": [],
    "demo_stepdpo.yaml": [],  # also run under `accelerate launch` below
    "qwen2.5-math-1.5b_prm_prm800k.yaml": ["--dataset_name", str(FIX / "prm800k_phase2.jsonl"),
                                           "--eval_dataset_name", str(FIX / "prm800k_phase2.jsonl")],
    "qwen2.5-math-1.5b_prm_math_shepherd.yaml": ["--dataset_name", str(FIX / "math_shepherd.jsonl")],
    # a random tiny policy never reaches a GSM8K answer: chosen steps are not rolled out here
    "qwen2.5-math-1.5b_stepdpo_gsm8k_lora_4bit.yaml": [
        "--dataset_name", str(FIX / "gsm8k.jsonl"), "--reward_model", "{prm:qwen2.5-math-1.5b_prm_math_shepherd.yaml}",
        "--check_answers", "false"],
    "qwen2.5-math-1.5b_stepdpo_math_zero3.yaml": ["--dataset_name", str(FIX / "step_dpo.jsonl")],
    "evaluate_arith.yaml": ["--reward_model", "{prm:demo_prm.yaml}"],
    "decode_arith_beam.yaml": ["--reward_model", "{prm:demo_prm.yaml}"],
}


# -- help --------------------------------------------------------------------------------------
def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ["demo", *COMMANDS]:
        assert f"    {name}" in out
    assert "--config" in out and "accelerate launch" in out


@pytest.mark.parametrize("command", ["demo", *COMMANDS])
def test_each_command_help_explains_itself(command, capsys):
    if command in NEEDS_TRAINERS and not HAS_TRAINERS:
        pytest.skip("reward_models.training/labeling not merged yet")
    with pytest.raises(SystemExit) as e:
        cli_main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: stepdpo {command}")
    if command == "demo":
        assert "--quick" in out and "--output-dir" in out
        return
    assert "--config FILE" in out and "--dry_run" in out and "Main options" in out
    key = {"train-prm": "--backend", "train-orm": "--last_token_only", "train-bt": "--eval_dataset_name",
           "label": "--n_rollouts", "build-pairs": "--num_candidates", "train": "--reward_model",
           "evaluate": "--reward_model", "decode": "--beam_width"}[command]
    assert key in out
    # field help strings of the dataclasses come through TrlParser
    assert "arith" in out and "--model_name_or_path" in out


# -- small pieces --------------------------------------------------------------------------------
def test_tiny_spec_and_numbers():
    assert parse_tiny_spec("tiny-gpt2") == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    assert parse_tiny_spec("Qwen/Qwen2.5-Math-1.5B") is None
    with pytest.raises(ValueError, match="tiny-gpt2:<n_layer>x<n_embd>"):
        parse_tiny_spec("tiny-gpt2:big")
    assert final_number("so 3+4=7\n#### 1,234") == 1234.0
    assert numeric_checker("q", ["5*2=10", "The answer is: 10"], "... #### 10")
    assert not numeric_checker("q", ["5*2=11", "The answer is: 11"], "#### 10")


def test_read_data_arith_and_prompt_column(tmp_path):
    d = read_data("arith:5", split="test", arith_error_rate=0.5)
    assert len(d.items) == 5 and d.is_arith and d.checker(d.prompts[0], d.items[0].steps, None) == all(
        v == 1.0 for v in d.items[0].labels)
    g = read_data(str(FIX / "gsm8k.jsonl"), prompt_column="question", answer_column="answer",
                  prompt_template="Q: {prompt}\n")
    assert g.prompts[0].startswith("Q: Natalia") and final_number(g.answers[0]) == 72.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "fine", "answer": "1"}) + "\n" + json.dumps({"answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl.*2.*question"):
        read_data(str(bad), prompt_column="question", answer_column="answer")


def test_recipe_for_another_command_and_unknown_keys_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="recipe for `stepdpo train-prm`"):
        parse(command_module("train").make_parser(), ["--config", str(CONFIGS / "demo_prm.yaml")], "train")
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: decode\nbeam_widht: 3\n")
    with pytest.raises(SystemExit, match="beam_widht"):
        parse(command_module("decode").make_parser(), ["--config", str(bad)], "decode")


# -- accelerate configs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_config_loads_with_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    path = CONFIGS / "accelerate" / name
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    # accelerate copies nested keys onto its launch options without checking them: a typo would be ignored
    options = vars(launch_command_parser().parse_args(["script.py"]))
    for key in cfg.deepspeed_config:
        assert key in options, f"{name}: unknown deepspeed_config key {key}"
    for key in cfg.fsdp_config:
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in options, f"{name}: unknown fsdp key {key}"
    expected = {"cpu.yaml": DistributedType.NO, "single_gpu.yaml": DistributedType.NO,
                "multi_gpu.yaml": DistributedType.MULTI_GPU, "multi_cpu.yaml": DistributedType.MULTI_GPU,
                "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
                "deepspeed_zero3.yaml": DistributedType.DEEPSPEED, "fsdp.yaml": DistributedType.FSDP}[name]
    assert cfg.distributed_type == expected
    if expected == DistributedType.DEEPSPEED:
        assert cfg.deepspeed_config["zero_stage"] == int(name[-6])
    if expected == DistributedType.FSDP:
        assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert cfg.use_cpu == (name == "cpu.yaml")
    # multi_cpu: MULTI_GPU is what makes accelerate start the processes with torchrun (its MULTI_CPU needs mpirun);
    # without CUDA they join a gloo group (stepdpo.distributed.init_distributed), as tests/stepdpo/test_distributed.py runs
    assert cfg.num_processes == {"cpu.yaml": 1, "single_gpu.yaml": 1, "multi_cpu.yaml": 2}.get(name, 8)
    assert path.read_text().lstrip().startswith("#")  # headed by what it is for and how to launch it


def test_every_accelerate_setup_exists():
    assert set(ACCELERATE_CONFIGS) == {"cpu.yaml", "multi_cpu.yaml", "single_gpu.yaml", "multi_gpu.yaml",
                                       "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}


# -- recipes ---------------------------------------------------------------------------------------
def test_every_recipe_has_a_dry_run():
    assert set(RECIPES) == set(DRY_RUN_OVERRIDES), "add the new recipe to DRY_RUN_OVERRIDES"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_parses_into_the_commands_dataclasses(recipe):
    path = CONFIGS / recipe
    text = path.read_text()
    cfg = read_recipe(path)
    command = cfg.pop("command")
    if command in NEEDS_TRAINERS and not HAS_TRAINERS:
        pytest.skip("reward_models.training/labeling not merged yet")
    assert command in COMMANDS
    header = text.split("\ncommand:")[0]
    script = command_module(command).__name__.rsplit(".", 1)[1]
    assert f"scripts/{script}.py" in header or f"stepdpo {command} --config configs/{recipe}" in header, \
        "a recipe starts with its exact launch command"
    parsed = parse(command_module(command).make_parser(), ["--config", str(path)], command)
    for key, value in cfg.items():
        holders = [obj for obj in parsed if hasattr(obj, key)]
        assert holders, f"{recipe}: {key} is no option of `stepdpo {command}`"
        got = getattr(holders[0], key)
        if key == "report_to":
            assert got == ([] if value == "none" else got)
        else:
            assert got == value, f"{recipe}: {key} parsed as {got!r}, written {value!r}"


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Run a recipe's dry run once per test module (later recipes use earlier reward models)."""
    done: dict[str, tuple[dict, Path]] = {}
    base = tmp_path_factory.mktemp("dry")

    def go(recipe: str):
        if recipe in done:
            return done[recipe]
        cfg = read_recipe(CONFIGS / recipe)
        command = cfg["command"]
        out = base / recipe.removesuffix(".yaml")
        extra = []
        for item in DRY_RUN_OVERRIDES[recipe]:
            if item.startswith("{prm:"):
                item = str(go(item[5:-1])[1])
            extra.append(item)
        where = ["--output_file", str(out / "decoded.jsonl")] if command == "decode" else ["--output_dir", str(out)]
        argv = ["--config", str(CONFIGS / recipe), "--model_name_or_path", "tiny-gpt2", "--dry_run", *where, *extra]
        if command.startswith("train"):
            argv += ["--report_to", "none"]
        done[recipe] = (run(command_module(command), argv, command), out)
        return done[recipe]

    return go


def _changed_from_init(out: Path, seed: int, build) -> bool:
    """The saved weights differ from the tiny model the run started from (or a LoRA B is nonzero)."""
    if (out / "adapter_model.safetensors").exists():
        weights = load_file(str(out / "adapter_model.safetensors"))
        return any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    from reward_models.testing import tiny_tokenizer

    saved = load_file(str(out / "model.safetensors"))
    init = build(tiny_tokenizer(), seed=seed, **parse_tiny_spec("tiny-gpt2")).state_dict()
    common = [k for k in saved if k in init and saved[k].shape == init[k].shape]
    assert common
    return any(not torch.equal(saved[k], init[k]) for k in common)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "demo_stepdpo.yaml"])
def test_recipe_dry_run_with_tiny_model(recipe, dry_runs):
    from reward_models.base import load_reward_model
    from reward_models.testing import tiny_causal_lm, tiny_token_classifier

    if not HAS_TRAINERS and (read_recipe(CONFIGS / recipe)["command"] in NEEDS_TRAINERS
                             or "{prm:" in " ".join(DRY_RUN_OVERRIDES[recipe])):
        pytest.skip("reward_models.training/labeling not merged yet")
    summary, out = dry_runs(recipe)
    cfg = read_recipe(CONFIGS / recipe)
    command = cfg["command"]
    if command == "train-prm":
        assert summary["global_step"] == 2
        rm = load_reward_model(out)
        scores = rm.score_steps(["Q: 2+3\n"], [["2+3=5", "Answer: 5"]])
        assert len(scores[0]) == 2 and all(0.0 <= s <= 1.0 for s in scores[0])
        build = tiny_causal_lm if cfg.get("backend") == "token" else tiny_token_classifier
        assert _changed_from_init(out, cfg["seed"], build)
        if "eval_dataset_name" in cfg:
            assert 0.0 <= summary["eval_auroc"] <= 1.0 or summary["eval_auroc"] is None
            assert (out / "eval_metrics.json").exists()
    elif command == "train":
        assert summary["global_step"] == 2
        if summary["pair_stats"]:  # pairs built from problems by the policy and the judge
            assert summary["pair_stats"][0]["pairs"] > 0
        assert _changed_from_init(out, cfg["seed"], tiny_causal_lm)
        assert json.loads((out / "stepdpo_train.json").read_text())["log_history"]
    elif command == "evaluate":
        m = json.loads((out / "metrics.json").read_text())
        assert m["reward_model"]["n_samples"] == 8 and m["reward_model"]["n_steps"] > 8
        assert set(m["policy"]) >= {"name", "greedy", "best-of-2", "majority-of-2"}
        assert all((out / f).exists() for f in ("calibration.png", "step_scores.png", "accuracy.png"))
        rows = [json.loads(line) for line in (out / "per_problem.jsonl").read_text().splitlines()]
        assert len(rows) == m["policy"]["greedy"]["total"]
        assert sum(r["greedy"] for r in rows) == m["policy"]["greedy"]["correct"]
        assert all({"prompt", "answer", "greedy_steps", "best-of-2", "majority-of-2"} <= set(r) for r in rows)
    elif command == "decode":
        rows = [json.loads(line) for line in (out / "decoded.jsonl").read_text().splitlines()]
        assert len(rows) == 8 == summary["problems"]
        for r in rows:
            assert len(r["step_scores"]) == len(r["steps"]) and isinstance(r["correct"], bool)
    else:  # pragma: no cover - a new command needs its own checks
        raise AssertionError(f"no checks for {command}")


def test_accelerate_launch_runs_the_demo_recipe(tmp_path):
    """`accelerate launch --config_file configs/accelerate/cpu.yaml scripts/train_stepdpo.py --config
    configs/demo_stepdpo.yaml` (as a dry run): the same main() as `stepdpo train`."""
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate)] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [*launcher, "launch", "--config_file", str(CONFIGS / "accelerate" / "cpu.yaml"),
           str(ROOT / "scripts" / "train_stepdpo.py"), "--config", str(CONFIGS / "demo_stepdpo.yaml"),
           "--dry_run", "--model_name_or_path", "tiny-gpt2", "--output_dir", str(out)]
    if launcher[0] != str(accelerate):
        cmd.remove("launch")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "stepdpo_train.json").read_text())
    assert summary["global_step"] == 2 and summary["pair_stats"][0]["pairs"] > 0
    assert (out / "model.safetensors").exists() and (out / "pairs.jsonl").exists()
    assert "[stepdpo train]" in proc.stdout


# -- the commands without a recipe, through `stepdpo <command>` -----------------------------------
@needs_trainers
def test_label_build_pairs_and_train_bt_chain(tmp_path, dry_runs, capsys):
    """label -> (labels compared with the injected errors); build-pairs with a saved PRM -> train-bt on the
    pairs; every output file is what the next command reads."""
    from reward_models.data import load_samples
    from stepdpo.pairs import load_pairs

    mc = tmp_path / "mc.jsonl"
    assert cli_main(["label", "--model_name_or_path", "tiny-gpt2", "--dataset_name", "arith:20", "--dry_run",
                     "--output_file", str(mc)]) == 0
    labeled = load_samples(mc)
    assert len(labeled) == 8 and all(len(s.labels) == len(s.steps) and s.meta["mc_rollouts"] == 2 for s in labeled)
    stats = json.loads(mc.with_name("mc.jsonl.stats.json").read_text())
    assert 0.0 <= stats["agreement_with_given_labels"] <= 1.0 and stats["checker"] == "arith"

    prm = dry_runs("demo_prm.yaml")[1]
    policy = dry_runs("demo_stepdpo.yaml")[1]  # a warmed-up tiny policy: its steps end, so they can be chosen
    pairs = tmp_path / "pairs.jsonl"
    assert cli_main(["build-pairs", "--model_name_or_path", str(policy), "--dataset_name", "arith:20",
                     "--reward_model", str(prm), "--dry_run", "--output_file", str(pairs)]) == 0
    built = load_pairs(pairs)
    assert built and all(p.rejected_score < 0.5 for p in built)  # the PRM located the error
    # a chosen step is rollout-verified (the answer decides, as in Step-DPO) or, failing that, judged good
    assert all(p.meta["verified"] or p.chosen_score >= 0.5 for p in built)
    assert "[stepdpo build-pairs]" in capsys.readouterr().out

    out = tmp_path / "bt"
    assert cli_main(["train-bt", "--model_name_or_path", "tiny-gpt2", "--dataset_name", str(pairs), "--dry_run",
                     "--eval_dataset_name", str(FIX / "hh_rlhf.jsonl"), "--output_dir", str(out),
                     "--report_to", "none"]) == 0
    from reward_models.testing import tiny_sequence_classifier

    # the saved model reloads through load_reward_model and scores the held-out pairs
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert metrics["n_pairs"] == 2 and 0.0 <= metrics["pairwise_accuracy"] <= 1.0
    assert _changed_from_init(out, 42, tiny_sequence_classifier)  # BTRewardConfig's default seed is 42


@needs_trainers
def test_train_orm_command(tmp_path):
    from reward_models.testing import tiny_token_classifier

    out = tmp_path / "orm"
    summary = run(command_module("train-orm"), ["--model_name_or_path", "tiny-gpt2", "--dataset_name", "arith:20",
                                                "--dry_run", "--output_dir", str(out), "--report_to", "none",
                                                "--seed", "3"], "train-orm")
    assert summary["global_step"] == 2 and summary["train_examples"] == 8
    assert _changed_from_init(out, 3, lambda tok, **kw: tiny_token_classifier(tok, num_labels=1, **kw))


@needs_trainers
def test_bad_data_and_wrong_use_fail_clearly(tmp_path):
    with pytest.raises(SystemExit, match="train-bt"):  # whole-response preferences are no Stepwise DPO data
        run(command_module("train"), ["--model_name_or_path", "tiny-gpt2", "--dataset_name",
                                      str(FIX / "hh_rlhf.jsonl"), "--output_dir", str(tmp_path), "--dry_run"], "train")
    with pytest.raises(SystemExit, match="no step-labeled"):
        run(command_module("train-prm"), ["--model_name_or_path", "tiny-gpt2", "--dataset_name",
                                          str(FIX / "step_dpo.jsonl"), "--output_dir", str(tmp_path), "--dry_run"],
            "train-prm")


def test_evaluate_compares_per_problem_results(tmp_path):
    """Paired statistics from two saved per-problem files, without solving again."""
    from stepdpo.commands.evaluate import compare_per_problem

    before = [{"prompt": f"Q{i}", "greedy": i < 2, "majority-of-4": True} for i in range(4)]
    path = tmp_path / "before.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in before))
    after = [{"prompt": f"Q{i}", "greedy": i in (1, 2, 3), "best-of-4": True} for i in range(4)]
    res = compare_per_problem(after, str(path))
    assert set(res) == {"greedy"}  # best-of-4 was not measured before
    assert (res["greedy"]["diff"], res["greedy"]["gained"], res["greedy"]["lost"]) == (0.25, 2, 1)
    with pytest.raises(SystemExit, match="lacks 1 of the 5 problems"):
        compare_per_problem(after + [{"prompt": "Q9", "greedy": True}], str(path))



def test_option_typos_give_one_line_errors(tmp_path):
    """TRL's parser reads recipes and options; an unknown option, on the command line or in a
    recipe, is one line naming it (not a traceback), and the exit status says it failed."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("command: decode\nbeam_widht: 3\n")
    for argv in (["decode", "--beam_widht", "3"], ["decode", "--config", str(recipe)]):
        proc = subprocess.run([sys.executable, "-m", "stepdpo.cli", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode != 0
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) <= 2 and "unknown option(s) ['beam_widht']" in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr


# -- errors: a few lines on stderr, the traceback in a log file (or with --debug) ----------------------
def _stepdpo(cwd: Path, *argv) -> subprocess.CompletedProcess:
    """`python -m stepdpo.cli ...` in ``cwd``, offline, its traceback logs under ``cwd`` (TMPDIR)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(cwd)}
    env.pop("STEPDPO_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "stepdpo.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=180, cwd=cwd, env=env)


def _short_error(proc: subprocess.CompletedProcess, command: str) -> list[str]:
    """The non-blank stderr lines of a failed command: a few, no traceback, the last naming a log
    file that holds the traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) <= 5 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"stepdpo {command}: error: ") and lines[-1].startswith("full traceback: ")
    assert lines[-1].endswith("(or rerun with --debug)")
    log = Path(lines[-1].removeprefix("full traceback: ").removesuffix(" (or rerun with --debug)"))
    assert "Traceback (most recent call last)" in log.read_text()
    return lines


def test_missing_model_folder_is_a_short_error_naming_it(tmp_path, capsys, monkeypatch):
    argv = ["decode", "--model_name_or_path", "./no/such/model", "--dataset_name", "arith:4", "--dry_run"]
    lines = _short_error(_stepdpo(tmp_path, *argv), "decode")
    assert "./no/such/model" in lines[0] and "does not exist" in lines[0]
    assert "hub id such as Qwen/Qwen2.5-Math-1.5B, or tiny-gpt2" in lines[0] and "Repo id" not in lines[0]
    debug = _stepdpo(tmp_path, *argv, "--debug")  # the original error, with its traceback
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "FileNotFoundError: model folder ./no/such/model" in debug.stderr
    # in-process: main() returns the exit status; a reward-model folder gets its own fix
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli_main(["evaluate", "--reward_model", "outputs/no_prm/", "--dataset_name", "arith:4", "--dry_run",
                     "--output_dir", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "stepdpo evaluate: error: reward model folder outputs/no_prm/" in err and "checker:arith" in err


@needs_trainers
def test_bad_row_is_one_line_and_skip_invalid_writes_it_to_rejects(tmp_path):
    data = tmp_path / "shepherd.jsonl"
    bad = {"input": "Q: 1+1? Step 1: 1+1=2 ки"}  # no "label"
    data.write_text((FIX / "math_shepherd.jsonl").read_text().rstrip("\n") + "\n" + json.dumps(bad) + "\n")
    row = len(data.read_text().splitlines())  # JSONL rows are named by line number
    out = tmp_path / "prm"
    argv = ["train-prm", "--model_name_or_path", "tiny-gpt2", "--dataset_name", data, "--dry_run",
            "--output_dir", out, "--report_to", "none"]
    lines = _short_error(_stepdpo(tmp_path, *argv), "train-prm")
    assert f"{data}, row {row}, field 'label': missing" in lines[0] and len(lines) == 2

    rejects = tmp_path / "rej.jsonl"
    proc = _stepdpo(tmp_path, *argv, "--skip_invalid", "--rejects_path", rejects)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(rows) == 1 and (rows[0]["row"], rows[0]["field"], rows[0]["data"]) == (row, "label", bad)
    summary = json.loads((out / "stepdpo_train_prm.json").read_text())
    assert summary["rejected_rows"] == 1 and summary["train_examples"] == min(row - 1, 8)


def test_evaluate_heatmap_names_where_the_step_labels_came_from(tmp_path, monkeypatch):
    """The arith task's labels come from its checker; a data file's are the labels given in it
    (here PRM800K's human ratings), and the step-score heatmap says which."""
    from types import SimpleNamespace

    from reward_models.rules import FunctionRewardModel
    from reward_models.types import StepSample
    from stepdpo import report
    from stepdpo.commands.evaluate import evaluate_reward_model

    plt = report._plt()
    close, figs = plt.close, []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    rm = FunctionRewardModel(lambda prompt, steps: [0.7] * len(steps))
    titles = {}
    for name in (str(FIX / "prm800k_phase2.jsonl"), "arith:6"):
        data = read_data(name, split="test" if name.startswith("arith") else "train", arith_error_rate=0.5)
        samples = [s for s in data.of_type(StepSample) if s.labels is not None]
        args = SimpleNamespace(batch_size=4, threshold=0.5, reward_model="fn", dataset_name=name)
        evaluate_reward_model(rm, samples, args, tmp_path)
        titles[name] = [ax.get_title() for f in figs for ax in f.axes if ax.get_title().startswith("step scores")][-1]
    for fig in figs:
        close(fig)
    assert titles[str(FIX / "prm800k_phase2.jsonl")] == "step scores: fn  (✓/✗ = label in prm800k_phase2.jsonl)"
    assert titles["arith:6"] == "step scores: fn  (✓/✗ = checker label)"
