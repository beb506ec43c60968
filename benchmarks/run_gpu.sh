#!/usr/bin/env bash
# The prepared GPU check: ONE run that fits a device call (at most 8 minutes of its 10; ~3 with --quick).
#   bash benchmarks/run_gpu.sh             # (a) kernel tests natively, (c) pretraining in four settings,
#                                          # (b) kernel benchmarks at BERT shapes, (d) a one-screen summary
#   bash benchmarks/run_gpu.sh --quick     # ~3.5 min: model kernel tests, eager_torch vs compile_triton only,
#                                          # 40 steps each; benchmarks only if time is left
#   bash benchmarks/run_gpu.sh --dry-run   # any machine: checks this script's syntax, lists what it would run
# (c) runs before (b): the four-setting table (eager/compile x torch/Triton ops) is what this check is for.
# Every step has a timeout cut to what is left of the deadline, so the whole never runs past it; a step
# that times out or fails is marked in the summary and the rest goes on.
# Nothing is downloaded but the Python packages: the corpus is random words from a fixed seed.
# Results: $OUT when set (the device tool brings it back), else benchmarks/results/gpu_<date>/:
#   summary.md, summary.json  the training table (tokens/s, MFU vs dense bf16 peak, data wait, memory)
#   steps.tsv                 every step: status, seconds;  <step>.txt: its output
#   bench/                    the benchmarks' CSV/JSON/PNG;  runs/<setting>/: each run's log, metrics, summary
set -uo pipefail
cd "$(dirname "$0")/.."
mode=full dry=0
for arg in "$@"; do
    case "$arg" in
        --quick) mode=quick ;;
        --dry-run) dry=1 ;;
        *) echo "run_gpu.sh: unknown argument '$arg' (use --quick and/or --dry-run)" >&2; exit 2 ;;
    esac
done
if [ "$mode" = quick ]; then
    deadline=210 steps=40 log_every=10 corpus_mb=4 run_timeout=45 compile_timeout=90
    settings="eager_torch compile_triton"
    tests="tests/test_model_kernels.py"
else
    deadline=470 steps=200 log_every=25 corpus_mb=8 run_timeout=75 compile_timeout=120
    settings="eager_torch eager_triton compile_torch compile_triton"
    tests="tests/test_kernels_layer_norm.py tests/test_kernels_gelu.py tests/test_kernels_attention.py \
tests/test_model_kernels.py tests/test_compile.py"
fi
out="${OUT:-benchmarks/results/gpu_$(date +%Y%m%d_%H%M)}"
work="$(mktemp -d)"  # corpus and cache: outside the results, never brought back
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
SECONDS=0

# step NAME TIMEOUT CMD...: runs CMD with its output in $out/NAME.txt, within what is left of the deadline.
step() {
    local name="$1" limit="$2"
    shift 2
    if [ "$dry" = 1 ]; then
        printf '  %-22s <=%4ss  %s\n' "$name" "$limit" "$*"
        local arg
        for arg in "$@"; do  # every script and test file named must exist
            if [[ "$arg" =~ ^(benchmarks|tests)/.*\.py$ ]] && [ ! -f "$arg" ]; then
                echo "run_gpu.sh --dry-run: $name names a missing file: $arg" >&2
                missing=1
            fi
        done
        return 0
    fi
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 20 ]; then
        printf '%s\tskipped (deadline)\t0\n' "$name" >>"$out/steps.tsv"
        echo "== $name: skipped, $left s left of the deadline"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (<= ${limit} s): $*"
    local start=$SECONDS rc
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    rc=$?
    tail -n 4 "$out/$name.txt"
    local status=ok
    [ "$rc" = 124 ] && status="timed out"
    [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="failed (rc $rc)"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$out/steps.tsv"
}

# train SETTING TIMEOUT: a short crammed-BERT pretraining run on the synthetic corpus, in one of four
# settings <eager|compile>_<torch|triton>.
# Its folder (checkpoint and export: GBs) stays in $work; the log, metrics and summary are copied out.
train() {
    local compile=false
    [ "${1%%_*}" = compile ] && compile=true
    step "train_$1" "$2" python -m cramming arch=crammed-bert "budget=${steps}steps" "name=$1" \
        "base_dir=$work/runs" train.microbatch_size=128 train.batch_size_start=128 train.batch_size=128 \
        "train.log_every=$log_every" train.validation_batches=1 train.checkpoint_minutes=0 eval=none \
        data=local "data.files=[$work/corpus/train.txt]" "data.cache_dir=$work/cache" \
        "impl.compile=$compile" "impl.kernels=${1#*_}" impl.precision=bf16
    if [ "$dry" = 0 ]; then
        mkdir -p "$out/runs/$1"
        cp "$work/runs/$1"/{log.txt,metrics.jsonl,summary.json} "$out/runs/$1/" 2>/dev/null
    fi
}

if [ "$dry" = 1 ]; then
    bash -n "$0" || exit 1
    missing=0
    echo "run_gpu.sh --dry-run ($mode): syntax ok; deadline ${deadline} s; results would go to $out"
else
    mkdir -p "$out/bench" "$out/runs"
    printf 'step\tstatus\tseconds\n' >"$out/steps.tsv"
fi

step install 90 bash -c "pip install -q -e . >/dev/null 2>&1 || pip install -q --no-deps -e ."
step gpu_info 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
python -c \"import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)\""
step corpus 60 python benchmarks/run_gpu_report.py corpus "$work/corpus/train.txt" "$corpus_mb"
# (a) the kernels on the real GPU, no interpreter; the compile tests too (CPU Inductor, fast ones only)
# shellcheck disable=SC2086  # $tests: a list of files
step tests 75 env CRAMMING_AUTOTUNE=0 python -m pytest -q -x -m "not slow" $tests
# prepare the corpus and tokenizer once, so no run below spends its time on it
step prepare 90 python -m cramming prepare_only=true name=prepare "base_dir=$work/runs" data=local \
    "data.files=[$work/corpus/train.txt]" "data.cache_dir=$work/cache"
# (c) four settings: eager and compiled, PyTorch ops and Triton kernels
for setting in $settings; do
    limit=$run_timeout
    [ "${setting%%_*}" = compile ] && limit=$compile_timeout
    train "$setting" "$limit"
done
# (b) the kernel benchmarks at BERT shapes only (no sweeps)
for bench in layer_norm gelu attention; do
    step "bench_$bench" 60 python "benchmarks/bench_$bench.py" --bert-only --out "$out/bench"
done
# (d) the table and the one-screen summary
if [ "$dry" = 1 ]; then
    echo "  then: python benchmarks/run_gpu_report.py summary $out  (summary.md, summary.json, printed)"
    python benchmarks/run_gpu_report.py --help >/dev/null || exit 1
    rm -rf "$work"
    exit "$missing"
fi
python benchmarks/run_gpu_report.py summary "$out" | tee "$out/summary.txt"
rm -rf "$work"
echo "total ${SECONDS} s; results in $out"
