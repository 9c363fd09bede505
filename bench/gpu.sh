#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one go (issue 17): scoring, sampling and trainer benchmarks on
# one CUDA GPU with a Qwen2-1.5B-shaped model (random weights, config built in code, no hub) in bf16.
#
#   bash bench/gpu.sh                          # from the repository root; results into $OUT (or bench/results-gpu)
#   BENCH_GPU_DRY_RUN=1 bash bench/gpu.sh      # the same steps on the CPU at seconds-long sizes (a 2-layer Qwen2)
#
# Each benchmark runs as its own step under `timeout`, so one failure or overrun does not lose the others;
# the whole script stays under 8 minutes (step limits: scoring 140 s, sampling 60 s, trainer 130 s, then
# scripts/train_stepdpo.py with online pairs on the GPU 90 s and the same under FSDP 2 60 s).
# Writes at most 8 files into the output directory: train/<run>.json for the two training runs, one JSON per benchmark (python -m bench.run format:
# copy them into bench/results/ and run `python -m bench.run --markdown-only` to put them into BENCHMARKS.md),
# gpu.log (everything the steps printed), summary.txt (what ran, how long, each row) and BENCHMARKS-gpu.md.
#
# Needs python3 with torch (CUDA build), and transformers, tokenizers, safetensors, numpy, tqdm (scoring and
# sampling) plus trl, peft, accelerate, datasets (trainer). The project itself need not be installed: it runs
# from this checkout (PYTHONPATH). Without network access nothing can be installed, so missing packages are
# listed and the steps that need them are skipped; with WHEELHOUSE=/path/to/wheels they are installed from
# there first (pip install --no-index --find-links).
#
# Settings (environment): OUT (output directory), PYTHON (default python3), BENCH_BACKBONE (default
# qwen2-1.5b; qwen2-0.5b is the smaller public shape), BENCH_DTYPE (default bfloat16), BENCH_GPU_DRY_RUN=1
# (CPU, smoke sizes, qwen2-tiny), BENCH_STEP_LIMITS="scoring sampling trainer train_stepdpo fsdp2" seconds.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
PY=${PYTHON:-python3}
DRY=${BENCH_GPU_DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT_DIR=${OUT:-$ROOT/bench/results-gpu}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu.log"
SUMMARY="$OUT_DIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true

if [ "$DRY" = "1" ]; then
  MODE=--smoke; DEVICE=cpu; BACKBONE=${BENCH_BACKBONE:-qwen2-tiny}; DTYPE=${BENCH_DTYPE:-bfloat16}
else
  MODE=--full; DEVICE=cuda; BACKBONE=${BENCH_BACKBONE:-qwen2-1.5b}; DTYPE=${BENCH_DTYPE:-bfloat16}
fi
read -r LIMIT_SCORING LIMIT_SAMPLING LIMIT_TRAINER LIMIT_TRAIN LIMIT_FSDP <<<"${BENCH_STEP_LIMITS:-140 60 130 90 60}"

say() { echo "$*" | tee -a "$SUMMARY"; }
T0=$(date +%s)
say "bench/gpu.sh: device $DEVICE, backbone $BACKBONE, dtype $DTYPE, mode ${MODE#--}, output $OUT_DIR"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  2>/dev/null | sed 's/^/gpu: /' | tee -a "$SUMMARY"

# -- what is installed ------------------------------------------------------------------------------------------
missing() {  # prints the modules of "$@" that do not import
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  say "FATAL: $PY cannot import torch; nothing can run"; exit 3
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' \
  2>&1 | tee -a "$SUMMARY"
NEED_SCORING="transformers tokenizers safetensors numpy tqdm"
NEED_TRAINER="trl peft accelerate datasets"
MISS=$(missing $NEED_SCORING $NEED_TRAINER)
if [ -n "$MISS" ] && [ -n "${WHEELHOUSE:-}" ] && [ -d "${WHEELHOUSE}" ]; then
  say "installing from $WHEELHOUSE: $MISS"
  "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" $MISS >>"$LOG" 2>&1 || say "pip install from $WHEELHOUSE failed (see gpu.log)"
  MISS=$(missing $NEED_SCORING $NEED_TRAINER)
fi
[ -n "$MISS" ] && say "MISSING python packages: $MISS  (check: $PY -c 'import transformers, trl, peft, accelerate, datasets')"
"$PY" - <<'EOF' 2>/dev/null | tee -a "$SUMMARY"
import importlib
for m in ("transformers", "trl", "peft", "accelerate", "datasets", "tokenizers"):
    try:
        print(f"{m} {importlib.import_module(m).__version__}")
    except Exception as e:  # noqa: BLE001 - a report, not a check
        print(f"{m}: not importable ({type(e).__name__})")
EOF
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "FATAL: CUDA is not available to torch here (use BENCH_GPU_DRY_RUN=1 for the CPU dry run)"; exit 4
fi

# -- the benchmarks, one step each ---------------------------------------------------------------------------------
STATUS=0
step() {  # step NAME LIMIT_SECONDS NEEDED_MODULES...
  local name=$1 limit=$2; shift 2
  local miss; miss=$(missing "$@")
  if [ -n "$miss" ]; then say "SKIPPED $name: missing $miss"; STATUS=5; return; fi
  local t=$(date +%s)
  echo "=== $name (limit ${limit}s) ===" >>"$LOG"
  timeout -k 10 "$limit" "$PY" -m bench.run $MODE --device "$DEVICE" --dtype "$DTYPE" --backbones "$BACKBONE" \
    --only "$name" --out-dir "$OUT_DIR" --no-markdown >>"$LOG" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t ))
  case $rc in
    0) say "ok      $name (${took}s)";;
    124|137) say "TIMEOUT $name after ${took}s (limit ${limit}s; see gpu.log)"; STATUS=6;;
    *) say "FAILED  $name (exit $rc, ${took}s); last lines of gpu.log:"; tail -n 15 "$LOG" | sed 's/^/    /' | tee -a "$SUMMARY"; STATUS=7;;
  esac
}
step scoring "$LIMIT_SCORING" $NEED_SCORING
step sampling "$LIMIT_SAMPLING" $NEED_SCORING
step trainer "$LIMIT_TRAINER" $NEED_SCORING $NEED_TRAINER

