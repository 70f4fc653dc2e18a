"""Which pods get injected, and with which config: Chaos Mesh's rules.

In order, as Chaos Mesh checks them:

1. pods in ``kube-system`` and ``kube-public`` are never touched;
2. a pod whose ``<prefix>/status`` annotation is ``injected`` is done already
   (the config it asks for is still looked up, as ``injected_with``: the API
   server calls the webhook again after later webhooks changed the pod, and a
   container they added needs the sidecar's mounts, see ``mutate.complete``);
3. the config name comes from the pod's ``<prefix>/request`` annotation, else
   from its namespace's ``<prefix>/request-<pod name>`` annotation, else from
   the namespace's ``<prefix>/init-request``; lower-cased, as Chaos Mesh does;
4. the config must exist in the pod's own namespace;
5. the pod must match the config's selector.

A pod created with only ``metadata.generateName`` (every pod a controller
makes) has no name at admission time: the API server generates it after the
mutating webhooks ran. Such a pod cannot be matched by ``request-<pod name>``;
it can still ask by its own annotation or through ``init-request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chaosbus.injection import Rendering

from . import selector
from .mutate import STATUS_INJECTED, status_key

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public"})


class View(Protocol):
    @property
    def ready(self) -> bool: ...

    def rendering(self, namespace: str, name: str) -> Rendering | None: ...

    def namespace_annotations(self, namespace: str) -> Mapping[str, str]: ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Decision:
    rendering: Rendering | None
    reason: str  # why injected (where the request came from) or why skipped
    config: str = ""
    # For a pod already injected: the rendering it asks for, to complete it with.
    injected_with: Rendering | None = None

    @property
    def inject(self) -> bool:
        return self.rendering is not None


def pod_identity(pod: Any) -> tuple[str, str]:
    """(name, how to show it): the name may be unknown, see the module doc."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(meta, dict):
        return "", "<no metadata>"
    name = meta.get("name")
    if isinstance(name, str) and name:
        return name, name
    generate = meta.get("generateName")
    if isinstance(generate, str) and generate:
        return "", f"{generate}<generated>"
    return "", "<unnamed>"


def string_map(value: Any) -> dict[str, str]:
    """Labels or annotations, ignoring whatever is not a string to a string."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def decide(pod: Any, namespace: str, state: View, prefix: str) -> Decision:
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    annotations = string_map(meta.get("annotations"))
    name, _ = pod_identity(pod)

    if not namespace:
        return Decision(None, "the pod's namespace is unknown")
    if namespace in SYSTEM_NAMESPACES:
        return Decision(None, f"namespace {namespace} is never injected")
    if annotations.get(status_key(prefix), "").lower() == STATUS_INJECTED:
        done = f"already injected ({status_key(prefix)}: {STATUS_INJECTED})"
        if not state.ready:
            return Decision(None, done)
        config, _ = requested(annotations, name, state.namespace_annotations(namespace), prefix)
        rendering = state.rendering(namespace, config) if config else None
        if rendering is None:
            return Decision(None, done, config)
        labels = string_map(meta.get("labels"))
        ok, _ = selector.match(rendering.selector, labels, annotations, namespace)
        return Decision(None, done, config, injected_with=rendering if ok else None)
    if not state.ready:
        return Decision(None, "the injector has not loaded its renderings from NATS yet")

    config, source = requested(annotations, name, state.namespace_annotations(namespace), prefix)
    if not config:
        return Decision(None, "no injection requested")
    rendering = state.rendering(namespace, config)
    if rendering is None:
        return Decision(
            None, f"config {config!r} ({source}) does not exist in namespace {namespace}", config
        )
    labels = string_map(meta.get("labels"))
    ok, why = selector.match(rendering.selector, labels, annotations, namespace)
    if not ok:
        return Decision(None, f"the pod does not match the selector of {config!r}: {why}", config)
    return Decision(rendering, f"requested by {source}", config)


def requested(
    pod_annotations: Mapping[str, str],
    pod_name: str,
    namespace_annotations: Mapping[str, str],
    prefix: str,
) -> tuple[str, str]:
    """(config name, where the request came from), or ("", "")."""
    candidates = [(pod_annotations, f"{prefix}/request", "pod annotation")]
    if pod_name:
        candidates.append((namespace_annotations, f"{prefix}/request-{pod_name}", "namespace"))
    candidates.append((namespace_annotations, f"{prefix}/init-request", "namespace"))
    for source, key, where in candidates:
        value = source.get(key, "").strip()
        if value:
            return value.lower(), f"{where} {key}"
    return "", ""
