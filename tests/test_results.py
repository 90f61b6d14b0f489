"""The generated tables of benchmarks/RESULTS.md hold the figures benchmarks wrote, not hand-typed ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_tables_match_the_benchmark_json():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