# -- issue 14: scripts/train_stepdpo.py with pairs built online, on the GPU ------------------------------------------
# The demo recipe (tiny policy, checker judge), two short rounds, pairs sampled on the GPU; its stepdpo_train.json says where
# the policy sampled ("devices") and the sampling throughput ("sampling"). Then the same run as a dry run under
# FSDP 2 (configs/accelerate/fsdp.yaml, one process, GPT2Block wrapped): the trainer's unshard-for-sampling path.
train_run() {  # train_run NAME LIMIT LAUNCHER... -- ARGS...
  local name=$1 limit=$2; shift 2
  local miss; miss=$(missing $NEED_SCORING $NEED_TRAINER)
  if [ -n "$miss" ]; then say "SKIPPED $name: missing $miss"; STATUS=5; return; fi
  local t=$(date +%s) dir="$WORK/$name"
  echo "=== $name (limit ${limit}s) ===" >>"$LOG"
  timeout -k 10 "$limit" "$@" --output_dir "$dir" --save_pairs_to "$dir/pairs.jsonl" >>"$LOG" 2>&1
  local rc=$? took=$(( $(date +%s) - t ))
  if [ $rc -eq 0 ] && [ -f "$dir/stepdpo_train.json" ]; then
    mkdir -p "$OUT_DIR/train"; "$PY" - "$dir/stepdpo_train.json" "$OUT_DIR/train/$name.json" "$took" <<'EOF2' | tee -a "$SUMMARY"
import json, sys
res = json.loads(open(sys.argv[1]).read())
keep = {k: res[k] for k in ("command", "data", "global_step", "train_loss", "sampling", "pair_stats", "versions")
        if k in res}
keep["wall_s"] = int(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(keep, indent=1))
for r in res.get("sampling", []):
    print(f"  round {r['round']} on {','.join(r['devices'])}: {r['generated_tokens']} tokens in "
          f"{r['generate_seconds']:.2f} s of generate = {r['tokens_per_second']} tokens/s "
          f"(pair building {r['build_seconds']:.2f} s)")
EOF2
    say "ok      $name (${took}s)"
  else
    case $rc in
      124|137) say "TIMEOUT $name after ${took}s (limit ${limit}s; see gpu.log)"; STATUS=6;;
      *) say "FAILED  $name (exit $rc, ${took}s); last lines of gpu.log:"; tail -n 15 "$LOG" | sed 's/^/    /' | tee -a "$SUMMARY"; STATUS=7;;
    esac
  fi
}
WORK=$(mktemp -d)
TRAIN_ARGS=(--config configs/demo_stepdpo.yaml --rounds 2 --regenerate_every_steps 10 --sft_warmup_steps 300
            --report_to none --disable_tqdm true)
[ "$DRY" = "1" ] && TRAIN_ARGS+=(--dry_run)
train_run train_stepdpo "$LIMIT_TRAIN" "$PY" scripts/train_stepdpo.py "${TRAIN_ARGS[@]}"
if [ "$DEVICE" = cuda ]; then
  train_run train_stepdpo_fsdp2 "$LIMIT_FSDP" "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
    --num_processes 1 --mixed_precision no --fsdp_transformer_layer_cls_to_wrap GPT2Block scripts/train_stepdpo.py \
    "${TRAIN_ARGS[@]}" --dry_run
fi
rm -rf "$WORK"

# -- summary: every row of every result, and a markdown rendering -------------------------------------------------
"$PY" - "$OUT_DIR" <<'EOF' 2>>"$LOG" | tee -a "$SUMMARY"
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    res = json.loads(p.read_text())
    print(f"\n{p.name}: {res['machine'].get('gpu') or res['machine']['device']}, wall {res['wall_s']:.0f} s")
    for row in res["rows"]:
        o, b = row["ours"], row["baseline"]
        print(f"  {row['benchmark']}: {o['label']} {o['value']:,.3g} {o['unit']} vs {b['label']} {b['value']:,.3g} "
              f"{b['unit']} = {row['ratio']:.2f}x (target {row['target']}, met {row['met']})")
EOF
"$PY" -m bench.run --markdown-only --out-dir "$OUT_DIR" --markdown "$OUT_DIR/BENCHMARKS-gpu.md" >>"$LOG" 2>&1 \
  || say "(could not render BENCHMARKS-gpu.md; see gpu.log)"
say "total $(( $(date +%s) - T0 ))s; exit status $STATUS"
exit $STATUS
