#!/usr/bin/env bash
# The prepared GPU session: kernel tests on CUDA, then the benchmarks, results into benchmarks/results
# (and, when OUT is set, one archive of them there, for the device tool that returns at most 8 files).
# A device call runs at most 10 minutes, so run it in two parts there:
#   bash benchmarks/run_gpu.sh part1   # install, GPU kernel tests, LayerNorm + GELU benchmarks, training step (~6 min)
#   bash benchmarks/run_gpu.sh part2   # attention benchmark with autotuning (~5-7 min)
# With no argument it runs both.
set -uo pipefail
cd "$(dirname "$0")/.."
part="${1:-all}"
out=benchmarks/results
mkdir -p "$out"
export PYTHONUNBUFFERED=1
pip install -q -e . >/dev/null 2>&1 || pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
if [ "$part" = part1 ] || [ "$part" = all ]; then
    # Kernel correctness on the real GPU (no interpreter).
    TRITON_INTERPRET=0 timeout 180 python -m pytest -q -x tests/test_kernels_layer_norm.py tests/test_kernels_gelu.py \
        tests/test_kernels_attention.py tests/test_model_kernels.py 2>&1 | tail -n 30 | tee "$out/gpu_tests.txt"
    for bench in layer_norm gelu; do
        timeout 120 python "benchmarks/bench_${bench}.py" --out "$out" 2>&1 | tee "$out/bench_${bench}.txt"
    done
    timeout 90 python benchmarks/bench_step.py --arch crammed-bert --microbatch 128 --precision bf16 --out "$out" \
        2>&1 | tee "$out/bench_step.txt"
fi
if [ "$part" = part2 ] || [ "$part" = all ]; then
    timeout 420 python benchmarks/bench_attention.py --out "$out" 2>&1 | tee "$out/bench_attention.txt"
fi
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_results_${part}.tgz" -C benchmarks results; fi
