"""Starting, stopping and restarting chaosfs as a pod would."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, is_mounted, wait_for


def run_chaosfs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "chaosfs"), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ([], "missing required flag -original"),
        (["-original", "/nonexistent-dir", "-mountpoint", "/tmp/x"], "is not a directory"),
        (["-bogus", "1"], "flag provided but not defined: -bogus"),
        (["-original"], "flag needs an argument: -original"),
        (["-original=/tmp", "-mountpoint=/tmp/m", "-heartbeat=soon"], "invalid value 'soon'"),
        (["-original=/tmp", "-mountpoint=/tmp/m", "-pod", "nonamespace"], "NAMESPACE/NAME"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, reason, tmp_path):
    env = {"POD_NAME": "", "POD_NAMESPACE": ""}
    done = run_chaosfs(*args, env=env)
    assert done.returncode == 2
    assert reason in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_pod_identity_is_explained(tmp_path):
    done = run_chaosfs(
        "-original",
        str(tmp_path),
        "-mountpoint",
        str(tmp_path / "m"),
        env={"POD_NAME": "", "POD_NAMESPACE": ""},
    )
    assert done.returncode == 2
    assert "POD_NAMESPACE" in done.stderr


def test_version_and_help():
    done = run_chaosfs("-version")
    assert done.returncode == 0 and done.stdout.startswith("chaosfs ")
    done = run_chaosfs("--help")
    assert done.returncode == 0 and "-mountpoint" in done.stdout


def test_chaos_mesh_style_flags_and_downward_api_env(make_sidecar):
    # Chaos Mesh v0.9's template: single dashes, -flag=value, -addr for its gRPC port,
    # and the pod identity from POD_NAMESPACE/POD_NAME as the downward API sets them.
    sc = make_sidecar(start=False)
    sc.pod = "tikv/tikv-0"
    sc.env = {"POD_NAMESPACE": "tikv", "POD_NAME": "tikv-0"}
    sc.extra = ["-addr=:65533"]
    sc.start()
    status = sc.ctl("status", "--pod", "tikv/tikv-0")
    assert status.returncode == 0, status.stderr
    assert "tikv/tikv-0" in status.stdout
    assert "flag_ignored" in sc.log.read_text()


def test_pidfile_appears_only_once_the_mount_answers(make_sidecar):
    sc = make_sidecar(start=False)
    (sc.original / "f").write_text("x")
    sc.start(wait=False)
    wait_for(sc.pidfile.exists, what="pidfile")
    # The instant the pidfile exists, the mount must already serve the data.
    assert is_mounted(sc.mountpoint)
    assert (sc.mountpoint / "f").read_text() == "x"
    assert int(sc.pidfile.read_text()) == sc.proc.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_removes_pidfile_and_exits_0(make_sidecar, sig):
    sc = make_sidecar()
    assert is_mounted(sc.mountpoint)
    assert sc.stop(sig) == 0
    assert not is_mounted(sc.mountpoint)
    assert not sc.pidfile.exists()


def test_restart_after_kill_9_recovers_stale_mount_and_pidfile(make_sidecar):
    sc = make_sidecar()
    (sc.mountpoint / "kept").write_text("survives")
    old_pid = sc.proc.pid
    sc.stop(signal.SIGKILL)
    # The dead daemon leaves a mount that answers ENOTCONN, and a stale pidfile.
    with pytest.raises(OSError) as info:
        os.stat(sc.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    assert int(sc.pidfile.read_text()) == old_pid
    sc.proc = subprocess.Popen(
        [
            str(BIN / "chaosfs"),
            "-original",
            str(sc.original),
            "-mountpoint",
            str(sc.mountpoint),
            "-pidfile",
            str(sc.pidfile),
            "-pod",
            sc.pod,
            "-nats",
            sc.nats_url,
        ],
        stderr=open(sc.log, "ab"),  # noqa: SIM115
    )
    wait_for(
        lambda: sc.pidfile.exists() and int(sc.pidfile.read_text()) == sc.proc.pid,
        what="new pidfile",
    )
    assert (sc.mountpoint / "kept").read_text() == "survives"
    assert "stale_mount_detached" in sc.log.read_text()


def test_second_chaosfs_on_a_live_mount_refuses(make_sidecar):
    sc = make_sidecar()
    done = run_chaosfs(
        "-original",
        str(sc.original),
        "-mountpoint",
        str(sc.mountpoint),
        "-pidfile",
        str(sc.pidfile),
        "-pod",
        sc.pod,
        "-nats",
        sc.nats_url,
    )
    assert done.returncode == 1
    assert "already" in done.stderr
    assert (sc.mountpoint / ".").exists()  # the first one still serves


def test_mount_serves_while_nats_is_down_then_joins_when_it_comes_up(make_sidecar, nats_server):
    nats_server.stop()
    sc = make_sidecar(bus=False)
    (sc.mountpoint / "f").write_text("no bus needed")
    assert (sc.mountpoint / "f").read_text() == "no bus needed"
    nats_server.start()

    def answers() -> bool:
        return sc.ctl("status", "--pod", sc.pod, "--timeout", "1s").returncode == 0

    wait_for(answers, timeout=15, interval=0.3, what="sidecar to join the bus")


def test_stop_is_prompt_while_nats_is_unreachable(make_sidecar, nats_server):
    nats_server.stop()
    sc = make_sidecar(bus=False)
    started = time.monotonic()
    assert sc.stop() == 0
    assert time.monotonic() - started < 2.5
