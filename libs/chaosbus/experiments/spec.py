"""Experiment manifests, read and checked into one normalized ``Experiment``. Pure: no I/O.

Three kinds of manifest describe the same thing (which pods, which fault, for how long,
how often):

* Chaos Mesh v0.9 ``IoChaos`` (``chaos-mesh.org/v1alpha1``, actions ``delay``, ``errno``,
  ``mixed``): string fields as Chaos Mesh's Go types had them (``percent: "50"``), a
  regular-expression ``path``, and the ``scheduler.cron`` / ``duration`` pair.
* Chaos Mesh 2.x ``IOChaos`` (same group; actions ``latency``, ``fault``,
  ``attrOverride``, ``mistake``): integer percent, glob ``path`` under ``volumePath``,
  numeric ``errno``, ``attr`` and ``mistake`` blocks. Chaos Mesh 1.x wrote the same
  fields under kind ``IoChaos`` (with ``scheduler``); the action tells them apart.
* chaosbus's own ``FsChaos`` (``chaosbus.io/v1alpha1``): the sidecar's rule vocabulary
  as is, plus lazy-mode one-shot ``steps``.

Each becomes an ``Experiment`` whose ``rules`` are sidecar wire rules that
``chaosbus.rules.FaultRule.from_wire`` accepts, without ids or expiry (the controller
adds those). Every refusal is one line that starts with the field at fault, e.g.
``spec.percent: must be from 0 to 100, got "101"``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from .. import labels as selectors
from ..globs import GlobError, compile_glob
from ..protocol import CommandError, parse_lazy
from ..rules import MAX_DELAY_SECONDS, MAX_RULES, METHOD_SET, FaultRule, RuleError, parse_errno
from .cron import Schedule, parse_go_duration
from .errors import SpecError
from .manifests import (
    check_tree,
    type_name,
)
from .selection import MODES


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


CHAOS_MESH_API = "chaos-mesh.org/v1alpha1"
# Chaos Mesh's API group before it moved to chaos-mesh.org; same fields.
PINGCAP_API = "pingcap.com/v1alpha1"
CHAOSBUS_API = "chaosbus.io/v1alpha1"
FSCHAOS_KIND = "FsChaos"
V09_KIND = "IoChaos"
V2_KIND = "IOChaos"
FLAVOURS = ("v0.9", "2.x", "chaosbus")

MAX_REGEX_LENGTH = 1024
MAX_STEPS = 64
WIRE_VERSION = 1

# Chaos Mesh v0.9 action -> chaosbus rule action.
V09_ACTIONS = {"delay": "latency", "errno": "errno", "mixed": "mixed"}
V2_ACTIONS = ("latency", "fault", "attrOverride", "mistake")

_V09_FIELDS = _names(
    "selector scheduler action mode value duration layer delay errno percent path methods "
    "addr configName"
)
# scheduler and containerName are Chaos Mesh 1.x's, which had these actions under kind
# IoChaos; 2.x moved schedules into a separate Schedule object.
_V2_FIELDS = _names(
    "selector scheduler mode value containerNames containerName action delay errno attr "
    "mistake path methods percent volumePath duration remoteCluster"
)
_FS_FIELDS = frozenset({"mode", "value", "selector", "duration", "schedule", "rules", "steps"})
_SELECTOR_FIELDS = _names(
    "namespaces pods labelSelectors expressionSelectors matchExpressions annotationSelectors "
    "fieldSelectors podPhaseSelectors nodes nodeSelectors"
)
# The sidecar's rule fields an FsChaos rule may use; id and expiry come from the controller.
WIRE_RULE_FIELDS = _names(
    "action errno delay jitter methods path path_regex percent attr filling max_occurrences "
    "max_length short_bytes quota count after seed caller_pid caller_uid caller_comm "
    "dry_run"
)
_CONTROLLER_RULE_FIELDS = {
    "id": "the controller names an experiment's rules",
    "ttl": "the experiment's duration decides when its rules end",
    "expires_at": "the experiment's duration decides when its rules end",
}

# Chaos Mesh 2.x IoMethod names chaosfs has under another name, or cannot fault.
_V2_METHOD_ALIASES = {"setattr": ("chmod", "chown", "truncate", "utimens")}
_V2_METHODS_REFUSED = {
    "forget": "the kernel's forget cannot fail or wait",
    "bmap": "FUSE bmap only exists for block-device file systems",
}
# Chaos Mesh 2.x attrOverride fields -> chaosbus attr fields.
_V2_ATTR = {
    "ino": "ino",
    "size": "size",
    "blocks": "blocks",
    "atime": "atime",
    "mtime": "mtime",
    "ctime": "ctime",
    "kind": "kind",
    "perm": "mode",
    "nlink": "nlink",
    "uid": "uid",
    "gid": "gid",
    "rdev": "rdev",
}
_V2_KINDS = {
    "namedPipe": "fifo",
    "charDevice": "chardev",
    "blockDevice": "blockdev",
    "directory": "dir",
    "regularFile": "file",
    "symlink": "symlink",
    "socket": "socket",
    "tcpSocket": "socket",
    "unixSocket": "socket",
}
_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_WHOLE = re.compile(r"[0-9]{1,18}")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # re2 would print every refused pattern on stderr


def _show(value: Any) -> str:
    """A value as an error message shows it: strings in double quotes, one line, short."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def split_terms(values: tuple[str, ...] | list[str]) -> tuple[set[str], set[str]]:
    """(included, excluded) of Chaos Mesh selector terms: ``x`` includes, ``!x`` excludes."""
    include, exclude = set(), set()
    for value in values:
        if value.startswith("!"):
            exclude.add(value[1:])
        else:
            include.add(value)
    return include, exclude


