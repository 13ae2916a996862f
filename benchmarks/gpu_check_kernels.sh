#!/usr/bin/env bash
# GPU checks of the fused kernels in one short run (a few minutes on one H100):
#
#   bash benchmarks/gpu_check_kernels.sh [OUT_DIR]        # benchmarks/gpu_check.sh calls this
#
# 1. tests/kernels against the compiled kernels on CUDA (FRAMEWIRE_TEST_DEVICE=cuda, no
#    interpreter), CUDA graph and inductor tests included; tests needing diffusers skip
#    where it is not installed. Only torch, triton and pytest are needed.
# 2. framewire/bench/kernels_bench.py: each kernel vs its eager and compiled reference, achieved
#    bandwidth against a device copy, and the goals.
# Writes OUT_DIR/kernels_tests.log, kernels_bench.txt and kernels_bench.json; exits non-zero
# if either step fails (the second still runs after a failed first).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${1:-benchmarks/out}"
python="${PYTHON:-python3}"
mkdir -p "$out"

"$python" - <<'PY' || exit 1
import torch, triton
assert torch.cuda.is_available(), "no CUDA device: these checks need a GPU"
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
PY

# Only this folder's conftest: the server's test fixtures need packages a bare GPU image lacks.
ini="$(mktemp --suffix=.ini)"
trap 'rm -f "$ini"' EXIT
printf '[pytest]\naddopts = -ra -q -p no:cacheprovider\nmarkers =\n    slow: takes more than a few seconds\n' >"$ini"

status=0
FRAMEWIRE_TEST_DEVICE=cuda TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 timeout 300 \
    "$python" -m pytest -c "$ini" --rootdir=. --confcutdir=tests/kernels tests/kernels 2>&1 |
    tee "$out/kernels_tests.log" || status=1
PYTHONUNBUFFERED=1 timeout 300 "$python" -m framewire.bench.kernels_bench --out "$out/kernels_bench.json" 2>&1 |
    tee "$out/kernels_bench.txt" || status=1
exit "$status"
