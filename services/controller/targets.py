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

from chaosbus import registry
from chaosbus.experiments.spec import PodSelector


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


def _sidecar(entry: dict[str, Any], now: float) -> Sidecar | None:
    """One registry entry, or None if it is unusable (written by a buggy or hostile
    client) or lost so long ago that the pod is simply gone."""
    namespace, name = entry.get("namespace"), entry.get("name")
    labels = entry.get("labels") or {}
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        return None
    if registry.forgotten(entry, now):
        return None
    return Sidecar(namespace, name, labels, bool(entry["lost"]))


async def registered(nc: Client, log: Any = None) -> dict[str, Sidecar]:
    """Every usable registry entry by pod ref; unusable ones are logged and skipped."""
    now = time.time()
    out: dict[str, Sidecar] = {}
    for entry in await registry.entries(nc):
        sidecar = _sidecar(entry, now)
        if sidecar is None:
            if log is not None and not registry.forgotten(entry, now):
                log.warning("registry_entry_unusable", pod=str(entry.get("pod"))[:200])
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
