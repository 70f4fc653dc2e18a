"""Which pods an experiment may pick from, and which of them have a sidecar that answers.

Without Kubernetes the sidecar registry (JetStream KV ``SIDECARS``) is the only
list of pods there is, so selectors are matched against what each sidecar says of
itself: namespace, name and labels. Selectors that need more (annotations,
fields, phases, nodes) are refused before an experiment gets here.

In a cluster the Kubernetes API says which pods exist and match
(``pods.KubePods``), and the registry says which of them have a live sidecar;
a selected pod without one is recorded as missing rather than skipped, so the
experiment's status shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError

from chaosbus import codec, registry
from chaosbus.experiments.spec import PodSelector
from chaosbus.kv import contents, open_bucket


@dataclass(frozen=True)
class Sidecar:
    namespace: str
    name: str
    labels: dict[str, str]
    lost: bool

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Candidates:
    """Pods an experiment may select (sorted refs) and the state of their sidecars."""

    pods: list[str]
    alive: set[str]  # answer commands: waited for
    lost: set[str]  # registered but silent lately: reported missing, not waited for


class PodSource(Protocol):
    kubernetes: bool  # can resolve selectors that need the Kubernetes API

    async def candidates(self, selector: PodSelector) -> Candidates: ...


def _sidecar(value: bytes, now: float) -> Sidecar | None:
    """One registry entry, or None if it is unreadable (written by a buggy or hostile client)."""
    try:
        entry = codec.decode(value, limit=1 << 20)
        namespace, name = entry.get("namespace"), entry.get("name")
        labels = entry.get("labels") or {}
        if not isinstance(namespace, str) or not isinstance(name, str):
            return None
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            return None
        lost = registry.is_lost(entry, now)
        if lost and now - registry.last_seen(entry) >= registry.FORGET_LOST_AFTER:
            return None  # lost long ago: a pod that is simply gone
        return Sidecar(namespace, name, labels, lost)
    except (codec.DecodeError, TypeError, ValueError):
        return None


async def registered(nc: Client, log: Any = None) -> dict[str, Sidecar]:
    """Every readable registry entry by pod ref; unreadable ones are logged and skipped."""
    try:
        kv = await open_bucket(nc, registry.BUCKET, create=False)
    except BucketNotFoundError:
        return {}
    now = time.time()
    out: dict[str, Sidecar] = {}
    for key, value in (await contents(kv)).items():
        sidecar = _sidecar(value, now)
        if sidecar is None:
            if log is not None:
                log.warning("registry_entry_unreadable", key=key)
            continue
        out[sidecar.ref] = sidecar
    return out


class RegistryPods:
    """Candidates from the sidecar registry alone (no Kubernetes)."""

    kubernetes = False

    def __init__(self, nc: Client, log: Any) -> None:
        self.nc = nc
        self.log = log

    async def candidates(self, selector: PodSelector) -> Candidates:
        sidecars = await registered(self.nc, self.log)
        pods = {
            ref
            for ref, s in sidecars.items()
            if selector.matches_sidecar(s.namespace, s.name, s.labels)
        }
        # Pods named one by one are the user's explicit choice: selected even when no
        # sidecar is registered for them, so that the status shows them missing.
        for namespace, names in selector.pods:
            pods.update(f"{namespace}/{n}" for n in names)
        return _split(sorted(pods), sidecars)


def _split(pods: list[str], sidecars: dict[str, Sidecar]) -> Candidates:
    alive = {p for p in pods if p in sidecars and not sidecars[p].lost}
    lost = {p for p in pods if p in sidecars and sidecars[p].lost}
    return Candidates(pods, alive, lost)


class ClusterPods:
    """Candidates from the Kubernetes API, their sidecars' state from the registry."""

    kubernetes = True

    def __init__(self, nc: Client, kube_pods: Any, log: Any) -> None:
        self.nc = nc
        self.kube_pods = kube_pods
        self.log = log

    async def candidates(self, selector: PodSelector) -> Candidates:
        infos = await self.kube_pods.candidates(selector)
        pods = sorted({f"{p.namespace}/{p.name}" for p in infos})
        return _split(pods, await registered(self.nc, self.log))
