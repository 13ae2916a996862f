#!/usr/bin/env bash
# The diffusion engine on a lent GPU (H100/H200) in one call, the headline numbers first.
#
#   bash benchmarks/gpu_check.sh prepare         # here, with PyPI: the wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh run [PHASE...]  # there (no network), from the repository root, carrying .whl
#   bash benchmarks/gpu_check.sh --dry-run       # here, on the CPU, tiny models (make test runs it)
#
# Phases run in this order (by value), each under its own time limit and within the whole
# budget (GPU_CHECK_BUDGET_S, default 690 s). Estimated seconds on one H100/H200, and limits:
#
#   phase         estimate  limit  what
#   env                  5     30  GPU, driver, library versions
#   lcm-eager           70    150  LCM 4-step 512 px img2img, TAESD, eager, batch 1 and 8, + diffusers pipeline
#   lcm-compile        210    300  the same with torch.compile + CUDA graphs, + largest difference vs eager
#   sdxl-eager          60    120  SDXL-turbo 1-step 512 px txt2img, TAESD, eager, batch 1 and 4, + diffusers
#   sdxl-compile       150    210  the same compiled, batch 1 and 4, + largest difference vs eager
#   kernels             45     90  the fused kernels' time and bandwidth against a device copy
#   tensorrt            --    rest  LCM as lcm-eager on the TensorRT backend, only if tensorrt imports
#                      ---
#                      540 s (9 min) before TensorRT; the budget leaves 2.5 min for it or overruns.
#
# The models are random weights with the real SD1.5 (LCM) and SDXL configs, built on the GPU
# in fp16 in memory (no multi-GB save and reload). Each benchmark rewrites its JSON after each
# batch size, so a phase stopped at its limit keeps what it measured; a phase that fails or
# times out is noted in summary.txt with its last log lines, and the next phase runs.
#
# Results: $OUT (the device tool's folder) or benchmarks/out/gpu[-dry-run]/: summary.txt, one
# JSON per phase (lcm-eager.json ... tensorrt.json, kernels_bench.json) and logs.tar.gz: 8
# files at most, in one folder, as a device call returns them.
#
# Limits and the budget can be changed: GPU_CHECK_LIMIT_<PHASE>_S (e.g. GPU_CHECK_LIMIT_LCM_COMPILE_S=400).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

WHEELS=.whl
PY_VERSION=3.12
WHEEL_LIMIT_BYTES=$((64 * 1024 * 1024))
PYTHON=${PYTHON:-python3}
# What the GPU image lacks (it has torch, triton, transformers, huggingface_hub, safetensors,
# numpy, pillow): pinned to the versions in requirements/serve.txt, the ones the tests ran.
# Not importlib-metadata, which diffusers lists but imports only on Python < 3.8: its
# backport would need lazy-importer too, and could shadow nothing useful on 3.12.
PACKAGES=(diffusers pydantic pydantic-core annotated-types typing-inspection typing-extensions)
ALL_PHASES=(env lcm-eager lcm-compile sdxl-eager sdxl-compile kernels tensorrt)
VERSIONS='import torch, diffusers, transformers, pydantic
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())
print("diffusers", diffusers.__version__, "transformers", transformers.__version__, "pydantic", pydantic.__version__)'

declare -A LIMIT=([env]=30 [lcm-eager]=150 [lcm-compile]=300 [sdxl-eager]=120 [sdxl-compile]=210 [kernels]=90 [tensorrt]=600)

pinned() { # the name==version line of a package in the serve lock file
    local line
    line=$(grep -i -m1 "^$1==" requirements/serve.txt) || {
        echo "gpu_check: $1 is not pinned in requirements/serve.txt" >&2
        return 1
    }
    echo "${line%% *}"
}

