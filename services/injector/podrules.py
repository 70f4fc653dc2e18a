"""The Pod validation rules of the Kubernetes API server that an injection can break.

The webhook's ``failurePolicy: Ignore`` covers a webhook that cannot be reached,
not a patch that makes the pod invalid: the API server then refuses the pod
itself. So before answering, the injector checks the pod it would produce
against the rules below and refuses the injection (admitting the pod as it
came) when the result breaks one that the pod as it came did not:

* container names are unique across ``initContainers`` and ``containers``;
* volume names are unique;
* every ``volumeMount`` names a volume of the pod;
* within one container, no two mounts share a ``mountPath``;
* ``mountPropagation: Bidirectional`` only in a privileged container;
* ``hostPID: true`` and ``shareProcessNamespace: true`` not together;
* within one container, no two ``env`` entries share a name (the API server
  accepts that with a warning, but which value wins is then unclear).

Entries that are not objects are skipped here: the mutation refuses those
shapes before this runs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Json = dict[str, Any]


def _objects(value: Any) -> list[Json]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _twice(values: list[Any]) -> list[Any]:
    """Values that occur more than once, in order of first appearance."""
    counts = Counter(values)
    seen: list[Any] = []
    for value in values:
        if counts[value] > 1 and value not in seen:
            seen.append(value)
    return seen


def problems(spec: Any) -> list[str]:
    """What the API server would refuse (or warn about) in this pod spec."""
    if not isinstance(spec, dict):
        return []
    out: list[str] = []
    containers = _objects(spec.get("initContainers")) + _objects(spec.get("containers"))
    for name in _twice([c.get("name") for c in containers]):
        out.append(f"two containers are named {name!r}")
    volumes = [v.get("name") for v in _objects(spec.get("volumes"))]
    for name in _twice(volumes):
        out.append(f"two volumes are named {name!r}")
    if spec.get("hostPID") is True and spec.get("shareProcessNamespace") is True:
        out.append("hostPID and shareProcessNamespace are both true")
    have = set(volumes)
    for container in containers:
        name = container.get("name")
        mounts = _objects(container.get("volumeMounts"))
        for mount in mounts:
            if mount.get("name") not in have:
                out.append(
                    f"container {name!r} mounts volume {mount.get('name')!r}, "
                    "which the pod does not have"
                )
        for path in _twice([m.get("mountPath") for m in mounts]):
            out.append(f"container {name!r} has two mounts at {path!r}")
        security = container.get("securityContext")
        privileged = isinstance(security, dict) and security.get("privileged") is True
        if not privileged and any(m.get("mountPropagation") == "Bidirectional" for m in mounts):
            out.append(f"container {name!r} has a Bidirectional mount but is not privileged")
        for env in _twice([e.get("name") for e in _objects(container.get("env"))]):
            out.append(f"container {name!r} sets env {env!r} twice")
    return out
