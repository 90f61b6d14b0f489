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


def test_adabert_table_puts_each_run_beside_the_paper_s_ratios():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality_table import PAPER, _adabert_rows

    run = {
        "teacher": 0.90, "searched": [0.87, 0.88, 0.89], "searched_parameters": [4_000_000] * 3,
        "teacher_parameters": 22_700_000, "searched_speedup_vs_teacher_b1": [12.0, 15.5, 11.0],
        "searched_speedup_vs_teacher_b32": [25.0, 30.0, 21.0], "peers": {"fasttext": 0.82},
    }  # fmt: skip
    rows = _adabert_rows({"sst2_full": run})
    ours = next(r for r in rows if r.startswith("| ours: sst2_full"))
    assert "| 0.9000 | 0.8800 | 97.8% | 4.00M / 22.7M | 11.0-15.5x | 21.0-30.0x | fasttext 0.8200 |" in ours
    paper = [r for r in rows if r.startswith("| paper:")]
    assert len(paper) == len(PAPER["student"]) and "| 93.5 | 91.8 | 98.2% |" in paper[0]
