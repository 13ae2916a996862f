#!/usr/bin/env bash
# The diffusion engine on a lent GPU (H100/H200), in one call.
#
#   bash benchmarks/gpu_check.sh prepare   # here, with PyPI: wheels the GPU image lacks → .whl/
#   bash benchmarks/gpu_check.sh run       # there (no network), from the repository root
#
# The GPU image has torch, transformers and huggingface_hub but not diffusers or pydantic:
# `prepare` downloads those wheels (cp312, manylinux) into .whl/, which git ignores; the
# device call must carry .whl. `run` installs them into /tmp/site, builds random weights
# with the real SD1.5 and SDXL configs on the GPU (fp16), checks that the compiled path
# matches eager, and times LCM 4-step 512px image-to-image and SDXL-turbo 1-step 512px
# text-to-image at batch 1/4/8, eager vs compiled (CUDA graphs), with the tiny VAE, plus
# the diffusers pipeline __call__ as the baseline for the eager runs; then the fused kernels'
# own GPU check (benchmarks/gpu_check_kernels.sh: their tests on CUDA and their benchmark), and
# the LCM eager run again with the kernels off (FRAMEWIRE_KERNELS=0) to show what they bring.
#
# Phases run in priority order while the time budget lasts (GPU_CHECK_BUDGET_S, default
# 540 s); each phase writes its JSON as it goes, so an interrupted run keeps its numbers.
# Pick phases with: bash benchmarks/gpu_check.sh run weights lcm-eager sdxl-eager ...
# (the kernels phase needs no weights: `run env kernels` checks the kernels alone).
# Results: $OUT (the device tool's folder) or benchmarks/out/gpu/: summary.txt, one JSON per
# engine phase, kernels_bench.json, and every log packed into logs.tar.gz at exit. That is 8
# files at most, in one folder: what comes back from a device call is limited to 8 files.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
PY_VERSION=3.12
RESULTS=${OUT:-benchmarks/out/gpu}
LOGS=$RESULTS/logs  # packed into $RESULTS/logs.tar.gz at exit
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
WEIGHTS=${GPU_CHECK_WEIGHTS:-/tmp/framewire-weights}
PACKAGES=(
    diffusers==0.42.1
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing-extensions==4.16.0
    importlib-metadata==10.2.0
)
ALL_PHASES=(env weights lcm-eager sdxl-eager lcm-compile sdxl-compile kernels lcm-eager-nokernels)

prepare() {
    mkdir -p "$WHEELS"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
    ls -l "$WHEELS"
    echo "carry $WHEELS with the device call (it is ignored by git)"
}

started=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - started))); }

phase() {  # phase NAME MIN_SECONDS COMMAND...: run COMMAND if MIN_SECONDS remain, bounded by the budget
    local name=$1 need=$2
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < need)); then
        echo "== $name: skipped, ${remaining}s of the budget left (needs ~${need}s)" | tee -a "$RESULTS/summary.txt"
        return 0
    fi
    echo "== $name ($(date +%T), ${remaining}s left)"
    # stdout (one line per result) goes to the summary, stderr (logs) to logs/NAME.log
    if ! timeout "$remaining" "$@" 2>"$LOGS/$name.log" | tee -a "$RESULTS/summary.txt"; then
        echo "== $name: FAILED or timed out; last log lines:" | tee -a "$RESULTS/summary.txt"
        tail -n 5 "$LOGS/$name.log" | tee -a "$RESULTS/summary.txt"
    fi
}

BENCH=(python3 -m framewire.bench.gpu_bench)

run_phase() {
    case $1 in
    env)
        { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"; } | tee -a "$RESULTS/summary.txt"
        python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)' | tee -a "$RESULTS/summary.txt"
        ;;
    weights)
        phase weights-sd15 60 python3 -m framewire.cli init-weights --arch sd15 "$WEIGHTS/sd15" --device cuda --dtype float16
        phase weights-sdxl 120 python3 -m framewire.cli init-weights --arch sdxl "$WEIGHTS/sdxl" --device cuda --dtype float16
        ;;
    lcm-eager)
        phase lcm-eager 60 "${BENCH[@]}" --out "$RESULTS/lcm-eager.json" --family sd15 --weights "$WEIGHTS/sd15" --mode img2img --steps 4 --strength 0.5 --size 512 --tiny-vae --backend eager --baseline
        ;;
    sdxl-eager)
        phase sdxl-eager 90 "${BENCH[@]}" --out "$RESULTS/sdxl-eager.json" --family sdxl --weights "$WEIGHTS/sdxl" --mode txt2img --steps 1 --size 512 --tiny-vae --backend eager --baseline
        ;;
    lcm-compile)
        phase lcm-compile 180 "${BENCH[@]}" --out "$RESULTS/lcm-compile.json" --family sd15 --weights "$WEIGHTS/sd15" --mode img2img --steps 4 --strength 0.5 --size 512 --tiny-vae --backend compile --check
        ;;
    sdxl-compile)
        phase sdxl-compile 240 "${BENCH[@]}" --out "$RESULTS/sdxl-compile.json" --family sdxl --weights "$WEIGHTS/sdxl" --mode txt2img --steps 1 --size 512 --tiny-vae --backend compile --check
        ;;
    kernels)
        # The kernels' tests against the compiled kernels on CUDA, then their benchmark (a few
        # minutes). Its three files go with the logs; its JSON also comes back on its own.
        phase kernels 150 bash benchmarks/gpu_check_kernels.sh "$LOGS/kernels"
        if [[ -f $LOGS/kernels/kernels_bench.json ]]; then
            cp "$LOGS/kernels/kernels_bench.json" "$RESULTS/kernels_bench.json"
        fi
        ;;
    lcm-eager-nokernels)
        phase lcm-eager-nokernels 60 env FRAMEWIRE_KERNELS=0 "${BENCH[@]}" --out "$RESULTS/lcm-eager-nokernels.json" --family sd15 --weights "$WEIGHTS/sd15" --mode img2img --steps 4 --strength 0.5 --size 512 --tiny-vae --backend eager
        ;;
    *)
        echo "unknown phase $1; phases: ${ALL_PHASES[*]}" >&2
        return 2
        ;;
    esac
}

pack_logs() {
    if [[ -d $LOGS ]]; then
        tar -czf "$RESULTS/logs.tar.gz" -C "$RESULTS" logs && rm -rf "$LOGS"
    fi
}

run() {
    mkdir -p "$RESULTS" "$LOGS"
    : >"$RESULTS/summary.txt"
    trap pack_logs EXIT
    trap 'exit 143' TERM INT  # so that the EXIT trap packs the logs
    if [[ -d $WHEELS ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=/tmp/framewire-cache/inductor
    local phases=("$@")
    ((${#phases[@]})) || phases=("${ALL_PHASES[@]}")
    for p in "${phases[@]}"; do
        run_phase "$p"
    done
    echo
    echo "==== summary ($(($(date +%s) - started)) s)"
    cat "$RESULTS/summary.txt"
}

case ${1:-} in
prepare) prepare ;;
run)
    shift
    run "$@"
    ;;
*)
    echo "usage: $0 prepare | run [${ALL_PHASES[*]}]" >&2
    exit 2
    ;;
esac
