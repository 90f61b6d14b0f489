#!/usr/bin/env bash
# One task's results table in benchmarks/RESULTS.md, end to end: the teacher, the searched student,
# that student compressed further, and the search ablations (no KD, no efficiency loss, a random
# architecture), each evaluated against the teacher and a BERT-base-sized model in one timed run.
#   bash benchmarks/results_table.sh TASK
# Settings as in glue.sh and ablations.sh (RUN=runs/<task>, TRAIN_LIMIT, SEARCH_EPOCHS, ...).
set -euo pipefail
task=${1:?usage: results_table.sh TASK}
run=${RUN:-runs/$task}
here=$(dirname "$0")
bash "$here/glue.sh" "$task" teacher probe search train evaluate compress
bash "$here/ablations.sh" "$task"
python "$here/collect.py" "$run" "$run/compressed" "$run"/ablations/{full,no_kd,no_efficiency,random}
