"""A folder of ConfigMap (and Namespace) YAML files, watched like an API server.

For local runs and the demo: the same events the kubernetes source gives, from
files that may each hold several YAML documents. The folder is polled; each
change yields a RESET with the complete, freshly parsed set, which is exact and
cheap for the handful of files such a folder holds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chaosbus.labels import Selector

POLL_INTERVAL = 0.05
_KINDS = {"configmaps": "ConfigMap", "namespaces": "Namespace"}


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "RESET", "ADDED", "MODIFIED", "DELETED"
    objects: list[dict[str, Any]]


def _fingerprint(folder: Path) -> tuple:
    entries = []
    try:
        for entry in os.scandir(folder):
            if entry.name.endswith((".yaml", ".yml")) and entry.is_file():
                st = entry.stat()
                entries.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
    except FileNotFoundError:
        return ()
    return tuple(sorted(entries))


def load_objects(folder: Path, default_namespace: str, log: Any) -> list[dict[str, Any]]:
    """Every object in the folder's YAML files; a broken file is logged and skipped."""
    objects: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            log.warning("source_file_unreadable", file=str(path), error=str(exc))
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
                log.warning(
                    "source_document_skipped",
                    file=str(path),
                    document=index,
                    reason="not a Kubernetes object",
                )
                continue
            meta = doc["metadata"]
            if doc.get("kind") == "ConfigMap":
                meta.setdefault("namespace", default_namespace)
            # A stand-in resourceVersion: the file's change time makes edits visible.
            meta.setdefault("resourceVersion", str(path.stat().st_mtime_ns))
            objects.append(doc)
    return objects


async def watch_dir(
    folder: Path,
    kind: str,
    *,
    namespace: str | None,
    label_selector: str | None,
    default_namespace: str,
    log: Any,
    interval: float = POLL_INTERVAL,
) -> AsyncIterator[WatchEvent]:
    selector = Selector(label_selector)
    wanted = _KINDS[kind]
    seen: tuple | None = None
    while True:
        current = _fingerprint(folder)
        if current != seen:
            seen = current
            objects = [
                o
                for o in load_objects(folder, default_namespace, log)
                if o.get("kind") == wanted
                and (namespace is None or o["metadata"].get("namespace") == namespace)
                and selector.matches(o["metadata"].get("labels"))
            ]
            yield WatchEvent("RESET", objects)
        await asyncio.sleep(interval)
