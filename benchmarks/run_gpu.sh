#!/usr/bin/env bash
# One prepared GPU session: kernel tests on CUDA, then every benchmark, results into benchmarks/results
# (and, when OUT is set, one archive of them there). Sized to finish in well under 10 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
export PYTHONUNBUFFERED=1
pip install -q -e . >/dev/null 2>&1 || pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
# Kernel correctness on the real GPU (no interpreter).
TRITON_INTERPRET=0 timeout 180 python -m pytest -q -x tests/test_kernels_layer_norm.py tests/test_kernels_gelu.py \
    tests/test_kernels_attention.py 2>&1 | tail -n 30 | tee "$out/gpu_tests.txt"
for bench in layer_norm gelu attention; do
    timeout 150 python "benchmarks/bench_${bench}.py" --out "$out" 2>&1 | tee "$out/bench_${bench}.txt"
done
timeout 120 python benchmarks/bench_step.py --arch crammed-bert --microbatch 128 --precision bf16 --out "$out" \
    2>&1 | tee "$out/bench_step.txt"
# The device tool returns at most 8 files: bring everything back as one archive.
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_results.tgz" -C benchmarks results; fi
