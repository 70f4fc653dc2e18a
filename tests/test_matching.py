"""chaosctl refuses NaN and infinities before it connects: the real command, with no
NATS server listening at the address it is given. The matching itself is tested in
tests/unit/test_matching.py."""

from __future__ import annotations

import subprocess

import pytest

from conftest import BIN, free_port


@pytest.mark.parametrize(
    "flags",
    [
        ["--action", "errno", "--errno", "EIO", "--expires-at", "nan"],
        ["--action", "errno", "--errno", "EIO", "--ttl", "nan"],
        ["--action", "errno", "--errno", "EIO", "--percent", "nan"],
        ["--action", "latency", "--delay", "inf"],
    ],
)
def test_chaosctl_refuses_nan_before_connecting(flags):
    """No NATS listens at the address given: exit 2, not 3, shows nothing was tried."""
    url = f"nats://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(BIN / "chaosctl"), "--nats", url, "fault", "set", "--pod", "a/b", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "finite" in done.stderr
