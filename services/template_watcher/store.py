"""The template-watcher's output: renderings and namespace asks in JetStream KV,
failures on a subject of their own, and everything in the audit trail."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from nats.aio.client import Client
from nats.js.kv import KeyValue

from chaosbus import codec, desired, registry
from chaosbus.audit import AuditLog
from chaosbus.injection import (
    NAMESPACES_BUCKET,
    RENDER_ERRORS_SUBJECT,
    RENDERINGS_BUCKET,
    Rendering,
)
from chaosbus.kv import contents, open_bucket
from chaosbus.subjects import decode_token, encode_token

from .core import NamespaceValue


class KVStore:
    def __init__(self, nc: Client, audit: AuditLog, log: Any) -> None:
        self.nc = nc
        self.audit = audit
        self.log = log
        self.renderings: KeyValue | None = None
        self.namespaces: KeyValue | None = None

    async def open(self) -> tuple[dict[str, Rendering], dict[str, NamespaceValue]]:
        """Open (or create) the buckets and return what they already hold."""
        self.renderings = await open_bucket(self.nc, RENDERINGS_BUCKET)
        self.namespaces = await open_bucket(self.nc, NAMESPACES_BUCKET)
        # The fleet's buckets too: with locked-down NATS, sidecars and chaosctl may
        # use them but not create them, and this service runs first and always.
        await open_bucket(self.nc, desired.BUCKET)
        await open_bucket(self.nc, registry.BUCKET)
        renderings: dict[str, Rendering] = {}
        for key, value in (await contents(self.renderings)).items():
            try:
                renderings[key] = Rendering.from_wire(codec.decode(value, limit=1 << 24))
            except (ValueError, KeyError) as exc:
                self.log.warning("stored_rendering_unreadable", key=key, error=str(exc))
        namespaces = {}
        for key, value in (await contents(self.namespaces)).items():
            with contextlib.suppress(ValueError, KeyError):
                doc = codec.decode(value, limit=1 << 24)
                # Values written before labels were mirrored have none.
                namespaces[decode_token(key)] = {
                    "annotations": doc["annotations"],
                    "labels": doc.get("labels") or {},
                }
        return renderings, namespaces

    async def put_rendering(self, key: str, rendering: Rendering) -> None:
        assert self.renderings is not None
        await self.renderings.put(key, codec.encode(rendering.to_wire()))

    async def delete_rendering(self, key: str) -> None:
        assert self.renderings is not None
        await self.renderings.delete(key)

    async def put_namespace(
        self, name: str, annotations: dict[str, str], labels: dict[str, str]
    ) -> None:
        assert self.namespaces is not None
        value = {"annotations": annotations, "labels": labels}
        await self.namespaces.put(encode_token(name), codec.encode(value))

    async def delete_namespace(self, name: str) -> None:
        assert self.namespaces is not None
        await self.namespaces.delete(encode_token(name))

    async def report(self, kind: str, **fields: Any) -> None:
        self.audit.record(kind, **fields)
        if kind == "template.failed":
            event = {"kind": kind, "time": time.time(), **fields}
            try:
                await self.nc.publish(RENDER_ERRORS_SUBJECT, codec.encode(event))
            except Exception as exc:
                self.log.warning("error_event_failed", error=str(exc))
