"""Lazy mode's actions through chaosctl, against a real nats-server and a real
sidecar started without -lazy, which must refuse every action and say why; and
chaosctl's command line, whose mistakes are told before anything is sent. The
command parser and chaosctl's output are tested in tests/unit/test_chaosctl_lazy.py;
what a lazy sidecar does with the actions is tested with the sidecar itself.
"""

from __future__ import annotations

import json
import time

import pytest

from chaosbus.protocol import LAZY_OPS
from conftest import chaosctl, free_port, wait_for

LAZY_OFF = "lazy mode is off"

# --- chaosctl against a real sidecar that is not in lazy mode ---------------------------
#
# These need the sidecar's answer {"ok": False, "error": "lazy mode is off: start chaosfs
# with -lazy"} for every lazy op (services/chaosfs/control.py).

VERB_ARGS = {
    "report-unsynced": [],
    "lose-unsynced": ["--metadata"],
    "torn-write": ["--seed", "7", "--align", "4KiB"],
    "power-cut": ["--signal", "TERM"],
}


@pytest.mark.parametrize("verb", LAZY_OPS)
def test_each_action_on_one_pod_is_refused_when_lazy_mode_is_off(sidecar, verb):
    (sidecar.mountpoint / "kept").write_bytes(b"data")
    done = sidecar.ctl("fault", verb, "--pod", sidecar.pod, "--path", "**", *VERB_ARGS[verb])
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip() == (
        f"chaosctl: {sidecar.pod} refused: lazy mode is off: start chaosfs with -lazy"
    )
    assert done.stdout == ""
    # Refused means untouched: no process killed, no data lost.
    assert sidecar.proc.poll() is None
    assert (sidecar.mountpoint / "kept").read_bytes() == b"data"
    # The bus gives the same answer to a request of its own.
    reply = sidecar.request({"op": verb, "actor": "test"})
    assert reply["ok"] is False and reply["error"].startswith(LAZY_OFF)


def registered(url: str, pods: set[str]) -> bool:
    done = chaosctl(url, "--json", "sidecars")
    return (
        done.returncode == 0
        and {e["pod"] for e in json.loads(done.stdout) if not e["lost"]} >= pods
    )


@pytest.mark.parametrize("verb", LAZY_OPS)
def test_each_action_on_the_fleet_names_every_refusal(make_sidecar, nats_server, verb):
    url = nats_server.url
    a = make_sidecar("a/db-0", env={"POD_LABELS": "app=db"})
    b = make_sidecar("b/db-0", env={"POD_LABELS": "app=db"})
    make_sidecar("a/web-0", env={"POD_LABELS": "app=web"})
    wait_for(lambda: registered(url, {"a/db-0", "b/db-0", "a/web-0"}), what="3 sidecars")

    done = chaosctl(url, "fault", verb, "--fleet", "--selector", "app=db", *VERB_ARGS[verb])
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[0] == "applied on 0 of 2 sidecars"
    assert sorted(lines[1:]) == [
        f"failed on {p}: lazy mode is off: start chaosfs with -lazy" for p in ("a/db-0", "b/db-0")
    ]

    done = chaosctl(
        url,
        "--json",
        "fault",
        verb,
        "--fleet",
        "--namespace",
        "a",
        "--pods",
        "db-*",
        *VERB_ARGS[verb],
    )
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["acked"] == [] and data["missing"] == [] and data.get("results", {}) == {}
    assert [e["pod"] for e in data["errors"]] == ["a/db-0"]
    assert data["errors"][0]["error"].startswith(LAZY_OFF)
    assert a.proc.poll() is None and b.proc.poll() is None


def test_an_action_nobody_can_receive_exits_3(nats_server):
    done = chaosctl(nats_server.url, "--timeout", "1s", "fault", "lose-unsynced", "--pod", "x/y")
    assert done.returncode == 3
    assert done.stderr.strip() == "chaosctl: no sidecar answers for x/y"
    done = chaosctl(
        nats_server.url, "--timeout", "1s", "fault", "power-cut", "--fleet", "--namespace", "none"
    )
    assert done.returncode == 3
    assert done.stdout.splitlines()[0] == "applied on 0 of 0 sidecars"


def test_no_nats_server_exits_3_quickly():
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = chaosctl(url, "--timeout", "1s", "fault", "report-unsynced", "--pod", "a/b")
    assert done.returncode == 3
    assert done.stderr.startswith(f"chaosctl: cannot reach NATS at {url}")
    assert time.monotonic() - started < 10


# --- the command line -------------------------------------------------------------------

USAGE = [
    (["report-unsynced"], "chaosctl: fault report-unsynced needs --pod NAMESPACE/NAME or --fleet"),
    (["power-cut", "--signal", "KILL"], "chaosctl: fault power-cut needs --pod"),
    (["lose-unsynced", "--pod", "a/b", "--fleet"], "takes --pod or --fleet, not both"),
    (
        ["torn-write", "--pod", "a/b", "--seed", "1", "--keep", "10"],
        "chaosctl: torn-write takes --seed or --keep, not both",
    ),
    (["torn-write", "--fleet"], "chaosctl: torn-write needs --seed S (a random cut), --keep"),
    (["torn-write", "--pod", "a/b", "--keep", "1", "--align", "3"], "align must be a power of two"),
    (["torn-write", "--pod", "a/b", "--seed", "1", "--align", "2MiB"], "from 1 to 1048576"),
    (["torn-write", "--pod", "a/b", "--seed", "x" * 300], "seed string must be 1-256"),
    (["power-cut", "--pod", "a/b", "--signal", "NOPE"], "signal must be a name like KILL"),
    (["power-cut", "--pod", "a/b", "--signal", "99"], "a number from 1 to 64, got 99"),
    (["lose-unsynced", "--pod", "a/b", "--path", "a/[b"], "unclosed '['"),
    (["lose-unsynced", "--pod", "ab"], "chaosctl: pod must be NAMESPACE/NAME, got 'ab'"),
    (["report-unsynced", "--pod", "a/b", "--namespace", "a"], "choose sidecars for --fleet only"),
    (["power-cut", "--fleet", "--selector", "app in (x"], "--selector: label selector"),
]


@pytest.mark.parametrize(("args", "message"), USAGE, ids=lambda v: " ".join(v)[:50])
def test_usage_errors_exit_2_with_one_line_before_connecting(args, message):
    # Nothing listens there: the mistake is told without trying to connect.
    done = chaosctl(f"nats://127.0.0.1:{free_port()}", "fault", *args, timeout=10)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""
