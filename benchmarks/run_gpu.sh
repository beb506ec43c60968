#!/usr/bin/env bash
# The prepared GPU check: ONE run that fits a device call (a 480-s deadline inside its 10 minutes), on the
# GPU machine as lent: no network, its image's torch/triton, the missing wheels carried along.
#   bash benchmarks/gpu_wheels.sh            # first, on a machine with a package index (< 1 MB of wheels)
#   bash benchmarks/run_gpu.sh               # on the GPU machine; device tool: carry=["benchmarks/gpu_wheels"],
#                                            # timeout_s >= 560 (the deadline plus start-up and packing)
#   bash benchmarks/run_gpu.sh --dry-run     # any machine: syntax, the files named, the plan with each cap
#   bash benchmarks/run_gpu.sh --install-only  # the offline install and its import check, nothing else
# Order = priority (a step gets its cap or what is left of the deadline, whichever is less; a step that
# fails or times out is marked and the rest goes on): offline install (aborts the run in seconds with
# one line if `import cramming.kernels, hydra` fails), a 30-s native kernel test, the compiled runs
# (Triton, then PyTorch ops), the attention benchmark (Triton vs SDPA flash/cuDNN/efficient at BERT's
# shape), 4 microbatches per step, the eager runs, the compile/precision checks, the LayerNorm and
# GeGLU benchmarks as the model runs them, the two slow GPU tests.
# Results: $OUT when set (the device tool brings back at most 8 files), else benchmarks/results/gpu_<date>/:
#   summary.md, summary.json   everything the check reports (benchmarks/run_gpu_report.py)
#   results.tar.gz             every step's log, each run's metrics/summary, benchmark CSV/JSON/PNG, checks
#   run_gpu.log                this script's console output
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0 install_only=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry=1 ;;
        --install-only) install_only=1 ;;
        *) echo "run_gpu.sh: unknown argument '$arg' (use --dry-run or --install-only)" >&2; exit 2 ;;
    esac
done
py="${PYTHON:-python3}"
wheels="${CRAMMING_GPU_WHEELS:-benchmarks/gpu_wheels}"
deadline="${RUN_GPU_DEADLINE:-480}"  # seconds; an override only for tests of the script's own mechanics
steps=100 acc_steps=20 corpus_mb=4
out="${OUT:-benchmarks/results/gpu_$(date +%Y%m%d_%H%M)}"
work="$(mktemp -d)"   # corpus, cache, run folders (GBs of checkpoints): never brought back
res="$work/results"   # what is packed into $out at the end
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
SECONDS=0
planned=0 missing=0
last_step=slow_tests  # may use every second left of the deadline (autotuning all attention tiles takes a while)

