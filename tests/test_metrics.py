"""Prometheus endpoints, where an operator would look."""

from __future__ import annotations

import contextlib
import urllib.request

from conftest import free_port, wait_for


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def value(text: str, name: str) -> float:
    """The sample whose name (with labels) starts the line, e.g. 'x_total{a="b"}'."""
    for line in text.splitlines():
        if line.startswith(name.rstrip()) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_chaosfs_metrics(make_sidecar):
    port = free_port()
    sc = make_sidecar(extra=["-metrics-addr", f"127.0.0.1:{port}"])
    sc.path("f").write_text("x")
    assert sc.request(
        {
            "op": "set",
            "rules": [
                {"id": "r", "action": "errno", "errno": "EIO", "methods": ["read"], "path": "f"}
            ],
        }
    )["ok"]
    sc.request(b"garbage")
    for _ in range(3):
        with contextlib.suppress(OSError):
            sc.path("f").read_text()
    text = scrape(port)
    assert value(text, 'chaosfs_rules{action="errno"}') == 1
    assert value(text, 'chaosfs_faults_fired_total{action="errno",method="read"}') == 3
    assert value(text, 'chaosfs_commands_total{op="set",result="ok"}') == 1
    assert value(text, 'chaosfs_commands_total{op="invalid",result="rejected"}') == 1
    assert value(text, "chaosfs_bus_connected") == 1


def test_template_watcher_metrics(tmp_path, nats_server):
    import shutil
    import subprocess

    from test_template_watcher import SEED

    from conftest import BIN

    folder = tmp_path / "cms"
    folder.mkdir()
    shutil.copy(SEED / "chaosfs-sidecar.yaml", folder)
    shutil.copy(SEED / "tikv-configmap.yaml", folder)
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "chaos-template-watcher"),
            "--source",
            f"dir:{folder}",
            "--namespace",
            "chaos-testing",
            "--nats",
            nats_server.url,
            "--metrics-addr",
            f"127.0.0.1:{port}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:

        def published() -> bool:
            try:
                return value(scrape(port), "chaos_template_renderings ") == 1.0
            except (OSError, AssertionError):
                return False

        wait_for(published, what="one rendering in the metrics")
        text = scrape(port)
        assert value(text, "chaos_template_renderings_published_total") == 1
        assert value(text, "chaos_template_render_errors_total") == 0
    finally:
        proc.terminate()
        proc.wait(10)
