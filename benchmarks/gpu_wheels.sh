#!/usr/bin/env bash
# Fetch, on a machine that reaches a package index, the few pure-Python wheels the GPU machine's image
# lacks, so benchmarks/run_gpu.sh can install the project there with no network:
#   bash benchmarks/gpu_wheels.sh [DIR]      # default DIR: benchmarks/gpu_wheels (git-ignored, < 1 MB)
# then carry DIR with the working tree (device tool: carry=["benchmarks/gpu_wheels"]).
# The image (benchmarks/gpu_image_packages.txt, from the device notes' package list) has torch, triton,
# numpy, tokenizers, setuptools, wheel, ... but not hydra-core, omegaconf or antlr4-python3-runtime.
# datasets, wandb and zstandard are imported only when used (hub corpora, wandb.mode != disabled,
# .zst files), so run_gpu.sh needs none of them. One version of each; pins overridable by env.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-benchmarks/gpu_wheels}"
py="${PYTHON:-python3}"
hydra="hydra-core==${HYDRA_VERSION:-1.3.8}"
omegaconf="omegaconf==${OMEGACONF_VERSION:-2.3.1}"
antlr="antlr4-python3-runtime==${ANTLR_VERSION:-4.9.3}"  # hydra 1.3 and omegaconf 2.3 need 4.9.*
mkdir -p "$dir"
rm -f "$dir"/*.whl
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$dir" "$hydra" "$omegaconf"
# antlr4-python3-runtime 4.9.3 is published as an sdist only: build its (pure-Python) wheel here
"$py" -m pip wheel -q --no-deps -w "$dir" "$antlr"
count=$(find "$dir" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$count" != 3 ]; then
    echo "gpu_wheels.sh: expected 3 wheels in $dir, found $count" >&2
    exit 1
fi
for whl in "$dir"/*.whl; do
    case "$whl" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
        *) echo "gpu_wheels.sh: $whl is not pure Python; the GPU machine (Python 3.12, x86-64) may refuse it" >&2
           exit 1 ;;
    esac
done
du -sh "$dir" | sed 's/^/gpu_wheels.sh: /'