def _all_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_dns_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL.match(value))


def _is_dns_subdomain(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 253 and bool(_DNS_SUBDOMAIN.match(value))


@dataclass(frozen=True)
class PodSelector:
    """Which pods an experiment may pick from, before its mode picks some of them.

    ``pods`` wins over everything else, as in Chaos Mesh: when it is given, exactly those
    pods are candidates. Otherwise a pod is a candidate when its namespace passes
    ``namespaces`` and its labels match ``labels``, and (with Kubernetes only) its
    annotations, fields, phase and node match the rest.

    ``namespaces`` and ``phases`` are terms as Chaos Mesh read them (it joined them into a
    label selector): ``db`` includes, ``!kube-system`` excludes, and with no including
    term everything not excluded is in; empty means any namespace (any phase).
    """

    namespaces: tuple[str, ...] = ()
    pods: tuple[tuple[str, tuple[str, ...]], ...] = ()  # namespace -> names
    labels: str = ""  # one selector string in the Kubernetes dialect
    annotations: tuple[tuple[str, str], ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    phases: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    node_selectors: tuple[tuple[str, str], ...] = ()

    def needs_kubernetes(self) -> bool:
        """True when only the Kubernetes API can tell which pods match.

        Sidecars register their namespace, name and labels, nothing more; annotations,
        field selectors, phases and nodes are for the Kubernetes API to resolve.
        """
        return bool(
            self.annotations or self.fields or self.phases or self.nodes or self.node_selectors
        )

    def kubernetes_fields(self) -> list[str]:
        """The manifest names of the parts that need Kubernetes, for an error message."""
        names = (
            ("annotationSelectors", self.annotations),
            ("fieldSelectors", self.fields),
            ("podPhaseSelectors", self.phases),
            ("nodes", self.nodes),
            ("nodeSelectors", self.node_selectors),
        )
        return [name for name, value in names if value]

    def matches_sidecar(self, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        """Whether a registered sidecar's pod is a candidate; refuses Kubernetes-only parts."""
        if self.needs_kubernetes():
            raise SpecError(
                f"selector: {', '.join(self.kubernetes_fields())} need the Kubernetes API; "
                "sidecars register only namespace, name and labels"
            )
        if self.pods:
            return any(ns == namespace and name in names for ns, names in self.pods)
        include, exclude = split_terms(self.namespaces)
        if (include and namespace not in include) or namespace in exclude:
            return False
        return _label_selector(self.labels).matches(labels)

    def to_wire(self) -> dict[str, Any]:
        return {
            "namespaces": list(self.namespaces),
            "pods": {ns: list(names) for ns, names in self.pods},
            "labels": self.labels,
            "annotations": dict(self.annotations),
            "fields": dict(self.fields),
            "phases": list(self.phases),
            "nodes": list(self.nodes),
            "node_selectors": dict(self.node_selectors),
        }

    @classmethod
    def from_wire(cls, data: Any) -> PodSelector:
        if not isinstance(data, dict):
            raise SpecError(f"selector: must be a map, got {type(data).__name__}")

        def strings(name: str) -> tuple[str, ...]:
            value = data.get(name) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"selector.{name}: must be a list of strings")
            return tuple(value)

        def pairs(name: str) -> tuple[tuple[str, str], ...]:
            value = data.get(name) or {}
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise SpecError(f"selector.{name}: must map strings to strings")
            return tuple(sorted(value.items()))

        pods = data.get("pods") or {}
        if not isinstance(pods, dict) or not all(
            isinstance(ns, str) and _all_strings(names) for ns, names in pods.items()
        ):
            raise SpecError("selector.pods: must map namespaces to lists of pod names")
        labels = data.get("labels", "")
        if not isinstance(labels, str):
            raise SpecError("selector.labels: must be a string")
        _label_selector(labels)
        return cls(
            namespaces=strings("namespaces"),
            pods=tuple(sorted((ns, tuple(names)) for ns, names in pods.items())),
            labels=labels,
            annotations=pairs("annotations"),
            fields=pairs("fields"),
            phases=strings("phases"),
            nodes=strings("nodes"),
            node_selectors=pairs("node_selectors"),
        )


@dataclass(frozen=True)
class Experiment:
    namespace: str
    name: str
    api_version: str  # as given
    kind: str  # as given
    flavour: str  # "v0.9" | "2.x" | "chaosbus"
    mode: str  # one | all | fixed | fixed-percent | random-max-percent
    value: str | None
    selector: PodSelector
    duration: float | None  # seconds; None: until deleted or paused
    schedule: str | None  # cron text as given ("@every 2s", "*/5 * * * *")
    rules: tuple[dict[str, Any], ...]  # sidecar wire rules without id/ttl/expires_at
    steps: tuple[dict[str, Any], ...] = ()  # FsChaos only: lazy one-shot ops
    container_names: tuple[str, ...] = ()  # Chaos Mesh 2.x containerNames (informational)
    warnings: tuple[str, ...] = ()
    # Chaos Mesh 2.x volumePath (informational: chaosbus faults the sidecar's own mount).
    volume_path: str | None = field(default=None)

    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION,
            "namespace": self.namespace,
            "name": self.name,
            "api_version": self.api_version,
            "kind": self.kind,
            "flavour": self.flavour,
            "mode": self.mode,
            "value": self.value,
            "selector": self.selector.to_wire(),
            "duration": self.duration,
            "schedule": self.schedule,
            "rules": [copy.deepcopy(r) for r in self.rules],
            "steps": [copy.deepcopy(s) for s in self.steps],
            "container_names": list(self.container_names),
            "warnings": list(self.warnings),
            "volume_path": self.volume_path,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Experiment:
        """Rebuild from ``to_wire`` output (after msgpack or JSON); raises SpecError."""
        if not isinstance(data, dict):
            raise SpecError(f"experiment: must be a map, got {type(data).__name__}")
        if data.get("v") != WIRE_VERSION:
            raise SpecError(f"experiment.v: unsupported version {data.get('v')!r}")

        def text(name: str, *, optional: bool = False) -> Any:
            value = data.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise SpecError(f"experiment.{name}: must be a string, got {value!r}")
            return value

        def seconds(name: str) -> float | None:
            value = data.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SpecError(f"experiment.{name}: must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise SpecError(f"experiment.{name}: must be above zero, got {value!r}")
            return float(value)

        def maps(name: str) -> tuple[dict[str, Any], ...]:
            value = data.get(name) or []
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise SpecError(f"experiment.{name}: must be a list of maps")
            return tuple(copy.deepcopy(v) for v in value)

        def strings(name: str) -> tuple[str, ...]:
            value = data.get(name) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"experiment.{name}: must be a list of strings")
            return tuple(value)

        flavour = text("flavour")
        if flavour not in FLAVOURS:
            raise SpecError(f"experiment.flavour: must be one of {', '.join(FLAVOURS)}")
        mode = text("mode")
        if mode not in MODES:
            raise SpecError(f"experiment.mode: must be one of {', '.join(MODES)}")
        return cls(
            namespace=text("namespace"),
            name=text("name"),
            api_version=text("api_version"),
            kind=text("kind"),
            flavour=flavour,
            mode=mode,
            value=text("value", optional=True),
            selector=PodSelector.from_wire(data.get("selector")),
            duration=seconds("duration"),
            schedule=text("schedule", optional=True),
            rules=maps("rules"),
            steps=maps("steps"),
            container_names=strings("container_names"),
            warnings=strings("warnings"),
            volume_path=text("volume_path", optional=True),
        )


# ---------------------------------------------------------------------------------------
# Manifests


def parse_manifest(doc: Any, *, default_namespace: str = "default") -> Experiment:
    """Check one manifest and normalize it; raises SpecError (one line, field first)."""
    if not isinstance(doc, dict):
        raise SpecError(f"manifest: must be a map, got {type_name(doc)}")
    check_tree(doc, "", finite=True)
    unknown = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"})
    if unknown:
        raise SpecError(
            f"{unknown[0]}: unknown field (a manifest has apiVersion, kind, metadata, spec)"
        )
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not api_version:
        raise SpecError(
            f"apiVersion: required; {CHAOS_MESH_API} (IoChaos, IOChaos) or "
            f"{CHAOSBUS_API} (FsChaos), got {_show(api_version)}"
        )
    if api_version not in (CHAOS_MESH_API, PINGCAP_API, CHAOSBUS_API):
        raise SpecError(
            f"apiVersion: unknown {_show(api_version)}; expected {CHAOS_MESH_API} "
            f"(IoChaos, IOChaos) or {CHAOSBUS_API} (FsChaos)"
        )
    expected = (FSCHAOS_KIND,) if api_version == CHAOSBUS_API else (V09_KIND, V2_KIND)
    if kind not in expected:
        raise SpecError(
            f"kind: {_show(kind)} is not a kind chaosbus runs from {api_version}; "
            f"expected {' or '.join(expected)}"
        )
    if not isinstance(default_namespace, str) or not _is_dns_label(default_namespace):
        raise SpecError(f"metadata.namespace: invalid default namespace {_show(default_namespace)}")
    namespace, name = _metadata(doc.get("metadata"), default_namespace)
    spec = doc.get("spec")
    if spec is None:
        raise SpecError("spec: required")
    if not isinstance(spec, dict):
        raise SpecError(f"spec: must be a map, got {type_name(spec)}")

    head: dict[str, str] = {
        "namespace": namespace,
        "name": name,
        "api_version": str(api_version),
        "kind": str(kind),
    }
    warnings: list[str] = []
    if api_version == PINGCAP_API:
        warnings.append(
            f"apiVersion {PINGCAP_API} is Chaos Mesh's old API group; read as {CHAOS_MESH_API}"
        )
    if api_version == CHAOSBUS_API:
        return _parse_fschaos(spec, head, warnings)
    action = spec.get("action")
    if not isinstance(action, str):
        action = None  # the flavour's own check names the problem
    if action in V09_ACTIONS or (action not in V2_ACTIONS and kind == V09_KIND):
        return _parse_v09(spec, head, warnings)
    return _parse_v2(spec, head, warnings)


def _metadata(raw: Any, default_namespace: str) -> tuple[str, str]:
    if raw is None:
        raise SpecError("metadata.name: required")
    if not isinstance(raw, dict):
        raise SpecError(f"metadata: must be a map, got {type_name(raw)}")
    name = raw.get("name")
    if name is None or name == "":
        raise SpecError("metadata.name: required")
    if not _is_dns_subdomain(name):
        raise SpecError(
            "metadata.name: must be a DNS-1123 subdomain (lower-case letters, digits, '-' "
            f"and '.', starting and ending with a letter or digit, at most 253), got {_show(name)}"
        )
    namespace = raw.get("namespace")
    if namespace is None or namespace == "":
        namespace = default_namespace
    if not _is_dns_label(namespace):
        raise SpecError(
            "metadata.namespace: must be a DNS-1123 label (lower-case letters, digits and "
            f"'-', starting and ending with a letter or digit, at most 63), got {_show(namespace)}"
        )
    return namespace, name


def _refuse_unknown(spec: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpecError(f"spec.{unknown[0]}: unknown field for {what}")


def _mode_value(spec: dict[str, Any], warnings: list[str]) -> tuple[str, str | None]:
    """``mode`` and ``value``, checked as Chaos Mesh checked them when it picked pods."""
    mode = spec.get("mode")
    if mode is None:
        raise SpecError(f"spec.mode: required; one of {', '.join(MODES)}")
    if mode not in MODES:
        raise SpecError(f"spec.mode: must be one of {', '.join(MODES)}, got {_show(mode)}")
    raw = spec.get("value")
    if mode in ("one", "all"):
        if raw not in (None, ""):
            warnings.append(f"spec.value is ignored in mode {mode}")
        return mode, None
    if raw is None or raw == "":
        need = "a number of pods" if mode == "fixed" else "a percentage from 1 to 100"
        raise SpecError(f"spec.value: mode {mode} needs a value ({need})")
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise SpecError(f"spec.value: must be a whole number, got {_show(raw)}")
    text = str(raw).strip()
    if not _WHOLE.fullmatch(text):
        raise SpecError(f"spec.value: must be a whole number, got {_show(raw)}")
    number = int(text)
    if mode == "fixed" and number < 1:
        raise SpecError(f"spec.value: mode fixed needs at least 1 pod, got {_show(raw)}")
    if mode != "fixed" and not 1 <= number <= 100:
        raise SpecError(
            f"spec.value: mode {mode} needs a percentage from 1 to 100, got {_show(raw)}"
        )
    return mode, str(number)


def _duration(spec: dict[str, Any], *, numbers: bool) -> float | None:
    raw = spec.get("duration")
    if raw is None:
        return None
    if numbers and isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    elif isinstance(raw, str):
        seconds = parse_go_duration(raw, field="spec.duration")
    else:
        example = '"30s" or a number of seconds' if numbers else 'a Go duration like "30s"'
        raise SpecError(f"spec.duration: must be {example}, got {_show(raw)}")
    if seconds <= 0:
        raise SpecError(f"spec.duration: must be above zero, got {_show(raw)}")
    return seconds


def _cron(spec: dict[str, Any]) -> str | None:
    """Chaos Mesh's ``scheduler: {cron: ...}``."""
    raw = spec.get("scheduler")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError(
            f'spec.scheduler: must be a map like {{cron: "@every 10m"}}, got {_show(raw)}'
        )
    unknown = sorted(set(raw) - {"cron"})
    if unknown:
        raise SpecError(f"spec.scheduler.{unknown[0]}: unknown field (the scheduler has cron)")
    text = raw.get("cron")
    if text is None or text == "":
        raise SpecError("spec.scheduler.cron: required")
    Schedule.parse(text, field="spec.scheduler.cron")
    return str(text)


def _timing(
    spec: dict[str, Any], schedule: str | None, *, numbers: bool
) -> tuple[float | None, str | None]:
    duration = _duration(spec, numbers=numbers)
    if schedule is not None and duration is None:
        raise SpecError(
            "spec.duration: required with a schedule (each scheduled run lasts this long, "
            "as Chaos Mesh required)"
        )
    return duration, schedule


def _strings(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise SpecError(f"{where}: must be a list of strings, got {_show(raw)}")
    return raw


def _string_map(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be a map of strings to strings, got {_show(raw)}")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise SpecError(f"{where}.{key}: must be a string, got {_show(value)}")
    return raw


def _label_selector(text: str) -> selectors.LabelSelector:
    """A label selector read as part of a spec: a malformed one is a SpecError."""
    try:
        return selectors.parse(text)
    except selectors.SelectorError as exc:
        raise SpecError(str(exc)) from None


def _selector(raw: Any, namespace: str, *, default_to_own: bool) -> PodSelector:
    """Chaos Mesh's selector block.

    ``default_to_own``: Chaos Mesh 2.x (and FsChaos) look in the experiment's own
    namespace when neither namespaces nor pods are given; Chaos Mesh v0.9 looked in
    every namespace.
    """
    where = "spec.selector"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be a map, got {type_name(raw)}")
    unknown = sorted(set(raw) - _SELECTOR_FIELDS)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown selector field")

    namespaces = [t.strip() for t in _strings(raw.get("namespaces"), f"{where}.namespaces")]
    for index, ns in enumerate(namespaces):
        if not _is_dns_label(ns.removeprefix("!")):
            raise SpecError(
                f"{where}.namespaces[{index}]: {_show(ns)} is not a namespace name "
                "(or !name to leave one out)"
            )

    pods_raw = raw.get("pods")
    pods: list[tuple[str, tuple[str, ...]]] = []
    if pods_raw is not None:
        if not isinstance(pods_raw, dict):
            raise SpecError(f"{where}.pods: must map namespaces to lists of pod names")
        for ns, names in pods_raw.items():
            if not _is_dns_label(ns):
                raise SpecError(f"{where}.pods: {_show(ns)} is not a namespace name")
            names = _strings(names, f"{where}.pods.{ns}")
            for pod in names:
                if not _is_dns_subdomain(pod):
                    raise SpecError(f"{where}.pods.{ns}: {_show(pod)} is not a pod name")
            if names:
                pods.append((ns, tuple(sorted(set(names)))))

    expressions = raw.get("expressionSelectors")
    if raw.get("matchExpressions") is not None:
        if expressions is not None:
            raise SpecError(
                f"{where}.matchExpressions: give expressionSelectors or matchExpressions, not both"
            )
        expressions = raw.get("matchExpressions")
    if expressions is not None and not isinstance(expressions, list):
        raise SpecError(f"{where}.expressionSelectors: must be a list of {{key, operator, values}}")
    try:
        labels = selectors.from_parts(
            _string_map(raw.get("labelSelectors"), f"{where}.labelSelectors"),
            expressions or [],
            field=where,
        )
    except selectors.SelectorError as exc:
        raise SpecError(str(exc)) from None

    annotations = _string_map(raw.get("annotationSelectors"), f"{where}.annotationSelectors")
    for key in annotations:
        problem = selectors.key_problem(key)
        if problem:
            raise SpecError(f"{where}.annotationSelectors: {problem}")
    fields = _string_map(raw.get("fieldSelectors"), f"{where}.fieldSelectors")
    for key in fields:
        if not key or any(c in key for c in ",=! "):
            raise SpecError(f"{where}.fieldSelectors: {_show(key)} is not a field path")
    phases = [
        t.strip() for t in _strings(raw.get("podPhaseSelectors"), f"{where}.podPhaseSelectors")
    ]
    for phase in phases:
        if phase.removeprefix("!") not in _PHASES:
            raise SpecError(
                f"{where}.podPhaseSelectors: {_show(phase)} is not a pod phase; "
                f"one of {', '.join(_PHASES)} (or !phase to leave one out)"
            )
    nodes = _strings(raw.get("nodes"), f"{where}.nodes")
    for node in nodes:
        if not _is_dns_subdomain(node):
            raise SpecError(f"{where}.nodes: {_show(node)} is not a node name")
    node_selectors = _string_map(raw.get("nodeSelectors"), f"{where}.nodeSelectors")
    for key, value in node_selectors.items():
        problem = selectors.key_problem(key) or selectors.value_problem(value)
        if problem:
            raise SpecError(f"{where}.nodeSelectors: {problem}")

    if default_to_own and not namespaces and not pods:
        namespaces = [namespace]
    return PodSelector(
        namespaces=tuple(sorted(set(namespaces))),
        pods=tuple(sorted(pods)),
        labels=labels,
        annotations=tuple(sorted(annotations.items())),
        fields=tuple(sorted(fields.items())),
        phases=tuple(sorted(set(phases))),
        nodes=tuple(sorted(set(nodes))),
        node_selectors=tuple(sorted(node_selectors.items())),
    )


def _percent(raw: Any, where: str) -> int:
    """A whole percentage; Chaos Mesh v0.9 wrote it as a string, 2.x as a number."""
    if raw is None or raw == "":
        return 100
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise SpecError(f"{where}: must be a whole number from 0 to 100, got {_show(raw)}")
    text = str(raw).strip()
    if not _WHOLE.fullmatch(text.lstrip("-")) or text.count("-") > 1:
        raise SpecError(f"{where}: must be a whole number from 0 to 100, got {_show(raw)}")
    number = int(text)
    if not 0 <= number <= 100:
        raise SpecError(f"{where}: must be from 0 to 100, got {_show(raw)}")
    return number


def _errno(raw: Any, where: str) -> int | str:
    """An errno as a number (5, "5") or a name ("EIO", "eio")."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise SpecError(f"{where}: must be an errno number or name like EIO, got {_show(raw)}")
    value: int | str = raw
    if isinstance(raw, str):
        text = raw.strip()
        value = int(text) if _WHOLE.fullmatch(text) else text.upper()
    try:
        parse_errno(value)
    except RuleError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return value


def _delay(raw: Any, where: str, *, numbers: bool = False) -> float:
    if numbers and isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
        if seconds < 0:
            raise SpecError(f"{where}: must not be negative, got {_show(raw)}")
    elif isinstance(raw, str) and raw.strip():
        seconds = parse_go_duration(raw, field=where)
    else:
        raise SpecError(f'{where}: must be a duration like "10ms", got {_show(raw)}')
    if seconds > MAX_DELAY_SECONDS:
        raise SpecError(f"{where}: at most {MAX_DELAY_SECONDS:g} seconds, got {_show(raw)}")
    return seconds


def _check_regex(raw: Any, where: str) -> None:
    if not isinstance(raw, str):
        raise SpecError(f"{where}: must be a regular expression string, got {_show(raw)}")
    if len(raw) > MAX_REGEX_LENGTH:
        raise SpecError(f"{where}: longer than {MAX_REGEX_LENGTH} characters")
    if "\x00" in raw:
        raise SpecError(f"{where}: contains a NUL byte")
    try:
        re2.compile(raw, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise SpecError(f"{where}: not a valid RE2 regular expression: {reason}") from None


def _methods(raw: Any, where: str) -> list[str]:
    names = _strings(raw, where)
    unknown = [m for m in names if m not in METHOD_SET]
    if unknown:
        raise SpecError(
            f"{where}: unknown method {_show(unknown[0])}; known: {', '.join(sorted(METHOD_SET))}"
        )
    return sorted(set(names))


def _validate_rule(rule: dict[str, Any], where: str) -> None:
    """Prove the sidecar will accept ``rule``, naming ``where`` when it would not."""
    if "path_regex" in rule:
        _check_regex(rule["path_regex"], f"{where}.path_regex")
        if "path" in rule:
            raise SpecError(f"{where}.path_regex: give path (a glob) or path_regex, not both")
    try:
        FaultRule.from_wire(dict(rule))
    except TypeError:  # a list or map where the rule model looks a name up
        raise SpecError(f"{where}: a field holds a list or map where a name belongs") from None
    except RuleError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _experiment(
    head: dict[str, str],
    *,
    flavour: str,
    mode: str,
    value: str | None,
    selector: PodSelector,
    duration: float | None,
    schedule: str | None,
    rules: list[dict[str, Any]],
    warnings: list[str],
    steps: list[dict[str, Any]] | None = None,
    container_names: list[str] | None = None,
    volume_path: str | None = None,
) -> Experiment:
    return Experiment(
        namespace=head["namespace"],
        name=head["name"],
        api_version=head["api_version"],
        kind=head["kind"],
        flavour=flavour,
        mode=mode,
        value=value,
        selector=selector,
        duration=duration,
        schedule=schedule,
        rules=tuple(rules),
        steps=tuple(steps or ()),
        container_names=tuple(container_names or ()),
        warnings=tuple(warnings),
        volume_path=volume_path,
    )


def _action(spec: dict[str, Any], allowed: Any) -> str:
    action = spec.get("action")
    known = f"{', '.join(V09_ACTIONS)} (Chaos Mesh v0.9) or {', '.join(V2_ACTIONS)} (2.x)"
    if action is None or action == "":
        raise SpecError(f"spec.action: required; {known}")
    if not isinstance(action, str) or action not in allowed:
        raise SpecError(f"spec.action: must be one of {known}, got {_show(action)}")
    return action


# --- Chaos Mesh v0.9 IoChaos ---------------------------------------------------------------


def _parse_v09(spec: dict[str, Any], head: dict[str, str], warnings: list[str]) -> Experiment:
    _refuse_unknown(spec, _V09_FIELDS, "a Chaos Mesh v0.9 IoChaos")
    action = _action(spec, V09_ACTIONS)
    mode, value = _mode_value(spec, warnings)
    selector = _selector(spec.get("selector"), head["namespace"], default_to_own=False)
    duration, schedule = _timing(spec, _cron(spec), numbers=False)

    layer = spec.get("layer")
    if layer not in (None, "", "fs"):
        raise SpecError(f'spec.layer: only the "fs" layer exists in chaosbus, got {_show(layer)}')
    rule: dict[str, Any] = {"action": V09_ACTIONS[action]}
    errno_raw, delay_raw = spec.get("errno"), spec.get("delay")
    if action in ("errno", "mixed"):
        # An empty errno made Chaos Mesh pick a random one on every failure.
        rule["errno"] = "random" if errno_raw in (None, "") else _errno(errno_raw, "spec.errno")
    elif errno_raw not in (None, ""):
        warnings.append(f"spec.errno is ignored for action {action}")
    if action in ("delay", "mixed"):
        if delay_raw in (None, ""):
            raise SpecError(f'spec.delay: required for action {action} (a duration like "10ms")')
        rule["delay"] = _delay(delay_raw, "spec.delay")
        if rule["delay"] <= 0:
            raise SpecError(f"spec.delay: must be above zero, got {_show(delay_raw)}")
    elif delay_raw not in (None, ""):
        warnings.append(f"spec.delay is ignored for action {action}")
    methods = _methods(spec.get("methods"), "spec.methods")
    if methods:
        rule["methods"] = methods
    path = spec.get("path")
    if path not in (None, ""):
        # Chaos Mesh v0.9 matched this regular expression anywhere in the file's path.
        _check_regex(path, "spec.path")
        rule["path_regex"] = path
    rule["percent"] = _percent(spec.get("percent"), "spec.percent")

    for name, reason in (
        ("addr", "chaosbus has no per-pod gRPC port; commands travel over NATS"),
        ("configName", "it named the injection ConfigMap; the chaosbus injector decides that"),
    ):
        if name in spec:
            if not isinstance(spec[name], str):
                raise SpecError(f"spec.{name}: must be a string, got {_show(spec[name])}")
            warnings.append(f"spec.{name} is ignored: {reason}")
    _validate_rule(rule, "spec")
    return _experiment(
        head,
        flavour="v0.9",
        mode=mode,
        value=value,
        selector=selector,
        duration=duration,
        schedule=schedule,
        rules=[rule],
        warnings=warnings,
    )


# --- Chaos Mesh 2.x IOChaos --------------------------------------------------------------


def _parse_v2(spec: dict[str, Any], head: dict[str, str], warnings: list[str]) -> Experiment:
    _refuse_unknown(spec, _V2_FIELDS, "a Chaos Mesh 2.x IOChaos")
    action = _action(spec, V2_ACTIONS)
    remote = spec.get("remoteCluster")
    if remote not in (None, ""):
        raise SpecError(
            f"spec.remoteCluster: chaosbus runs experiments only in its own cluster, "
            f"got {_show(remote)}"
        )
    mode, value = _mode_value(spec, warnings)
    selector = _selector(spec.get("selector"), head["namespace"], default_to_own=True)
    duration, schedule = _timing(spec, _cron(spec), numbers=False)
    containers = _container_names(spec)
    volume_path = spec.get("volumePath")
    if volume_path is not None and not isinstance(volume_path, str):
        raise SpecError(f"spec.volumePath: must be a path string, got {_show(volume_path)}")
    if not volume_path:
        volume_path = None
    elif not volume_path.startswith("/"):
        warnings.append(
            f"spec.volumePath {_show(volume_path)} is not absolute; it is informational "
            "anyway: chaosbus faults the sidecar's own mount"
        )

    rule: dict[str, Any]
    if action == "latency":
        if spec.get("delay") in (None, ""):
            raise SpecError('spec.delay: required for action latency (a duration like "10ms")')
        rule = {"action": "latency", "delay": _delay(spec["delay"], "spec.delay")}
        if rule["delay"] <= 0:
            raise SpecError(f"spec.delay: must be above zero, got {_show(spec['delay'])}")
    elif action == "fault":
        raw = spec.get("errno")
        if raw in (None, "", 0):
            raise SpecError("spec.errno: required for action fault (an errno number like 5)")
        rule = {"action": "errno", "errno": _errno(raw, "spec.errno")}
    elif action == "attrOverride":
        rule = {"action": "attr", "attr": _v2_attr(spec.get("attr"))}
    else:
        rule = {"action": "mistake", **_v2_mistake(spec.get("mistake"))}
    for name, used_by in (
        ("delay", "latency"),
        ("errno", "fault"),
        ("attr", "attrOverride"),
        ("mistake", "mistake"),
    ):
        if action != used_by and spec.get(name) not in (None, "", 0):
            warnings.append(f"spec.{name} is ignored for action {action}")

    methods = _v2_methods(spec.get("methods"))
    if methods:
        rule["methods"] = methods
    path = _v2_path(spec.get("path"), volume_path, warnings)
    if path is not None:
        rule["path"] = path
    rule["percent"] = _percent(spec.get("percent"), "spec.percent")
    _validate_rule(rule, "spec")
    return _experiment(
        head,
        flavour="2.x",
        mode=mode,
        value=value,
        selector=selector,
        duration=duration,
        schedule=schedule,
        rules=[rule],
        warnings=warnings,
        container_names=containers,
        volume_path=volume_path,
    )


def _container_names(spec: dict[str, Any]) -> list[str]:
    names = list(_strings(spec.get("containerNames"), "spec.containerNames"))
    single = spec.get("containerName")
    if single not in (None, ""):
        if not isinstance(single, str):
            raise SpecError(f"spec.containerName: must be a string, got {_show(single)}")
        names.append(single)
    for name in names:
        if not _is_dns_label(name):
            raise SpecError(f"spec.containerNames: {_show(name)} is not a container name")
    return sorted(set(names))


def _v2_methods(raw: Any) -> list[str]:
    out: set[str] = set()
    for name in _strings(raw, "spec.methods"):
        lower = name.lower()
        if lower in METHOD_SET:
            out.add(lower)
        elif lower in _V2_METHOD_ALIASES:
            out.update(_V2_METHOD_ALIASES[lower])
        elif lower in _V2_METHODS_REFUSED:
            raise SpecError(
                f"spec.methods: {_show(name)} cannot be faulted: {_V2_METHODS_REFUSED[lower]}"
            )
        else:
            raise SpecError(
                f"spec.methods: unknown method {_show(name)}; "
                f"known: {', '.join(sorted(METHOD_SET | set(_V2_METHOD_ALIASES)))}"
            )
    return sorted(out)


def _v2_path(raw: Any, volume_path: str | None, warnings: list[str]) -> str | None:
    """A 2.x path glob, made relative to the mount root when it starts with volumePath."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise SpecError(f"spec.path: must be a glob string, got {_show(raw)}")
    path = raw
    if volume_path and volume_path.startswith("/"):
        root = volume_path.rstrip("/")
        if raw == root or raw == root + "/":
            path = ""  # the volume's root directory itself
        elif root and raw.startswith(root + "/"):
            path = raw[len(root) + 1 :]
        elif root and raw.startswith("/"):
            warnings.append(
                f"spec.path {_show(raw)} is not under volumePath {_show(volume_path)}; "
                "it is matched from the root of the sidecar's mount"
            )
    try:
        compile_glob(path)
    except GlobError as exc:
        raise SpecError(f"spec.path: {exc}") from None
    return path.strip("/")


def _v2_attr(raw: Any) -> dict[str, Any]:
    where = "spec.attr"
    if raw is None:
        raise SpecError(f"{where}: required for action attrOverride")
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"{where}: must be a non-empty map of attributes, got {_show(raw)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        target = _V2_ATTR.get(key)
        if target is None:
            raise SpecError(f"{where}.{key}: unknown attribute; known: {', '.join(_V2_ATTR)}")
        if key == "kind":
            if not isinstance(value, str) or value not in _V2_KINDS:
                raise SpecError(
                    f"{where}.kind: must be one of {', '.join(_V2_KINDS)}, got {_show(value)}"
                )
            out[target] = _V2_KINDS[value]
        elif key in ("atime", "mtime", "ctime"):
            out[target] = _timespec(value, f"{where}.{key}")
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{where}.{key}: must be a whole number, got {_show(value)}")
            if value < 0:
                raise SpecError(f"{where}.{key}: must not be negative, got {value}")
            if key == "perm" and value > 0o7777:
                raise SpecError(f"{where}.perm: permission bits end at 0o7777 (4095), got {value}")
            out[target] = value
    return out


def _timespec(raw: Any, where: str) -> float:
    if not isinstance(raw, dict) or set(raw) - {"sec", "nsec"}:
        raise SpecError(f"{where}: must be a map with sec and nsec, got {_show(raw)}")
    sec, nsec = raw.get("sec", 0), raw.get("nsec", 0)
    for name, number in (("sec", sec), ("nsec", nsec)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise SpecError(f"{where}.{name}: must be a whole number, got {_show(number)}")
        if number < 0:
            raise SpecError(f"{where}.{name}: must not be negative, got {number}")
    if nsec >= 1_000_000_000:
        raise SpecError(f"{where}.nsec: must be below 1000000000, got {nsec}")
    return float(sec + nsec / 1e9)


def _v2_mistake(raw: Any) -> dict[str, Any]:
    where = "spec.mistake"
    if raw is None:
        raise SpecError(f"{where}: required for action mistake")
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be a map with filling, maxOccurrences, maxLength")
    unknown = sorted(set(raw) - {"filling", "maxOccurrences", "maxLength"})
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field")
    filling = raw.get("filling") or "zero"
    if filling not in ("zero", "random"):
        raise SpecError(f"{where}.filling: must be zero or random, got {_show(filling)}")
    out: dict[str, Any] = {"filling": filling}
    for name, target in (("maxOccurrences", "max_occurrences"), ("maxLength", "max_length")):
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}.{name}: must be a whole number, got {_show(value)}")
        if value < 1:
            raise SpecError(f"{where}.{name}: must be at least 1, got {value}")
        out[target] = value
    return out


# --- chaosbus FsChaos -------------------------------------------------------------------


def _parse_fschaos(spec: dict[str, Any], head: dict[str, str], warnings: list[str]) -> Experiment:
    _refuse_unknown(spec, _FS_FIELDS, "FsChaos")
    mode, value = _mode_value(spec, warnings)
    selector = _selector(spec.get("selector"), head["namespace"], default_to_own=True)
    schedule = spec.get("schedule")
    if schedule == "":
        schedule = None
    if schedule is not None:
        Schedule.parse(schedule, field="spec.schedule")
    duration, schedule = _timing(spec, schedule, numbers=True)

    raw_rules = spec.get("rules") or []
    if not isinstance(raw_rules, list):
        raise SpecError("spec.rules: must be a list of rules")
    if len(raw_rules) > MAX_RULES:
        raise SpecError(f"spec.rules: at most {MAX_RULES} rules, got {len(raw_rules)}")
    rules = [_fs_rule(raw, f"spec.rules[{index}]") for index, raw in enumerate(raw_rules)]

    raw_steps = spec.get("steps") or []
    if not isinstance(raw_steps, list):
        raise SpecError("spec.steps: must be a list of lazy-mode steps")
    if len(raw_steps) > MAX_STEPS:
        raise SpecError(f"spec.steps: at most {MAX_STEPS} steps, got {len(raw_steps)}")
    steps = [_fs_step(raw, f"spec.steps[{index}]") for index, raw in enumerate(raw_steps)]
    if not rules and not steps:
        raise SpecError("spec.rules: an FsChaos needs at least one rule or step")
    return _experiment(
        head,
        flavour="chaosbus",
        mode=mode,
        value=value,
        selector=selector,
        duration=duration,
        schedule=schedule,
        rules=rules,
        steps=steps,
        warnings=warnings,
    )


def _fs_rule(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be a map (a rule), got {type_name(raw)}")
    for name, reason in _CONTROLLER_RULE_FIELDS.items():
        if name in raw:
            raise SpecError(f"{where}.{name}: not allowed in an experiment: {reason}")
    unknown = sorted(set(raw) - WIRE_RULE_FIELDS)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown rule field")
    rule = copy.deepcopy(raw)
    for name in ("delay", "jitter"):
        if name in rule:
            rule[name] = _delay(rule[name], f"{where}.{name}", numbers=True)
    _validate_rule(rule, where)
    return rule


def _fs_step(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be a map with op, got {type_name(raw)}")
    for name in ("target", "actor"):
        if name in raw:
            raise SpecError(f"{where}.{name}: not allowed: the experiment's selector picks pods")
    step = copy.deepcopy(raw)
    try:
        parse_lazy(step)
    except CommandError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return step
