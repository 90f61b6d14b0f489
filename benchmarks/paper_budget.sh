#!/usr/bin/env bash
# The paper budget end to end on a GPU, every stage and epoch timed:
#   bash benchmarks/paper_budget.sh TASK          # sst2, mrpc, rte, ...
# runs `adabert pipeline --task TASK --budget paper` (all training rows; teacher max_length 128, 3
# epochs; search 50 epochs; student 30 epochs; see `adabert pipeline --help`) with every stage on
# DEVICE, then prints each stage's seconds (pipeline.json), the seconds of each measured epoch of the
# teacher, the search and the student, their sum (labelled as such: start-up, the probe pass,
# evaluation and export come on top), and the student's and the teacher's dev metrics.
# Settings from the environment:
#   GLUE (../shared/data/glue, else ./shared/data/glue), RUN (runs/paper-TASK), DEVICE (cuda),
#   PRECISION (fp32: search and student; bf16 / fp16 change the arithmetic, see docs/gpu.md),
#   AUGMENT (0: teacher-labelled augmented copies per training row, probe.augment_factor),
#   EXTRA (more pipeline flags, e.g. "--compress --set compress.device=cuda"), BUDGET (paper; another
#   budget with tiny EXTRA settings and DEVICE=cpu checks the script on a CPU).
# A run that stops (or is stopped) continues where it was when started again with the same settings.
set -Eeuo pipefail
task=${1:?usage: paper_budget.sh TASK}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
trap 'echo "paper_budget.sh: FAILED (line $LINENO); the pipeline resumes from where it stopped" >&2' ERR
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-fp32}
AUGMENT=${AUGMENT:-0}
RUN=${RUN:-runs/paper-$task}
BUDGET=${BUDGET:-paper}
if [ -z "${GLUE:-}" ]; then
  for candidate in ../shared/data/glue shared/data/glue; do
    if [ -d "$candidate" ]; then GLUE=$candidate; break; fi
  done
fi
[ -n "${GLUE:-}" ] || { echo "paper_budget.sh: no GLUE folder; set GLUE=DIR" >&2; exit 1; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

python - <<'EOF'
import platform, torch, transformers, datasets
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, datasets {datasets.__version__}")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i} {torch.cuda.get_device_name(i)}")
EOF

started=$(date +%s)
# shellcheck disable=SC2086
python -m adabert.cli pipeline --task "$task" --data-dir "$GLUE" --run-dir "$RUN" --budget "$BUDGET" \
  --set finetune.device="$DEVICE" --set probe.device="$DEVICE" --set probe.augment_factor="$AUGMENT" \
  --set search.device="$DEVICE" --set search.precision="$PRECISION" \
  --set train.device="$DEVICE" --set train.precision="$PRECISION" \
  --set evaluate.device="$DEVICE" ${EXTRA:-}
echo "pipeline: $(($(date +%s) - started)) s wall in this invocation"

python - "$RUN" <<'EOF'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
read = lambda *parts: json.loads(run.joinpath(*parts).read_text())
print("\n=== stage seconds (pipeline.json; 0 = skipped, done before)")
for name, info in read("pipeline.json")["stages"].items():
    print(f"  {name:<10} {info['status']:<9} {info.get('seconds') or 0:>9.1f}")

teacher = read("teacher", "metrics.json") if (run / "teacher" / "metrics.json").exists() else None
search = [json.loads(line) for line in (run / "search" / "search_log.jsonl").read_text().splitlines()]
student = read("student", "metrics.json")
rows = [("teacher fine-tuning", [r["seconds"] for r in teacher["history"]] if teacher else [])]
rows += [("search", [r["seconds"] for r in search]), ("student training", [r["seconds"] for r in student["history"]])]
print("\n=== measured seconds per epoch")
total = 0.0
for name, seconds in rows:
    if seconds:
        total += sum(seconds)
        print(f"  {name:<20} {len(seconds):>3} epochs, mean {sum(seconds) / len(seconds):8.1f} s, "
              f"sum {sum(seconds):9.1f} s")
print(f"  sum of the measured epochs: {total:.0f} s ({total / 3600:.2f} h; start-up, the probe pass, "
      "evaluation and export not included)")

report = read("eval", "report.json")
print("\n=== dev metrics")
for name, values in report["metrics"].items():
    print(f"  {name:<10} " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))
on_gpu = report.get("latency_device") or {}
for where, latency in (("cpu", report.get("latency") or {}), (on_gpu.get("device"), on_gpu.get("latency") or {})):
    for model, per_batch in latency.items():
        print(f"  latency on {where}: {model} " + ", ".join(
            f"batch {b} {s['median_ms']:.2f} ms" for b, s in per_batch.items()))
EOF
