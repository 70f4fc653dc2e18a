"""A folder of ConfigMap (and Namespace) YAML files, watched like an API server.

For local runs and the demo: the same events the kubernetes source gives, from
files that may each hold several YAML documents. The folder is polled; each
change yields a RESET with the complete, freshly parsed set, which is exact and
cheap for the handful of files such a folder holds.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chaosbus.labels import parse as parse_selector
from chaosbus.yamlfast import safe_load_all

POLL_INTERVAL = 0.025  # a stat per file per tick: cheap for a folder of ConfigMaps
_LAST_GOOD: dict[Path, list[Any]] = {}
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
            docs = safe_load_all(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            # Mid-edit or broken: what the file last said stays in force.
            docs = _LAST_GOOD.get(path, [])
            log.warning(
                "source_file_unreadable", file=str(path), error=str(exc), kept_documents=len(docs)
            )
        else:
            _LAST_GOOD[path] = copy.deepcopy(docs)
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
    selector = parse_selector(label_selector or "")
    wanted = _KINDS[kind]
    seen: tuple | None = None
    last: list[dict[str, Any]] | None = None
    while True:
        current = _fingerprint(folder)
        if current != seen:
            seen = current
            objects = [
                o
                for o in _parsed(folder, current, default_namespace, log)
                if o.get("kind") == wanted
                and (namespace is None or o["metadata"].get("namespace") == namespace)
                and selector.matches(o["metadata"].get("labels"))
            ]
            # An edit to a template says nothing new to the configs' stream: stay quiet.
            if objects != last:
                last = objects
                yield WatchEvent("RESET", objects)
        await asyncio.sleep(interval)


# The folder parsed once per change, shared by the streams that watch it.
_PARSED: dict[Path, tuple[tuple, list[dict[str, Any]]]] = {}


def _parsed(folder: Path, fingerprint: tuple, default_namespace: str, log: Any) -> list[dict]:
    cached = _PARSED.get(folder)
    if cached is None or cached[0] != fingerprint:
        cached = (fingerprint, load_objects(folder, default_namespace, log))
        _PARSED[folder] = cached
    return copy.deepcopy(cached[1])
