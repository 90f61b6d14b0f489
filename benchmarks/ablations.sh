#!/usr/bin/env bash
# Search ablations on one task's knowledge store, each searched, trained and evaluated alike:
#   bash benchmarks/ablations.sh TASK
# Variants: full (the paper's loss), no_kd (--gamma 0), no_efficiency (--beta 0), random (a random
# genotype from the same space). Reads runs/<task>/store, writes runs/<task>/ablations/<variant>/,
# then prints the results table (benchmarks/collect.py). Reduced settings for a 2-core CPU, from the
# environment: SEARCH_EPOCHS (5), SEARCH_LIMIT (4000 stored rows), STUDENT_EPOCHS (5), REPEATS (5).
set -euo pipefail
task=${1:?usage: ablations.sh TASK}
RUN=${RUN:-runs/$task}
out=$RUN/ablations
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A flags=([full]="" [no_kd]="--gamma 0" [no_efficiency]="--beta 0" [random]="--random-architecture")
for variant in full no_kd no_efficiency random; do
  dir=$out/$variant
  # shellcheck disable=SC2086
  adabert search --store "$RUN/store" --output-dir "$dir/search" --epochs "${SEARCH_EPOCHS:-5}" \
    --train-limit "${SEARCH_LIMIT:-4000}" ${flags[$variant]}
  supernet=(--supernet "$dir/search")
  [ "$variant" = random ] && supernet=()
  adabert train --genotype "$dir/search/genotype.json" --store "$RUN/store" "${supernet[@]}" \
    --output-dir "$dir/student" --epochs "${STUDENT_EPOCHS:-5}"
  adabert evaluate --model "$dir/student" --store "$RUN/store" --output-dir "$dir/eval" \
    --repeats "${REPEATS:-5}"
done
python "$(dirname "$0")/collect.py" "$out"/{full,no_kd,no_efficiency,random}
