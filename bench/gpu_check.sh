#!/usr/bin/env bash
# One-GPU check of deep's speed (issue 7), sized to finish within 8 minutes on one H200:
#   1. bench/deep_throughput.py: ncgeo step (bf16, eager) vs the SupCon-style reference;
#   2. the same ncgeo step under torch.compile (reference skipped);
#   3. the eager ncgeo step at batch 512 (reference skipped): how far the batch-128 step is from
#      the GPU's throughput at a size that hides kernel-launch overhead;
#   4. Fashion-MNIST, step imbalance R=10, ResNet-18, bf16, with n_w = 0 and n_w = 100;
#   5. the CUDA-only tests (pytest -m gpu on the deep test files that need no cvxpy);
#   6. a JSON summary (throughput, targets met or not, final Delta to the prototypes, accuracies).
# Every stage has its own time limit; a stage that fails or times out is recorded in the
# summary and the next one still runs.
#
# Usage: bench/gpu_check.sh [--data-root DIR] [--out DIR] [--epochs N] [--cpu-smoke]
#   --data-root  folder with the four Fashion-MNIST IDX .gz files
#                (default: data/fashion-mnist when present, else deep.data's default place,
#                /usr/share/datasets/fashion-mnist). To carry them to a GPU machine:
#                mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   --out        folder for summary.json, throughput*.json, the two metrics.jsonl files and
#                gpu_check.log (7 files; default: $OUT when set, else out/gpu_check)
#   --epochs     epochs of each Fashion-MNIST run (default 10)
#   --cpu-smoke  tiny sizes on the CPU, to check the script's logic in a minute
# Python: $PYTHON (default python3); the repository is put on PYTHONPATH, nothing is installed.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-out/gpu_check}
DATA_ROOT=""
EPOCHS=10
SMOKE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data-root) DATA_ROOT=$2; shift 2 ;;
        --out) OUT_DIR=$2; shift 2 ;;
        --epochs) EPOCHS=$2; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$DATA_ROOT" && -d data/fashion-mnist ]]; then DATA_ROOT=data/fashion-mnist; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/ncgeo_gpu_check.XXXXXX")   # checkpoints stay out of $OUT_DIR
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
STATUS=()

if [[ $SMOKE == 1 ]]; then
    BENCH=(--quick --device cpu --workers 0)
    COMPILED=(--quick --device cpu --skip-reference --steps 2 --warmup 1)
    LARGE=(--quick --device cpu --skip-reference --batch-size 32)
    TRAIN=(--device cpu --width 4 --batch-size 32 --max-train-samples 400 --max-test-samples 200
           --epochs 1 --eval-every 1 --precision fp32)
    LIMIT_BENCH=120; LIMIT_COMPILED=0; LIMIT_LARGE=60; LIMIT_RUN=120; LIMIT_TESTS=60
else
    BENCH=(--device cuda --precision bf16)
    COMPILED=(--device cuda --precision bf16 --compile --skip-reference --steps 200)
    LARGE=(--device cuda --precision bf16 --skip-reference --batch-size 512 --steps 60 --warmup 10)
    TRAIN=(--device cuda --width 64 --batch-size 128 --epochs "$EPOCHS" --eval-every 5 --precision bf16)
    LIMIT_BENCH=75; LIMIT_COMPILED=150; LIMIT_LARGE=50; LIMIT_RUN=80; LIMIT_TESTS=45  # 480 s at most
fi

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run with a time limit, log, remember the status
    local name=$1 limit=$2; shift 2
    if [[ $limit == 0 ]]; then STATUS+=("$name=skipped"); return; fi
    echo "=== $name: $* (limit ${limit}s)" | tee -a "$LOG"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$LOG"
    STATUS+=("$name=$rc")
}

