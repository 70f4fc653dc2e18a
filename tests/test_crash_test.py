"""``chaosctl crash-test`` campaigns against real databases on a real lazy mount.

Each campaign is ten power cuts on one chaosfs -lazy sidecar, with the programs of
test_crash_test_apps.py as workload, restart and check: SQLite in WAL mode (the
Python module over Debian's libsqlite3) and Debian's redis-server with its
append-only file. What a database promises is what the table must show:
SQLite with synchronous FULL and Redis with appendfsync always lose nothing
acknowledged; SQLite with synchronous OFF loses, and the table says so; Redis
with appendfsync everysec loses only what it acknowledged within the window its
documentation gives (one second, two at worst). One cut is replayed by its seed
and must leave exactly what the campaign's cut left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Sidecar, free_port

APPS = Path(__file__).resolve().parent / "test_crash_test_apps.py"
APP = f"{sys.executable} {APPS}"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
CAMPAIGN_TIMEOUT = 240  # seconds for ten cuts, far more than they take


def need_debian(package: str, program: str) -> str:
    """The program, installed from Debian if missing; the test is skipped, saying
    why, if that cannot be done (no network, no root)."""
    found = shutil.which(program)
    if found is None:
        for step in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", package]):  # fmt: skip
            try:
                subprocess.run(step, capture_output=True, timeout=300, check=False, env=APT_ENV)
            except (OSError, subprocess.TimeoutExpired):
                break
        found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is missing and apt-get could not install Debian's {package}")
    return found


def crash_test(sc: Sidecar, *flags: str, by_mount: bool = False) -> tuple[int, dict[str, Any], str]:
    """Run a campaign; (exit code, its --json report, its progress lines). The pod is
    named, or found in the registry by its mount point."""
    where = ["--mount", str(sc.mountpoint)] if by_mount else ["--pod", sc.pod]
    done = sc.ctl("crash-test", *where, *flags, "--json", timeout=CAMPAIGN_TIMEOUT)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def assert_seeds_printed(report: dict[str, Any], progress: str) -> None:
    seeds = [row["seed"] for row in report["cuts"]]
    assert len(set(seeds)) == len(seeds) == report["totals"]["cuts"]
    for seed in seeds:
        assert f"seed {seed} " in progress, progress


def clean(totals: dict[str, Any]) -> None:
    for name in ("failed_restarts", "corruption_reports", "survivors", "errors"):
        assert totals[name] == 0, (name, totals)


@pytest.fixture
def lazy(make_sidecar) -> Sidecar:
    return make_sidecar(pod="default/db-0", extra=["-lazy"])


def test_sqlite_full_loses_nothing_and_a_cut_replays_exactly(lazy):
    """Cuts at a random fsync of the write-ahead log, before or after it. Each cut's
    database is its own (named by the cut's seed), so a replay starts where the
    campaign's cut started, and must leave the very same rows."""
    mnt = lazy.mountpoint
    flags = [
        "--workload", f"{APP} sqlite-load {mnt}/db-$CRASH_TEST_SEED.sqlite --synchronous FULL"
                      " --fresh --tag $CRASH_TEST_SEED",
        "--restart", "true",
        "--check", f"{APP} sqlite-check '{mnt}/db-*.sqlite'",
        "--at", "op", "--methods", "fsync", "--path", "*-wal", "--ops", "30",
    ]  # fmt: skip
    code, report, progress = crash_test(lazy, *flags, "--cuts", "10", "--seed", "20261206")
    totals = report["totals"]
    assert code == 0, (report, progress)
    assert totals["cuts"] == 10 and totals["lost"] == 0 and totals["missed_triggers"] == 0
    assert totals["acknowledged"] > 0
    clean(totals)
    assert_seeds_printed(report, progress)
    assert {row["trigger"]["when"] for row in report["cuts"]} == {"before", "after"}

    # The replay: the first cut that left a few rows, made again by its seed alone.
    row = next(r for r in report["cuts"] if r["trigger"]["operation"] > 4)
    seed = row["seed"]
    rows_of = [sys.executable, str(APPS), "sqlite-check", f"{mnt}/db-{seed}.sqlite"]
    before = subprocess.run(rows_of, capture_output=True, text=True, timeout=30, check=True)
    assert before.stdout.strip(), "the cut left no row to compare"
    code, replay, _ = crash_test(lazy, *flags, "--replay", str(seed))
    assert code == 0, replay
    (again,) = replay["cuts"]
    assert again["seed"] == seed and again["trigger"] == row["trigger"]
    assert again["lost"] == 0
    after = subprocess.run(rows_of, capture_output=True, text=True, timeout=30, check=True)
    assert after.stdout == before.stdout  # the same rows survive, to the last one


def test_sqlite_synchronous_off_losses_are_reported(lazy):
    mnt = lazy.mountpoint
    code, report, progress = crash_test(
        lazy,
        "--workload", f"{APP} sqlite-load {mnt}/off.sqlite --synchronous OFF",
        "--restart", "true",
        "--check", f"{APP} sqlite-check {mnt}/off.sqlite",
        "--cuts", "10", "--earliest", "200ms", "--latest", "600ms",
        by_mount=True,
    )  # fmt: skip
    totals = report["totals"]
    assert code == 1 and report["ok"] is False and report["pod"] == lazy.pod
    assert totals["cuts"] == 10 and totals["failed_restarts"] == 0 and totals["survivors"] == 0
    assert totals["lost"] > 0 and totals["lost_beyond_window"] == totals["lost"], totals
    assert_seeds_printed(report, progress)
    lossy = [row for row in report["cuts"] if row["lost"]]
    assert lossy and all(row["lost_records"] for row in lossy)


@pytest.fixture
def redis(lazy, tmp_path):
    """Redis on the lazy mount, started by the campaign's restart command; its
    processes are cut dead at the end, as the campaign's cuts did."""
    need_debian("redis-server", "redis-server")
    port = free_port()
    yield port, f"{APP} redis-start {lazy.mountpoint}/redis {port} {{}} {tmp_path}/redis.log"
    lazy.ctl("fault", "power-cut", "--pod", lazy.pod)


def redis_flags(port: int, restart: str, policy: str) -> list[str]:
    return [
        "--workload", f"{APP} redis-load {port}",
        "--restart", restart.format(policy),
        "--check", f"{APP} redis-check {port}",
        "--cuts", "10", "--earliest", "100ms", "--latest", "800ms",
    ]  # fmt: skip


def test_redis_appendfsync_always_loses_nothing(lazy, redis):
    port, restart = redis
    code, report, progress = crash_test(lazy, *redis_flags(port, restart, "always"))
    totals = report["totals"]
    assert code == 0, (report, progress)
    assert totals["cuts"] == 10 and totals["lost"] == 0 and totals["acknowledged"] > 0
    clean(totals)
    assert_seeds_printed(report, progress)
    assert all(row["killed"] >= 1 for row in report["cuts"])  # redis-server, every time


def test_redis_appendfsync_everysec_loses_only_its_window(lazy, redis):
    port, restart = redis
    flags = redis_flags(port, restart, "everysec")
    code, report, progress = crash_test(lazy, *flags, "--loss-window", "2s")
    totals = report["totals"]
    assert code == 0, (report, progress)
    clean(totals)
    assert_seeds_printed(report, progress)
    # It does lose (the window is real), and never a record older than two seconds.
    assert totals["lost"] > 0 and totals["lost_beyond_window"] == 0, totals
    assert totals["max_lost_window"] <= 2.0


def test_a_process_that_survives_a_cut_fails_the_campaign(lazy):
    """SIGSTOP stops the workload instead of killing it: the cut did not take, and the
    campaign says so and exits 1, whatever else it found."""
    mnt = lazy.mountpoint
    code, report, _ = crash_test(
        lazy,
        "--workload", f"{APP} sqlite-load {mnt}/stop.sqlite --synchronous FULL",
        "--restart", "true",
        "--check", f"{APP} sqlite-check {mnt}/stop.sqlite",
        "--cuts", "1", "--signal", "STOP", "--earliest", "0", "--latest", "100ms",
    )  # fmt: skip
    assert code == 1 and report["ok"] is False
    (row,) = report["cuts"]
    assert row["survivors"] and report["totals"]["survivors"] == len(row["survivors"])
    assert row["killed"] == 0
