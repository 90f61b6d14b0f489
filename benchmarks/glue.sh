#!/usr/bin/env bash
# One task end to end with the default teacher, each stage timed, into runs/<task>/:
#   bash benchmarks/glue.sh TASK [STAGE ...]
# STAGE is any of: teacher probe search train evaluate compress (default: all but compress, in that
# order). compress: the student compressed further (COMPRESS_ARGS, default: SVD at half rank then
# magnitude pruning to 50%, embedding table included) into $RUN/compressed/model, evaluated like the
# student into $RUN/compressed/eval.
# Settings come from the environment so the figures in RESULTS.md can be reproduced exactly:
#   GLUE (../shared/data/glue), TRAIN_LIMIT (8000), MAX_LENGTH (64 for sst2, 128 otherwise),
#   TEACHER_EPOCHS (3), SEARCH_EPOCHS (10), SEARCH_LIMIT (all stored rows), STUDENT_EPOCHS (10),
#   SEARCH_ARGS / TRAIN_ARGS (extra flags), RUN (runs/<task>).
# Wall times are appended to $RUN/times.txt. OMP_NUM_THREADS=1 keeps runs steady on a shared 2-core
# machine (torch's default of 2 threads degrades badly when another process holds a core).
set -euo pipefail
task=${1:?usage: glue.sh TASK [STAGE ...]}
shift
stages=${*:-teacher probe search train evaluate}
GLUE=${GLUE:-../shared/data/glue}
RUN=${RUN:-runs/$task}
TRAIN_LIMIT=${TRAIN_LIMIT:-8000}
if [ "$task" = sst2 ]; then MAX_LENGTH=${MAX_LENGTH:-64}; else MAX_LENGTH=${MAX_LENGTH:-128}; fi
limit_flag=()
[ -n "${SEARCH_LIMIT:-}" ] && limit_flag=(--train-limit "$SEARCH_LIMIT")
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"

timed() {
  local name=$1
  shift
  local start=$SECONDS
  "$@"
  echo "$name $((SECONDS - start)) s  ($*)" >>"$RUN/times.txt"
}

for stage in $stages; do
  case $stage in
  teacher)
    timed teacher adabert teacher finetune --task "$task" --data-dir "$GLUE" --train-limit "$TRAIN_LIMIT" \
      --max-length "$MAX_LENGTH" --epochs "${TEACHER_EPOCHS:-3}" --output-dir "$RUN/teacher" ;;
  probe)
    timed probe adabert teacher probe --teacher "$RUN/teacher" --output-dir "$RUN/store" ;;
  search)
    timed search adabert search --store "$RUN/store" --output-dir "$RUN/search" \
      --epochs "${SEARCH_EPOCHS:-10}" "${limit_flag[@]}" ${SEARCH_ARGS:-} ;;
  train)
    timed train adabert train --genotype "$RUN/search/genotype.json" --store "$RUN/store" \
      --supernet "$RUN/search" --output-dir "$RUN/student" --epochs "${STUDENT_EPOCHS:-10}" ${TRAIN_ARGS:-} ;;
  evaluate)
    timed evaluate adabert evaluate --model "$RUN/student" --store "$RUN/store" --output-dir "$RUN/eval" ;;
  compress)
    # shellcheck disable=SC2086
    timed compress adabert compress --model "$RUN/student" --store "$RUN/store" \
      --output-dir "$RUN/compressed/model" ${COMPRESS_ARGS:---methods svd,magnitude --embeddings}
    timed evaluate_compressed adabert evaluate --model "$RUN/compressed/model" --store "$RUN/store" \
      --output-dir "$RUN/compressed/eval" ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2 ;;
  esac
done
