"""Lazy mode: a second database engine through a power cut, as SQLite is
in test_lazy.py: LMDB (tests/lazy_lmdb_load.py) committing through a -lazy mount,
killed with its unsynced data by power-cut, must find every commit that returned.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import test_lazy
from test_lazy import ask

HERE = Path(__file__).resolve().parent
LMDB_LOAD = HERE / "lazy_lmdb_load.py"

# The fixtures of test_lazy.py, for this module too: the lazy sidecar, and the
# writers started through it, killed before the mount goes away.
lazy = test_lazy.lazy
programs = test_lazy.programs


# LMDB writes each commit's meta page with pwrite on a second descriptor opened
# O_WRONLY|O_DSYNC and returns with no fsync after it: chaosfs's lazy mode must make
# such a write durable before it returns (this test found that it did not, once).


def lmdb_run(env: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LMDB_LOAD), str(env), *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def restart_and_check(env: Path, printed: list[int], flags: list[str]) -> list[int]:
    """The app restarts on the same mount: open, verify every record, carry on.
    Every check but one; the commits that returned and are gone, for the caller."""
    assert printed == list(range(1, len(printed) + 1))
    check = lmdb_run(env, "--check")
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout)
    counters = found["counters"]
    assert counters == list(range(1, len(counters) + 1))  # no hole, nothing half there
    assert len(counters) <= len(printed) + 1  # at most the commit cut before it printed
    assert found["bad"] == []
    assert (found["n"], found["sum"]) == (len(counters), sum(counters))
    assert found["entries"] == len(counters)
    more = lmdb_run(env, *flags, "--count", str(len(counters) + 10))
    assert more.returncode == 0, more.stderr
    again = json.loads(lmdb_run(env, "--check").stdout)
    assert again["counters"] == list(range(1, len(counters) + 11)) and again["bad"] == []
    return sorted(set(printed) - set(counters))


@pytest.mark.parametrize(
    ("writemap", "metadata"),
    [
        (False, False),  # pwrite + fdatasync of the pages, the meta page through O_DSYNC
        (True, False),  # pages and meta page in a shared writable mmap, msync(MS_SYNC)
        (True, True),  # directory entries lost too: the load fsyncs its directories once
        (False, True),
    ],
)
def test_lmdb_survives_a_power_cut_with_every_returned_commit(lazy, programs, writemap, metadata):
    env = lazy.mountpoint / "app.lmdb"
    flags = ["--writemap"] if writemap else []
    load = programs([sys.executable, str(LMDB_LOAD), str(env), *flags])
    load.wait_line(lambda line: line.isdigit() and int(line) >= 250, timeout=40,
                   what="250 commits")  # fmt: skip
    reply = ask(lazy, "power-cut", metadata=metadata)  # in the middle of the load
    assert load.proc.pid in [entry["pid"] for entry in reply["killed"]], reply
    printed = [int(line) for line in load.finish() if line.isdigit()]

    missing = restart_and_check(env, printed, flags)
    assert not missing, f"commits that returned but are gone: {missing[:20]}"


@pytest.mark.parametrize("writemap", [False, True])
def test_lmdb_power_cut_while_idle_after_a_commit(lazy, programs, writemap):
    """Cut while the app waits after a commit returned: deterministic where mid-load
    is a matter of timing."""
    env = lazy.mountpoint / "app.lmdb"
    flags = ["--writemap"] if writemap else []
    load = programs([sys.executable, str(LMDB_LOAD), str(env), *flags, "--pause-after", "40"])
    load.wait_line(lambda line: line == "paused", what="40 commits")
    reply = ask(lazy, "power-cut")
    assert load.proc.pid in [entry["pid"] for entry in reply["killed"]], reply
    printed = [int(line) for line in load.finish() if line.isdigit()]
    assert printed[-1] == 40

    missing = restart_and_check(env, printed, flags)
    assert not missing, f"commits that returned but are gone: {missing[:20]}"
