"""The benchmarks are not timed tests, but they must keep running: each one's
--quick mode, end to end, must finish cleanly and print its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("fs_bench.py", "ratio"),
        ("rules_bench.py", "worst cost ratio to no rules"),
        ("admission_bench.py", "p99"),
        ("lazy_bench.py", "lazy/passthrough"),
        ("bus_bench.py", "sequential / broadcast"),
        ("experiment_bench.py", "experiment / broadcast"),
    ],
)
def test_bench_quick_mode_runs(script, expect):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expect in done.stdout
