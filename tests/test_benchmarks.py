"""The benchmark scripts keep working: each runs in its quick form and prints its ratios."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    "script, args, pattern",
    [
        (
            "gpu_matrix.py",
            ["--quick", "--variants", "fp32,bf16+channels_last"],
            r"small-cnn\s+8\s+bf16\+channels_last\s+×\s*\d+\.\d{3}\s+\d+\.\d",
        ),
        ("ddp_overhead.py", ["--model", "small-cnn", "--batch-size", "8", "--repeats", "1"], r"overhead ×\d+\.\d{3}"),
        (
            "fast_at_step.py",
            ["--model", "small-cnn", "--batch-size", "8", "--repeats", "1"],
            r"N-FGSM ÷ PGD-10 = ×\d+\.\d{3}",
        ),
        (
            "extra_data_loader.py",
            ["--images", "2000", "--batch-size", "64", "--batches", "3", "--repeats", "1"],
            r"mixed, 45/64 memory-mapped\s+[\d,]+ images/s",
        ),
    ],
)
def test_benchmark_runs_in_its_quick_form(script, args, pattern):
    done = subprocess.run(
        [sys.executable, script, *args],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(pattern, done.stdout), done.stdout
