"""`make demo`'s entry point, end to end: it must pass, say so, and leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "demo" / "demo.py"


def test_demo_runs_end_to_end_and_cleans_up():
    done = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    summary = out.split("Summary", 1)[1]
    for fact in (
        "the webhook added the chaosfs sidecar to a TiKV pod",
        "one broadcast reached 2 of 2 sidecars",
        "both apps saw EIO while the fault was in force",
        "after recover, both apps ran cleanly again",
        "the audit trail recorded",
        "demo passed",
    ):
        assert fact in summary, summary
    work = out.split("removed ", 1)[1].split()[0]
    assert work.startswith("/tmp/chaosbus-demo-") and not Path(work).exists()
    with open("/proc/self/mountinfo") as f:
        assert work not in f.read()
    left = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"processes left behind: {left.stdout}"
