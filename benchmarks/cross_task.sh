#!/usr/bin/env bash
# Cross-task transfer: the architecture searched on one task, trained and evaluated on another.
#   bash benchmarks/cross_task.sh SEARCH_RUN TRAIN_RUN [...more TRAIN_RUNs]
# A run is a task name (runs/<task>) or a run directory (e.g. runs/rte_b). Reads
# SEARCH_RUN/search/genotype.json and TRAIN_RUN/store; writes TRAIN_RUN/cross/<search run name>/
# {student,eval}. The student starts from scratch (the searched supernet belongs to the other task);
# STUDENT_EPOCHS (10), REPEATS (5).
set -euo pipefail
run_dir() { if [ -d "$1" ]; then echo "$1"; else echo "runs/$1"; fi; }
source_run=$(run_dir "${1:?usage: cross_task.sh SEARCH_RUN TRAIN_RUN...}")
shift
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for target in "$@"; do
  train_run=$(run_dir "$target")
  out=$train_run/cross/$(basename "$source_run")
  adabert train --genotype "$source_run/search/genotype.json" --store "$train_run/store" \
    --output-dir "$out/student" --epochs "${STUDENT_EPOCHS:-10}"
  adabert evaluate --model "$out/student" --store "$train_run/store" --output-dir "$out/eval" \
    --repeats "${REPEATS:-5}"
done
