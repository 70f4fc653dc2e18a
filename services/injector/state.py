"""What the injector knows: renderings and namespace annotations, in memory.

Only the injector's asyncio loop touches this (the NATS watch writes, the HTTP
handlers read), so plain dicts need no lock. A whole bucket is swapped in one
assignment once a complete snapshot has been read, so a handler never sees a
half-loaded bucket.
"""

from __future__ import annotations

from collections.abc import Mapping

from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET, Rendering

EMPTY: Mapping[str, str] = {}


class State:
    def __init__(self) -> None:
        self.renderings: dict[tuple[str, str], Rendering] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        # Buckets whose first complete snapshot has been read.
        self.loaded: set[str] = set()

    @property
    def ready(self) -> bool:
        return {RENDERINGS_BUCKET, NAMESPACES_BUCKET} <= self.loaded

    def rendering(self, namespace: str, name: str) -> Rendering | None:
        return self.renderings.get((namespace, name))

    def namespace_annotations(self, namespace: str) -> Mapping[str, str]:
        return self.namespaces.get(namespace, EMPTY)

    def summary(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "loaded": sorted(self.loaded),
            "renderings": len(self.renderings),
            "namespaces": len(self.namespaces),
        }
