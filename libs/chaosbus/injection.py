"""Rendered injection configs: what the template-watcher publishes and the
injector applies. This module is the contract between the two.

A rendering is stored in the JetStream KV bucket ``RENDERINGS`` under the key
``<namespace>.<config name>`` (each part escaped into one token), as a msgpack
map. Namespace annotations that ask for injection (Chaos Mesh's
``<prefix>/request-<pod>`` and ``<prefix>/init-request``) are mirrored by the
watcher into the bucket ``NAMESPACES`` under the namespace's name, so that the
injector needs nothing but NATS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .subjects import PREFIX, decode_token, encode_token

RENDERINGS_BUCKET = "RENDERINGS"
NAMESPACES_BUCKET = "NAMESPACES"
RENDER_ERRORS_SUBJECT = f"{PREFIX}.templates.error"
SCHEMA_VERSION = 1

# The fields a rendered template may hold: Chaos Mesh v0.9's five, plus what Chaos
# Mesh's injection configs also carry.
SPEC_FIELDS = (
    "initContainers",
    "containers",
    "volumeMounts",
    "volumes",
    "postStart",
    "env",
    "hostAliases",
    "shareProcessNamespace",
)


def rendering_key(namespace: str, name: str) -> str:
    return f"{encode_token(namespace)}.{encode_token(name)}"


def parse_rendering_key(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition(".")
    return decode_token(namespace), decode_token(name)


@dataclass(frozen=True)
class Rendering:
    """One injection config rendered with its template, ready to inject."""

    namespace: str  # where the injection config lives: pods of this namespace may ask
    name: str  # the config's name, as pods request it
    template: str  # the template ConfigMap's name
    selector: dict[str, Any]  # Chaos Mesh's selector ({"labelSelectors": {...}})
    spec: dict[str, Any]  # SPEC_FIELDS, validated
    source: str = ""  # "<namespace>/<configmap name>" the config came from
    revision: str = ""  # resourceVersions the rendering was made from
    rendered_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "namespace": self.namespace,
            "name": self.name,
            "template": self.template,
            "selector": self.selector,
            "spec": self.spec,
            "source": self.source,
            "revision": self.revision,
            "rendered_at": self.rendered_at,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Rendering:
        if data.get("v") != SCHEMA_VERSION:
            raise ValueError(f"unsupported rendering schema {data.get('v')!r}")
        return cls(
            namespace=data["namespace"],
            name=data["name"],
            template=data["template"],
            selector=data.get("selector") or {},
            spec=data["spec"],
            source=data.get("source", ""),
            revision=data.get("revision", ""),
            rendered_at=data.get("rendered_at", 0.0),
        )