# install: the carried wheels and the project, offline; then the one import that everything needs.
install() {
    local log="$work/install.txt" found=()
    shopt -s nullglob
    found=("$wheels"/*.whl)
    shopt -u nullglob
    local pip=("$py" -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check)
    if [ "${#found[@]}" -gt 0 ]; then
        timeout 12 "${pip[@]}" "${found[@]}" >>"$log" 2>&1
    fi
    local project=editable
    if ! timeout 12 "${pip[@]}" -e . >>"$log" 2>&1; then
        # e.g. a setuptools too old for editable installs: the checkout itself on the path does as well
        project="not installed (pip: $(tail -n 1 "$log")), checkout on PYTHONPATH"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    local err  # checked from / : the installed package, not the checkout that the current folder holds
    if ! err=$(cd / && "$py" -c "import cramming.kernels, hydra" 2>&1); then
        echo "run_gpu.sh: ABORT: 'import cramming.kernels, hydra' fails after the offline install ($(echo "$err" | tail -n 1)); wheels carried: ${#found[@]} in $wheels (make them with benchmarks/gpu_wheels.sh and carry that folder); project install: $project; pip: $(tail -n 1 "$log" 2>/dev/null)" >&2
        exit 3
    fi
    echo "install: ${#found[@]} wheels from $wheels, project $project; import cramming.kernels, hydra: ok ($SECONDS s)"
}

# step NAME CAP CMD...: CMD with its output in $res/NAME.txt, within CAP and what is left of the deadline.
step() {
    local name="$1" cap="$2"
    shift 2
    planned=$((planned + cap))
    if [ "$dry" = 1 ]; then
        printf '  %-26s <=%4ss  %s\n' "$name" "$cap" "$*"
        local arg
        for arg in "$@"; do  # every script and test file named must exist
            if [[ "$arg" =~ ^(benchmarks|tests)/[^:]*\.(py|sh)$ ]] && [ ! -f "$arg" ]; then
                echo "run_gpu.sh --dry-run: $name names a missing file: $arg" >&2
                missing=1
            fi
        done
        return 0
    fi
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 5 ]; then
        printf '%s\tskipped (deadline)\t0\t%s\n' "$name" "$cap" >>"$res/steps.tsv"
        echo "== $name: skipped, $left s left of the deadline"
        return 0
    fi
    local limit=$cap
    [ "$limit" -gt "$left" ] || [ "$name" = "$last_step" ] && limit=$left  # the last step: all that is left
    echo "== $name (<= ${limit} s): $*"
    local start=$SECONDS rc status=ok
    timeout -k 5 "$limit" "$@" >"$res/$name.txt" 2>&1
    rc=$?
    tail -n 3 "$res/$name.txt"
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="timed out"
    [ "$rc" != 0 ] && [ "$status" = ok ] && status="failed (rc $rc)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$cap" >>"$res/steps.tsv"
}

# train SETTING CAP STEPS [OVERRIDES...]: crammed-BERT pretraining on the synthetic corpus in one setting,
# <eager|compile>_<torch|triton>[_suffix]; one log line per step (losses side by side), the same seed for all.
train() {
    local setting="$1" cap="$2" steps="$3"
    shift 3
    local mode="${setting%%_*}" rest="${setting#*_}"
    local kernels="${rest%%_*}" compile=false env=()
    if [ "$mode" = compile ]; then
        compile=true env=(env TORCH_LOGS=recompiles,graph_breaks)
    fi
    step "train_$setting" "$cap" "${env[@]}" "$py" -m cramming arch=crammed-bert "budget=${steps}steps" \
        "name=$setting" "base_dir=$work/runs" train.microbatch_size=128 train.batch_size_start=128 \
        train.batch_size=128 train.log_every=1 train.validation_batches=1 train.checkpoint_minutes=0 \
        eval=none seed=0 data=local "data.files=[$work/corpus/train.txt]" "data.cache_dir=$work/cache" \
        "impl.compile=$compile" "impl.kernels=$kernels" impl.precision=bf16 "$@"
    if [ "$dry" = 0 ]; then
        mkdir -p "$res/runs/$setting"
        cp "$work/runs/$setting"/{log.txt,metrics.jsonl,summary.json} "$res/runs/$setting/" 2>/dev/null
    fi
}

# pack: summary + tarball + console log into $out (also when the run is cut short: an EXIT trap).
pack() {
    [ "$dry" = 1 ] || [ "$install_only" = 1 ] && return
    trap - EXIT
    timeout 30 "$py" benchmarks/run_gpu_report.py summary "$res" >"$res/summary.txt" 2>&1
    cat "$res/summary.txt"
    mkdir -p "$out"
    cp "$res"/summary.{md,json} "$out/" 2>/dev/null
    tar czf "$out/results.tar.gz" -C "$res" . 2>/dev/null
    [ -f "$work/console.log" ] && cp "$work/console.log" "$out/run_gpu.log"
    echo "total ${SECONDS} s; results in $out: $(ls "$out" | tr '\n' ' ')"
    rm -rf "$work"
}

if [ "$dry" = 1 ]; then
    bash -n "$0" || exit 1
    echo "run_gpu.sh --dry-run: syntax ok; deadline ${deadline} s (the last step, $last_step, may run on to it); results would go to $out"
    echo "  install                    <=  25s  pip install --no-index --no-deps --no-build-isolation $wheels/*.whl -e . (aborts in one line unless 'import cramming.kernels, hydra' works)"
else
    mkdir -p "$res/bench" "$res/runs"
    printf 'step\tstatus\tseconds\tcap\n' >"$res/steps.tsv"
    if [ "$install_only" = 0 ]; then
        exec > >(tee -a "$work/console.log") 2>&1
        trap pack EXIT
    fi
    install
    [ "$install_only" = 1 ] && { rm -rf "$work"; exit 0; }
fi

planned=25  # install, above: two pip calls of at most 12 s and the import check
kernel_tests="tests/test_model_kernels.py tests/test_kernels_attention.py tests/test_kernels_layer_norm.py \
tests/test_kernels_gelu.py"
step gpu_info 5 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv"
# shellcheck disable=SC2086  # a list of files
step kernel_tests 30 env CRAMMING_AUTOTUNE=0 "$py" -m pytest -q -x -p no:cacheprovider -m "not slow" $kernel_tests
step env_check 10 "$py" benchmarks/gpu_checks.py env "$res/env.json"
step corpus 10 "$py" benchmarks/run_gpu_report.py corpus "$work/corpus/train.txt" "$corpus_mb"
step prepare 25 "$py" -m cramming prepare_only=true name=prepare "base_dir=$work/runs" data=local \
    "data.files=[$work/corpus/train.txt]" "data.cache_dir=$work/cache"
train compile_triton 90 "$steps"
train compile_torch 70 "$steps"
step bench_attention 35 "$py" benchmarks/bench_attention.py --bert-only --out "$res/bench"
train compile_triton_acc4 25 "$acc_steps" train.batch_size_start=512 train.batch_size=512  # 4 microbatches
train eager_triton 30 "$steps"
train eager_torch 30 "$steps"
step dynamo 20 "$py" benchmarks/gpu_checks.py dynamo "$res/dynamo.json"
# fixed tiles: autotuning every config at these shapes would eat the cap (numerics barely differ)
step errors 15 env CRAMMING_AUTOTUNE=0 "$py" benchmarks/gpu_checks.py errors "$res/errors.json"
# as the model runs them: add + LayerNorm with the bf16 branch and fp32 residual; GeGLU on bf16
step bench_layer_norm 20 "$py" benchmarks/bench_layer_norm.py --as-used --out "$res/bench"
step bench_gelu 15 "$py" benchmarks/bench_gelu.py --as-used --out "$res/bench"
step slow_tests 20 "$py" -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
    -k "test_torch_compile_forward_and_backward or test_autotuned_kernels_on_gpu"
planned=$((planned + 5))  # pack: the summary and the tarball

if [ "$dry" = 1 ]; then
    echo "  pack                       <=   5s  benchmarks/run_gpu_report.py summary, results.tar.gz"
    echo "sum of caps: ${planned} s of the ${deadline}-s deadline"
    "$py" benchmarks/run_gpu_report.py --help >/dev/null || exit 1
    rm -rf "$work"
    [ "$planned" -le "$deadline" ] || { echo "run_gpu.sh --dry-run: caps sum to $planned s > $deadline s" >&2; exit 1; }
    exit "$missing"
fi
