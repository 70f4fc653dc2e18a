"""What the injector knows: renderings, namespace annotations and labels, in memory.

Only the injector's asyncio loop touches this (the NATS watch writes, the HTTP
handlers read), so plain dicts need no lock. A whole bucket is swapped in
without an await in between once a complete snapshot has been read, so a
handler never sees a half-loaded bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET, Rendering

EMPTY: Mapping[str, str] = {}


@dataclass(frozen=True)
class NamespaceInfo:
    """One value of the NAMESPACES bucket: the request annotations, and labels
    when the template-watcher mirrors them (older values have none)."""

    annotations: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)


class State:
    def __init__(self) -> None:
        self.renderings: dict[tuple[str, str], Rendering] = {}
        self.namespaces: dict[str, dict[str, str]] = {}  # annotations, by namespace
        # The labels the template-watcher mirrors (Pod Security's enforce level).
        self.labels: dict[str, dict[str, str]] = {}
        # Buckets whose first complete snapshot has been read.
        self.loaded: set[str] = set()

    @property
    def ready(self) -> bool:
        return {RENDERINGS_BUCKET, NAMESPACES_BUCKET} <= self.loaded

    def rendering(self, namespace: str, name: str) -> Rendering | None:
        return self.renderings.get((namespace, name))

    def namespace_annotations(self, namespace: str) -> Mapping[str, str]:
        return self.namespaces.get(namespace, EMPTY)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self.labels.get(namespace, EMPTY)

    def load_namespaces(self, snapshot: Mapping[str, NamespaceInfo]) -> None:
        """Swap both maps in at once (one bucket, one snapshot)."""
        self.namespaces = {name: info.annotations for name, info in snapshot.items()}
        self.labels = {name: info.labels for name, info in snapshot.items() if info.labels}

    def put_namespace(self, name: str, info: NamespaceInfo | None) -> None:
        if info is None:
            self.namespaces.pop(name, None)
            self.labels.pop(name, None)
            return
        self.namespaces[name] = info.annotations
        if info.labels:
            self.labels[name] = info.labels
        else:
            self.labels.pop(name, None)

    def summary(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "loaded": sorted(self.loaded),
            "renderings": len(self.renderings),
            "namespaces": len(self.namespaces),
        }
