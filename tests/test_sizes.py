"""Sizes as Kubernetes writes them, everywhere a size is read: chaosfs's
-lazy-max-bytes and its environment variable, chaosctl's rule flags, and the
services' --audit-max-bytes. The parser itself is tested in tests/unit/test_sizes.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from conftest import BIN, Sidecar, chaosctl

MI = 1 << 20

# --- where sizes are read ---------------------------------------------------------------


def lazy_max_bytes(sc: Sidecar) -> int:
    reply = sc.request({"op": "status"})
    assert reply["ok"], reply
    return reply["lazy"]["max_bytes"]


def test_chaosfs_takes_kubernetes_quantities_in_its_flag_and_environment(make_sidecar):
    flag = make_sidecar("default/flag-0", extra=["-lazy", "-lazy-max-bytes", "128Mi"])
    assert lazy_max_bytes(flag) == 128 * MI
    env = make_sidecar("default/env-0", env={"CHAOSFS_LAZY": "1", "CHAOSFS_LAZY_MAX_BYTES": "1G"})
    assert lazy_max_bytes(env) == 10**9


def test_chaosfs_refuses_a_size_kubernetes_reads_otherwise(make_sidecar):
    sc = make_sidecar("default/bad-0", extra=["-lazy", "-lazy-max-bytes", "64m"], start=False)
    sc.start(wait=False)
    assert sc.proc is not None
    code = sc.proc.wait(30)
    sc.proc = None
    assert code == 2
    err = sc.log.read_text()
    assert "-lazy-max-bytes: size '64m' is 0.064 bytes" in err
    assert "Traceback" not in err
    assert not sc.pidfile.exists()


def test_chaosctl_quota_in_kubernetes_units_bounds_a_write(sidecar):
    done = sidecar.ctl(
        "--json", "fault", "set", "--pod", sidecar.pod, "--action", "enospc", "--quota", "64k"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rules"][0]["quota"] == 64_000
    fd = os.open(sidecar.path("big"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        written = 0
        with pytest.raises(OSError) as info:
            while written < 200_000:
                written += os.write(fd, b"z" * 10_000)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    # The seventh write is cut short at the quota: 64,000 bytes, where "64k" used to
    # mean 65,536.
    assert written == 64_000
    assert (sidecar.original / "big").stat().st_size == 64_000


def test_chaosctl_refuses_an_ambiguous_size_before_sending_anything(nats_server):
    done = chaosctl(
        nats_server.url, "fault", "set", "--pod", "a/b", "--action", "enospc", "--quota", "4K"
    )
    assert done.returncode == 2
    assert "argument --quota: invalid size '4K'" in done.stderr
    assert "write k (1000) or Ki (1024)" in done.stderr


@pytest.mark.parametrize("service", ["chaos-template-watcher", "chaos-controller"])
def test_services_read_audit_max_bytes_as_kubernetes_quantities(service: str) -> None:
    done = subprocess.run(
        [str(BIN / service), "--audit-max-bytes", "0.5Mi", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [str(BIN / service), "--audit-max-bytes", "1g"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert "argument --audit-max-bytes: invalid size '1g'" in bad.stderr