prepare() {
    local specs=() p
    for p in "${PACKAGES[@]}"; do
        specs+=("$(pinned "$p")") || exit 1
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" "${specs[@]}" || exit 1
    local total
    total=$(du -cb "$WHEELS"/*.whl | tail -n1 | cut -f1)
    ls -l "$WHEELS"
    if ((total > WHEEL_LIMIT_BYTES)); then
        echo "gpu_check: the wheels take $total bytes, over the 64 MiB a device call carries" >&2
        exit 1
    fi
    local count=("$WHEELS"/*.whl)
    echo "${#count[@]} wheels, $((total / 1024)) KiB: carry $WHEELS with the device call (git ignores it)"
}

DRY=0
started=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - started))); }
note() { echo "$*" | tee -a "$RESULTS/summary.txt"; }

phase() { # phase NAME COMMAND...: COMMAND under the phase's limit (and the budget); never fails the script
    local name=$1
    shift
    local var limit remaining code t0
    var="GPU_CHECK_LIMIT_$(echo "${name//-/_}" | tr '[:lower:]' '[:upper:]')_S"
    limit=${!var:-${LIMIT[$name]}}
    remaining=$(left)
    if ((remaining < 10)); then
        note "== $name: skipped, ${remaining} s of the budget left"
        return 0
    fi
    ((limit > remaining)) && limit=$remaining
    echo "== $name ($(date +%T), limit ${limit} s)"
    t0=$(date +%s)
    # stdout (one line per measurement) goes to the summary as it comes, stderr to logs/NAME.log
    timeout --kill-after=10 "$limit" "$@" 2>"$LOGS/$name.log" | tee -a "$RESULTS/summary.txt"
    code=${PIPESTATUS[0]}
    if ((code == 0)); then
        note "== $name: ok ($(($(date +%s) - t0)) s)"
    elif ((code == 124 || code == 137)); then
        note "== $name: TIMED OUT after ${limit} s (what it measured is kept); last log lines:"
        tail -n 5 "$LOGS/$name.log" | tee -a "$RESULTS/summary.txt"
    else
        note "== $name: FAILED (exit $code); last log lines:"
        tail -n 5 "$LOGS/$name.log" | tee -a "$RESULTS/summary.txt"
    fi
    return 0
}

bench() { # bench NAME ARGS...: one gpu_bench run writing NAME.json
    local name=$1
    shift
    phase "$name" "$PYTHON" -m framewire.bench.gpu_bench --out "$RESULTS/$name.json" "${COMMON[@]}" "$@"
}

run_phase() {
    case $1 in
    env)
        if command -v nvidia-smi >/dev/null; then
            timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 |
                tee -a "$RESULTS/summary.txt"
        else
            note "nvidia-smi: not found"
        fi
        phase env "$PYTHON" -c "$VERSIONS"
        ;;
    lcm-eager) bench lcm-eager "${LCM[@]}" --backend eager --batches "$LCM_BATCHES" --baseline ;;
    lcm-compile) bench lcm-compile "${LCM[@]}" --backend compile --batches "$LCM_BATCHES" --check ;;
    sdxl-eager) bench sdxl-eager "${SDXL[@]}" --backend eager --batches "$SDXL_BATCHES" --baseline ;;
    sdxl-compile) bench sdxl-compile "${SDXL[@]}" --backend compile --batches "$SDXL_BATCHES" --check ;;
    kernels)
        phase kernels "$PYTHON" -m framewire.bench.kernels_bench --out "$RESULTS/kernels_bench.json" "${KERNELS_ARGS[@]}"
        ;;
    tensorrt)
        if "$PYTHON" -c "import tensorrt" 2>/dev/null; then
            bench tensorrt "${LCM[@]}" --backend tensorrt --batches 1
        else
            note "== tensorrt: skipped, the tensorrt package does not import here"
        fi
        ;;
    *)
        note "== $1: FAILED, no such phase (phases: ${ALL_PHASES[*]})"
        ;;
    esac
}

finish() { # at exit: the logs packed into one file; a dry run's compile cache removed
    [[ -d $LOGS ]] && tar -czf "$RESULTS/logs.tar.gz" -C "$RESULTS" logs && rm -rf "$LOGS"
    ((DRY)) && rm -rf "$CACHE"
    return 0
}

run() {
    mkdir -p "$RESULTS" "$LOGS"
    : >"$RESULTS/summary.txt"
    trap finish EXIT
    trap 'exit 143' TERM INT # so that the EXIT trap packs the logs
    if ((!DRY)) && [[ -d $WHEELS ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl ||
            note "== wheels: FAILED to install from $WHEELS (the phases that need them will fail)"
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$CACHE/inductor}
    note "gpu_check $( ((DRY)) && echo "dry run (CPU, tiny models)" || echo run) on $(hostname), $(date -u +%FT%TZ)"
    local phases=("$@")
    ((${#phases[@]})) || phases=("${ALL_PHASES[@]}")
    local p
    for p in "${phases[@]}"; do
        run_phase "$p"
    done
    echo
    echo "==== summary ($(($(date +%s) - started)) s)"
    cat "$RESULTS/summary.txt"
}

configure() {
    BUDGET_S=${GPU_CHECK_BUDGET_S:-690}
    if ((DRY)); then
        RESULTS=${OUT:-benchmarks/out/gpu-dry-run}
        CACHE=$(mktemp -d)
        COMMON=(--device cpu --dtype float32 --size 64 --repeat 2 --compiler aot_eager --cache-dir "$CACHE" --tiny-vae)
        LCM=(--arch tiny --mode img2img --steps 4 --strength 0.5)
        SDXL=(--arch tiny-sdxl --mode txt2img --steps 1)
        LCM_BATCHES=1,2
        SDXL_BATCHES=1
        KERNELS_ARGS=(--quick --no-compile)
    else
        RESULTS=${OUT:-benchmarks/out/gpu}
        CACHE=/tmp/framewire-cache
        COMMON=(--device cuda --dtype float16 --size 512 --repeat 20 --cache-dir "$CACHE" --tiny-vae)
        LCM=(--arch sd15 --mode img2img --steps 4 --strength 0.5)
        SDXL=(--arch sdxl --mode txt2img --steps 1)
        LCM_BATCHES=1,8
        SDXL_BATCHES=1,4
        KERNELS_ARGS=()
    fi
    LOGS=$RESULTS/logs # packed into $RESULTS/logs.tar.gz at exit
}

case ${1:-} in
prepare) prepare ;;
run)
    shift
    configure
    run "$@"
    ;;
--dry-run)
    shift
    DRY=1
    configure
    run "$@"
    ;;
*)
    echo "usage: $0 prepare | run [PHASE...] | --dry-run [PHASE...]   (phases: ${ALL_PHASES[*]})" >&2
    exit 2
    ;;
esac
