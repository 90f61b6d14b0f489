#!/usr/bin/env bash
# Cross-task transfer: the architecture searched on one task, trained and evaluated on another.
#   bash benchmarks/cross_task.sh SEARCH_TASK TRAIN_TASK [...more TRAIN_TASKs]
# Reads runs/<SEARCH_TASK>/search/genotype.json and runs/<TRAIN_TASK>/store; writes
# runs/<TRAIN_TASK>/cross/<SEARCH_TASK>/{student,eval}. The student starts from scratch (the
# searched supernet belongs to the other task); STUDENT_EPOCHS (10), REPEATS (5).
set -euo pipefail
source_task=${1:?usage: cross_task.sh SEARCH_TASK TRAIN_TASK...}
shift
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for task in "$@"; do
  out=runs/$task/cross/$source_task
  adabert train --genotype "runs/$source_task/search/genotype.json" --store "runs/$task/store" \
    --output-dir "$out/student" --epochs "${STUDENT_EPOCHS:-10}"
  adabert evaluate --model "$out/student" --store "runs/$task/store" --output-dir "$out/eval" \
    --repeats "${REPEATS:-5}"
done
