"""Sizes as Kubernetes writes them (128Mi, 64k, 1G, 1e6) and as chaosbus always took
them (64KiB, 1MB), everywhere a size is read: chaosfs's -lazy-max-bytes and its
environment variable, chaosctl's rule flags, and the services' --audit-max-bytes."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaosbus.sizes import MAX_SIZE, parse_size
from conftest import BIN, Sidecar, chaosctl

KI, MI, GI = 1 << 10, 1 << 20, 1 << 30

ACCEPTED = {
    "0": 0,
    "512": 512,
    "+512": 512,
    "512B": 512,
    # Kubernetes binary suffixes
    "1Ki": KI,
    "128Mi": 128 * MI,
    "2Gi": 2 * GI,
    "1Ti": 1 << 40,
    "1Pi": 1 << 50,
    "1Ei": 1 << 60,
    # Kubernetes decimal suffixes: k is 1000, as in Kubernetes
    "4k": 4000,
    "1M": 10**6,
    "1G": 10**9,
    "1T": 10**12,
    "1P": 10**15,
    "1E": 10**18,
    # Kubernetes exponents and thousandths, when they make whole bytes
    "1e6": 10**6,
    "5E3": 5000,
    "12e+2": 1200,
    "1000e-3": 1,
    "2000m": 2,
    # fractions that are whole bytes
    "1.5Ki": 1536,
    ".5Mi": 512 * KI,
    "2.": 2,
    "0.5k": 500,
    # the spellings chaosbus always took, any case
    "64KiB": 64 * KI,
    "128MiB": 128 * MI,
    "1gib": GI,
    "1TIB": 1 << 40,
    "1KB": 1000,
    "1kB": 1000,
    "1mb": 10**6,
    "1GB": 10**9,
    "1 MiB": MI,
    " 4096 ": 4096,
    "7Ei": 7 << 60,
}

REFUSED = {
    "": "invalid size",
    "Mi": "invalid size",
    "-1": "negative",
    "-1Ki": "negative",
    "nan": "invalid size",
    "NaN": "invalid size",
    "inf": "invalid size",
    "-inf": "invalid size",
    "0x10": "invalid size",
    "1,5Ki": "invalid size",
    "1_000": "invalid size",
    "١٢": "invalid size",  # digits, but not ASCII ones
    "0.5": "0.5 bytes, not a whole number",
    "0.1Mi": "104857.6 bytes, not a whole number",
    "64m": "0.064 bytes, not a whole number (m means thousandths",
    "1e-1": "not a whole number",
    "4K": "write k (1000) or Ki (1024)",
    "1g": "write G (1000**3) or Gi (1024**3)",
    "1t": "write T",
    "1p": "write P",
    "1e": "write E",
    "1Kb2": "invalid size",
    "1 Mi B": "invalid size",
    "1Mo": "unknown suffix 'Mo'",
    "1ki": "unknown suffix 'ki'",  # Kubernetes' Ki is case-sensitive; KiB is not
    "8Ei": "out of range",
    "1e19": "out of range",
    "1e999999999": "out of range",
}


@pytest.mark.parametrize(("text", "value"), ACCEPTED.items())
def test_accepted(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "why"), REFUSED.items())
def test_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert why in str(info.value)
    assert repr(text.strip()) in str(info.value) or repr(text) in str(info.value)


SUFFIXES = {
    "": 1,
    "Ki": KI,
    "Mi": MI,
    "Gi": GI,
    "k": 1000,
    "M": 10**6,
    "G": 10**9,
    "KiB": KI,
    "MiB": MI,
    "kB": 1000,
    "MB": 10**6,
}


@given(st.integers(0, 1 << 32), st.sampled_from(sorted(SUFFIXES)))
def test_every_whole_number_with_every_suffix(n: int, suffix: str) -> None:
    assert parse_size(f"{n}{suffix}") == n * SUFFIXES[suffix]


@given(st.integers(0, MAX_SIZE))
def test_plain_numbers_and_exponents_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n
    digits = str(n).rstrip("0") or "0"
    zeros = len(str(n)) - len(digits)
    assert parse_size(f"{digits}e{zeros}") == n


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