if [[ $SMOKE == 0 ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$LOG"
fi
stage throughput "$LIMIT_BENCH" "$PY" bench/deep_throughput.py "${BENCH[@]}" --json "$OUT_DIR/throughput.json"
stage throughput_compiled "$LIMIT_COMPILED" "$PY" bench/deep_throughput.py "${COMPILED[@]}" \
    --json "$OUT_DIR/throughput_compiled.json"
stage throughput_b512 "$LIMIT_LARGE" "$PY" bench/deep_throughput.py "${LARGE[@]}" --json "$OUT_DIR/throughput_b512.json"
for NW in 0 100; do
    stage "fmnist_nw$NW" "$LIMIT_RUN" "$PY" -m deep.train --dataset fmnist ${DATA_ROOT:+--data-root "$DATA_ROOT"} \
        --imbalance step --ratio 10 --protos "$NW" --seed 0 --no-progress "${TRAIN[@]}" \
        --out "$RUNS/fmnist_nw$NW"
    cp "$RUNS/fmnist_nw$NW/metrics.jsonl" "$OUT_DIR/fmnist_nw${NW}_metrics.jsonl" 2> /dev/null
done

stage gpu_tests "$LIMIT_TESTS" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    tests/deep/test_speed_options.py tests/deep/test_models.py tests/deep/test_augment.py

"$PY" - "$OUT_DIR" "$RUNS" "${STATUS[@]}" <<'PYTHON' 2>&1 | tee -a "$LOG"
import json, statistics, sys, time
from pathlib import Path

out, runs, status = Path(sys.argv[1]), Path(sys.argv[2]), dict(s.split("=", 1) for s in sys.argv[3:])

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

def lines(path):
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []

summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "status": status,
           "throughput": load(out / "throughput.json"),
           "throughput_compiled": load(out / "throughput_compiled.json"),
           "throughput_b512": load(out / "throughput_b512.json"), "runs": {}}
# the targets are judged at the reference's batch (128 images): the eager and compiled runs
best = [t["ncgeo"]["images_per_second"] for t in (summary["throughput"], summary["throughput_compiled"])
        if t and t.get("ncgeo")]
reference = (summary["throughput"] or {}).get("reference")
summary["targets"] = {
    "device": (summary["throughput"] or {}).get("device"),
    "best_ncgeo_images_per_second": max(best) if best else None,
    "reference_images_per_second": reference["images_per_second"] if reference else None,
    "best_ratio": max(best) / reference["images_per_second"] if best and reference else None,
    "batch_512_images_per_second": (summary["throughput_b512"] or {}).get("ncgeo", {}).get("images_per_second"),
}
targets = summary["targets"]
targets["at_least_25000_images_per_second"] = None if not best else max(best) >= 25000
targets["at_least_5x_reference"] = None if targets["best_ratio"] is None else targets["best_ratio"] >= 5
for name in ("fmnist_nw0", "fmnist_nw100"):
    records = lines(runs / name / "metrics.jsonl")
    timing = lines(runs / name / "timing.jsonl")
    config = load(runs / name / "config.json") or {}
    if not records:
        summary["runs"][name] = None
        continue
    last = records[-1]
    summary["runs"][name] = {
        "n_w": config.get("protos"), "epochs": last["epoch"], "final_loss": last["loss"],
        "train_delta_prototypes": last["train"]["delta_prototypes"],
        "test_delta_prototypes": (last["test"] or {}).get("delta_prototypes"),
        "test_ncc_accuracy": (last["test"] or {}).get("ncc_accuracy"),
        "test_nearest_prototype_accuracy": (last["test"] or {}).get("nearest_prototype_accuracy"),
        "delta_prototypes_by_epoch": {r["epoch"]: r["train"]["delta_prototypes"] for r in records},
        "median_images_per_second": statistics.median(t["images_per_second"] for t in timing) if timing else None,
        "seconds_training": sum(t["seconds"] for t in timing),
    }
from ncgeo._io import atomic_write_bytes  # the repository is on PYTHONPATH
atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
print(json.dumps({"status": status, "targets": targets,
                  "runs": {k: v and {key: v[key] for key in ("n_w", "train_delta_prototypes",
                                                             "test_ncc_accuracy", "median_images_per_second")}
                           for k, v in summary["runs"].items()}}, indent=2))
print(f"summary written to {out / 'summary.json'}")
PYTHON
rm -rf "$RUNS"
