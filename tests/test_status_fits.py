"""A sidecar holding a thousand long rules still answers ``status``: on a server with
NATS's default 1 MB payload limit the answer is cut to fit and says how many rules
it left out (it used to be silence: "no sidecar answered")."""

from __future__ import annotations

import json

import pytest

from conftest import NatsServer, Sidecar, chaosctl


@pytest.fixture
def small_payload_sidecar(tmp_path):
    server = NatsServer(tmp_path)
    server.config.write_text(server.config.read_text().replace("16MB", "1MB"))
    server.start()
    sidecar = Sidecar(tmp_path / "pod", server.url, "default/app-0", [], {})
    try:
        sidecar.start()
        yield sidecar
    finally:
        sidecar.cleanup()
        server.stop()


def test_a_thousand_long_rules_still_give_a_status_answer(small_payload_sidecar):
    sidecar = small_payload_sidecar
    long_dir = "d" * 200
    batch: list[dict] = []
    for i in range(1000):
        path = "/".join([long_dir] * 5) + f"/f{i}"  # ~1,010 characters: valid, and long
        batch.append({"id": f"long-{i}", "action": "errno", "errno": "EIO", "path": path})
        if len(batch) == 50 or i == 999:
            reply = sidecar.request({"op": "set", "rules": batch})
            assert reply["ok"], reply
            batch = []
    done = chaosctl(sidecar.nats_url, "--json", "status", "--pod", sidecar.pod)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["rules_omitted"] > 0
    assert len(reply["rules"]) + reply["rules_omitted"] == 1000
    text = chaosctl(sidecar.nats_url, "status", "--pod", sidecar.pod)
    assert text.returncode == 0, text.stderr
    assert "rules:      1000" in text.stdout and "more rules not shown" in text.stdout
