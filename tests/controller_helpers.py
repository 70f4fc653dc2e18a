"""Running chaos-controller in tests, and reading what it wrote (status, audit)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import nats

from chaosbus.experiments.store import ExperimentStore, SpecEntry, Status
from conftest import BIN, chaosctl, wait_for


class Controller:
    """A real chaos-controller process; ``kill()`` is kill -9, ``start()`` again restarts it."""

    def __init__(self, url: str, log: Path, identity: str = "ctl-0", *extra: str) -> None:
        self.url = url
        self.log = log
        self.identity = identity
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_leading: bool = True) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            [
                str(BIN / "chaos-controller"),
                "--nats",
                self.url,
                "--identity",
                self.identity,
                "--lease-ttl",
                "2s",
                "--ack-timeout",
                "2s",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
        )
        if wait_leading:
            wait_for(lambda: self.leading_since(offset), what=f"controller to lead ({self.log})")

    def leading_since(self, offset: int = 0) -> bool:
        return '"event": "leading"' in self.log.read_text()[offset:]

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        code = self.proc.returncode
        self.proc = None
        return code


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(url: str, fn: Any) -> Any:
    nc = await nats.connect(url)
    try:
        return await fn(await ExperimentStore.open(nc))
    finally:
        await nc.close()


def put(url: str, manifest: dict[str, Any], **flags: Any) -> str:
    """Apply an experiment the way ``chaosctl apply`` stores it; returns its ref."""
    meta = manifest["metadata"]
    ref = f"{meta.get('namespace', 'default')}/{meta['name']}"

    async def go(store: ExperimentStore) -> None:
        old = await store.get_spec(ref)
        uid = old[0].uid if old else uuid.uuid4().hex
        entry = SpecEntry(manifest, "chaosctl", "tester", 0.0, uid=uid, **flags)
        await store.put_spec(ref, entry)

    run(_with_store(url, go))
    return ref


def set_flags(url: str, ref: str, **flags: Any) -> None:
    async def go(store: ExperimentStore) -> None:
        found = await store.get_spec(ref)
        assert found is not None, ref
        entry, revision = found
        fields = {**entry.__dict__, **flags}
        await store.update_spec(ref, SpecEntry(**fields), revision)

    run(_with_store(url, go))


def status(url: str, ref: str) -> Status | None:
    async def go(store: ExperimentStore) -> Status | None:
        found = await store.get_status(ref)
        return found[0] if found else None

    return run(_with_store(url, go))


def spec_exists(url: str, ref: str) -> bool:
    async def go(store: ExperimentStore) -> bool:
        return await store.get_spec(ref) is not None

    return run(_with_store(url, go))


def wait_status(url: str, ref: str, predicate: Any, timeout: float = 15, what: str = "") -> Status:
    def check() -> Status | None:
        st = status(url, ref)
        return st if st is not None and predicate(st) else None

    return wait_for(check, timeout=timeout, interval=0.05, what=what or f"status of {ref}")


def audit(url: str, experiment: str | None = None, kind: str | None = None) -> list[dict]:
    args = ["audit", "--json"] + (["--kind", kind] if kind else [])
    done = chaosctl(url, *args)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return [e for e in events if experiment is None or e.get("experiment") == experiment]


def io_chaos(name: str, **spec: Any) -> dict[str, Any]:
    """A Chaos Mesh v0.9 IoChaos manifest: errno EIO on every open by default."""
    body: dict[str, Any] = {
        "action": "errno",
        "errno": "5",
        "mode": "all",
        "layer": "fs",
        "percent": "100",
        "path": "",
        "methods": ["open"],
        "selector": {"labelSelectors": {"app": "tikv"}},
        **spec,
    }
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "IoChaos",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }
