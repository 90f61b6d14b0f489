"""Does a change keep the pipeline's results? Two run directories of the same ``adabert pipeline``
command, one made before a change and one after it (same seed and threads, one machine), compared
stage by stage: the teacher's dev metrics, the store's teacher logits, the searched genotype and the
supernet's held-out losses, the student's dev metrics per epoch, and the evaluation's metrics and
loyalty. Latencies and wall times are not compared.

    python benchmarks/same_pipeline.py runs/same/before runs/same/after --label sst2 \\
        --before-commit 8cf2b18 --after-commit HEAD

writes ``benchmarks/results/same_pipeline_<label>.json`` (every compared value, each difference) and
exits with status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def outcomes(run: Path) -> dict[str, Any]:
    """What the pipeline in ``run`` decided and measured, stage by stage."""
    import numpy as np

    store = _json(run / "store" / "manifest.json") or {}
    selection = _json(run / "search" / "selection.json") or {}
    student = _json(run / "student" / "metrics.json") or {}
    report = _json(run / "eval" / "report.json") or {}
    logits = run / "store" / "train.teacher_logits.npy"
    return {
        "teacher_dev": store.get("teacher_metrics"),
        "store_train_logits_sum": float(np.load(logits).sum(dtype=np.float64)) if logits.is_file() else None,
        "probe_metrics": store.get("probe_metrics"),
        "genotype": _json(run / "search" / "genotype.json"),
        "supernet": selection.get("supernet"),
        "student_dev_per_epoch": [r.get("dev") for r in student.get("history", [])],
        "student_dev": student.get("dev"),
        "eval_metrics": report.get("metrics"),
    }


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Every place where ``before`` and ``after`` differ, as ``path: before != after``."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in differences(before.get(k), after.get(k), f"{where}.{k}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where.lstrip('.')}: {before!r} != {after!r}"]


def _commit(rev: str) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", rev], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return rev


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("before", type=Path, help="run directory of the pipeline before the change")
    parser.add_argument("after", type=Path, help="run directory of the same command after the change")
    parser.add_argument("--label", required=True, help="names the result file: same_pipeline_LABEL.json")
    parser.add_argument("--before-commit", required=True, help="the commit the first run was made with")
    parser.add_argument("--after-commit", required=True, help="the commit the second run was made with")
    args = parser.parse_args()
    for run in (args.before, args.after):
        status = (_json(run / "pipeline.json") or {}).get("status")
        if status != "done":
            parser.error(f"{run}: the pipeline is not finished (status {status!r})")
    runs = {"before": outcomes(args.before), "after": outcomes(args.after)}
    found = differences(runs["before"], runs["after"])
    record = {
        "before": {"run": str(args.before), "commit": _commit(args.before_commit), **runs["before"]},
        "after": {"run": str(args.after), "commit": _commit(args.after_commit), **runs["after"]},
        "commands": [(_json(run / "pipeline_config.json") or {}) for run in (args.before, args.after)],
        "seconds": [(_json(run / "pipeline.json") or {}).get("seconds") for run in (args.before, args.after)],
        "same": not found,
        "differences": found,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"same_pipeline_{args.label}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out}: {'the same' if not found else f'{len(found)} difference(s)'}")
    for line in found[:20]:
        print("  " + line)
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
