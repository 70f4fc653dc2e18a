"""Would the injected parts make a pod fail Pod Security admission?

Kubernetes' Pod Security admission runs after the mutating webhooks and refuses
a pod that breaks the level its namespace enforces (the namespace label
``pod-security.kubernetes.io/enforce``: ``privileged``, ``baseline`` or
``restricted``). A pod the injector gave a privileged sidecar in a ``baseline``
namespace is then refused outright, although the webhook's failurePolicy is
Ignore: so the injector checks the containers and volumes it would add against
the enforced level first, and skips the injection when they break it.

Only what the injection adds is checked (the template's containers, init
containers and volumes; pod-wide settings the pod already has count, e.g. its
``runAsNonRoot``): the app's own containers pass or fail the same with or
without the sidecar. The rules are those of the current Pod Security Standards;
an ``enforce-version`` pinned to an older release, exemptions, and a cluster
default level set in the API server's admission configuration (for namespaces
without the label) are not known here.
"""

from __future__ import annotations

from typing import Any

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PRIVILEGED = "privileged"
BASELINE = "baseline"
RESTRICTED = "restricted"

# Capabilities the baseline level lets a container add.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
BASELINE_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)

Json = dict[str, Any]


def enforced_level(labels: Any) -> str:
    """``baseline`` or ``restricted`` when the namespace enforces one, else "".

    As Pod Security admission does: the label's value is matched exactly, and
    one it cannot parse (``Baseline``, a typo) enforces ``restricted``.
    """
    if not hasattr(labels, "get") or ENFORCE_LABEL not in labels:
        return ""
    value = labels.get(ENFORCE_LABEL)
    if value == PRIVILEGED:
        return ""
    return value if value in (BASELINE, RESTRICTED) else RESTRICTED


def _map(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[Json]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def violations(level: str, injected: Json, pod_spec: Any) -> list[str]:
    """How the rendering's containers and volumes break ``level`` in this pod."""
    if level not in (BASELINE, RESTRICTED):
        return []
    pod_context = _map(_map(pod_spec).get("securityContext"))
    out: list[str] = []
    containers = _objects(injected.get("initContainers")) + _objects(injected.get("containers"))
    for container in containers:
        out += _container(level, container, pod_context)
    for volume in _objects(injected.get("volumes")):
        kinds = [k for k in volume if k != "name"]
        if "hostPath" in kinds:
            out.append(f"volume {volume.get('name')!r} is a hostPath volume")
        elif level == RESTRICTED and not set(kinds) <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume.get('name')!r} is of a type {level} does not allow")
    return out


def _container(level: str, container: Json, pod_context: Json) -> list[str]:
    name = container.get("name")
    context = _map(container.get("securityContext"))
    out: list[str] = []

    def breaks(what: str) -> None:
        out.append(f"container {name!r} {what}")

    if context.get("privileged") is True:
        breaks("is privileged")
    if _map(context.get("windowsOptions")).get("hostProcess") is True:
        breaks("is a Windows host process")
    added = [c for c in _map(context.get("capabilities")).get("add") or [] if isinstance(c, str)]
    allowed = BASELINE_CAPABILITIES if level == BASELINE else {"NET_BIND_SERVICE"}
    extra = sorted(set(added) - allowed)
    if extra:
        breaks(f"adds capabilities {', '.join(extra)}")
    if any(_map(p).get("hostPort") not in (None, 0) for p in container.get("ports") or []):
        breaks("uses a host port")
    if context.get("procMount") not in (None, "Default"):
        breaks("sets procMount")
    selinux = _map(context.get("seLinuxOptions"))
    if (
        selinux.get("type", "") not in BASELINE_SELINUX_TYPES
        or selinux.get("user")
        or selinux.get("role")
    ):
        breaks("sets SELinux options")
    seccomp = _map(context.get("seccompProfile")).get("type") or _map(
        pod_context.get("seccompProfile")
    ).get("type")
    if seccomp == "Unconfined":
        breaks("runs without seccomp")
    if level == BASELINE:
        return out

    if context.get("allowPrivilegeEscalation") is not False:
        breaks("does not set allowPrivilegeEscalation: false")
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if non_root is not True:
        breaks("does not set runAsNonRoot: true")
    if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
        breaks("runs as user 0")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        breaks("sets no RuntimeDefault or Localhost seccomp profile")
    dropped = _map(context.get("capabilities")).get("drop") or []
    if "ALL" not in dropped:
        breaks("does not drop ALL capabilities")
    return out
