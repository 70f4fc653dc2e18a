"""A small stand-in Kubernetes API server: the core kinds chaosbus reads and writes, and
any custom resource a test registers.

No real API server can run on the test machines, so the kubernetes seam is tested with
the real kubernetes-asyncio client against this server, which speaks the real wire
format over plain HTTP on a loopback port.

What it implements (and nothing more):

* Resources: ConfigMaps, Namespaces, Pods, Nodes, Events (``v1`` and
  ``events.k8s.io/v1``), and custom resources registered at construction
  (``KubeStandin(resources=[...])``) or later (:meth:`KubeStandin.register`,
  :meth:`KubeStandin.register_crd`, which reads a CustomResourceDefinition), served at
  ``/apis/{group}/{version}/[namespaces/{ns}/]{plural}[/{name}[/status]]``.
* List or watch of every resource, across namespaces or in one (``watch=true``;
  booleans are parsed like Go's ParseBool, since the Python client sends ``True``), with
  ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
  ``a notin (x,y)``, comma-joined), ``fieldSelector`` (``=``, ``==``, ``!=``; every kind
  knows ``metadata.name`` and ``metadata.namespace``, Pods also ``spec.nodeName``,
  ``status.phase`` and a few more, Events their ``involvedObject.*``, ``reason``,
  ``type`` and ``source``; any other field is a 400, as on the real server),
  ``limit``/``continue`` (a consistent snapshot per continue token),
  ``resourceVersion``, ``allowWatchBookmarks`` and ``timeoutSeconds``.
* Lists: ``{"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion":
  ...}, "items": [...]}``. Like the real server, items of a built-in kind's list carry no
  ``kind`` or ``apiVersion`` (kubernetes/kubernetes#3030); custom resources' list items
  and objects in watch events do.
* Watches: HTTP 200, chunked, one JSON event per line. Without a resourceVersion (or
  with "0") the current objects are first sent as ADDED events, as the real server
  does; with one, every retained event after it is replayed. A resourceVersion older
  than the retained history gets the real server's answer: a 200 stream holding one
  ``ERROR`` event whose object is a ``Status`` with code 410, reason ``Expired``.
  Events are filtered like the watch cache does: an object that stops matching the
  selectors is sent as DELETED (previous content, new resourceVersion), one that starts
  matching as ADDED.
* Writes over HTTP: GET of one object; POST (``generateName`` too; assigns uid,
  resourceVersion, creationTimestamp, and generation 1 to Pods and custom resources;
  409 AlreadyExists; 404 for a namespace that does not exist); PUT (a resourceVersion
  that is not the current one is a 409 Conflict with a ``Status`` body; custom
  resources must send one, as their real strategy requires); PATCH with
  ``application/merge-patch+json`` (RFC 7386) and ``application/json-patch+json``
  (RFC 6902, ``test`` included; a failed op is a 422); anything else is a 415.
  kubernetes-asyncio 36's ``patch_namespaced_custom_object`` sends a dict body as
  ``application/json-patch+json`` (its content-type pick falls back to the first type
  the operation lists), which the real server refuses with a 400 and so does this one:
  a merge patch needs ``_content_type="application/merge-patch+json"``.
* The status subresource (``/status``: GET, PUT, PATCH) of kinds that have one: writes
  there change only ``.status``; writes to the main resource keep the stored
  ``.status`` whatever they send, and a created object's status is dropped. The
  generation grows by one on every main-resource write that changes anything but
  ``metadata`` and ``status``; a write that changes nothing is not stored (no new
  resourceVersion, no event).
* Finalizers: DELETE of an object with finalizers sets ``metadata.deletionTimestamp``
  (once) and keeps the object (a MODIFIED event); it disappears, with a DELETED event,
  when a write leaves its finalizers empty. Adding a finalizer to an object being
  deleted is refused (422), as on the real server.
* ``metadata.managedFields``: one ``Update`` entry per manager (and subresource) with
  its time; the manager is the ``fieldManager`` parameter, else the User-Agent up to
  its first "/", as the real server derives it.
* One global, monotonically increasing resourceVersion shared by every object.
* Failures: 500/429 answers with a ``Status`` body (429 with ``Retry-After``), dropped
  connections before any answer, and watches ended cleanly (as at ``timeoutSeconds``)
  or cut mid-stream. They apply to any request (or only to watches).
* TokenReview (``POST /apis/authentication.k8s.io/v1/tokenreviews``, answered 201) of
  the ServiceAccount tokens :meth:`KubeStandin.issue_token` makes, bound to a pod as the
  kubelet's projected tokens are: JWT-shaped, with the real claims (``aud``, ``exp``,
  ``kubernetes.io.pod``...). A token is authenticated while it has not expired, names
  one of the requested audiences (none requested: the API server's own) and its pod
  still exists with the same uid; the user is ``system:serviceaccount:<ns>:<sa>`` with
  the real ``extra`` (``authentication.kubernetes.io/pod-name``, ``pod-uid``,
  ``credential-id``, ``node-name``). Otherwise the status is the real refusal: no
  ``authenticated``, an empty user and an ``error``.

Not implemented: authentication and authorization (the bearer token is ignored),
schema validation of custom resources (a registered kind accepts any body), strategic
merge patch and server-side apply, ``dryRun``, DeleteOptions (preconditions,
propagation, grace periods: a Pod deleted over HTTP goes at once; tests make a Pod
terminate with :meth:`KubeStandin.terminate_pod`), owner references and garbage
collection, ``resourceVersionMatch``/``sendInitialEvents``, a namespace's Terminating
phase (a deleted namespace and what it holds vanish at once), future
resourceVersions on watches (they simply wait), list ``resourceVersion`` semantics
(lists always read the current state), discovery, TLS and protobuf.

The controls are plain methods that must run on the server's event loop thread; tests
that drive the server from another thread use :func:`run_in_thread`, whose proxy
marshals each call onto that loop. Failed controls raise :class:`ApiError`, the error
the HTTP API would have answered.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import copy
import inspect
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import jsonpatch
from aiohttp import web

DEFAULT_WATCH_TIMEOUT = 1800.0  # the real server's minRequestTimeout
_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the API server's own


# --- resources ---------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One kind the server serves."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has a status subresource
    fields: tuple[str, ...] = _COMMON_FIELDS  # what a fieldSelector may name
    builtin: bool = False  # list items lose kind/apiVersion (kubernetes#3030)

    @property
    def key(self) -> str:
        """How tests and the server name it: the plural for the core group, else
        ``plural.group`` (as kubectl does)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_generation(self) -> bool:
        return not self.builtin or self.kind == "Pod"


BUILTIN: tuple[Resource, ...] = (
    Resource("", "v1", "configmaps", "ConfigMap", builtin=True),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, builtin=True),
    Resource(
        "",
        "v1",
        "pods",
        "Pod",
        status=True,
        builtin=True,
        fields=(
            *_COMMON_FIELDS,
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    Resource(
        "",
        "v1",
        "nodes",
        "Node",
        namespaced=False,
        status=True,
        builtin=True,
        fields=("metadata.name", "spec.unschedulable"),
    ),
    Resource(
        "",
        "v1",
        "events",
        "Event",
        builtin=True,
        fields=(
            *_COMMON_FIELDS,
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ),
    ),
    Resource("events.k8s.io", "v1", "events", "Event", builtin=True),
)
EVENT_RESOURCES = ("events", "events.events.k8s.io")


def resource_from_crd(crd: dict[str, Any]) -> Resource:
    """The Resource a CustomResourceDefinition (apiextensions.k8s.io/v1) serves: its
    storage version, and whether that version has a status subresource."""
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    return Resource(
        group=spec["group"],
        version=version["name"],
        plural=spec["names"]["plural"],
        kind=spec["names"]["kind"],
        namespaced=spec["scope"] == "Namespaced",
        status="status" in (version.get("subresources") or {}),
    )


class ApiError(Exception):
    """What the server answers instead of an object: an HTTP status and a Status body."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(f"{code} {reason or _REASONS.get(code, 'InternalError')}: {message}")
        self.code = code
        self.reason = reason or _REASONS.get(code, "InternalError")
        self.message = message

    def status(self) -> dict[str, Any]:
        return _status(self.code, self.reason, self.message)


# --- label and field selectors -----------------------------------------------------

_REQUIREMENT = re.compile(
    r"""^\s*(?:
        (?P<not>!)\s*(?P<nkey>[^\s=!,()]+)
      | (?P<skey>[^\s=!,()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
      | (?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s=!,()]*))?
    )\s*$""",
    re.VERBOSE,
)

Selector = Callable[[dict[str, str]], bool]
Match = Callable[[dict[str, Any]], bool]


def parse_selector(text: str | None) -> Selector:
    """Parse a label selector; raises ValueError for one the real server would reject."""
    if not text or not text.strip():
        return lambda labels: True
    # Split on commas outside parentheses: `a in (x,y),b=c` is two requirements.
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    checks: list[Selector] = []
    for part in parts:
        m = _REQUIREMENT.match(part)
        if not m:
            raise ValueError(f"unable to parse requirement: {part!r}")
        if m["not"]:
            key = m["nkey"]
            checks.append(lambda labels, k=key: k not in labels)
        elif m["setop"]:
            key, values = m["skey"], {v.strip() for v in m["values"].split(",")}
            if m["setop"] == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m["op"] in ("=", "=="):
            key, value = m["key"], m["value"]
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m["op"] == "!=":
            key, value = m["key"], m["value"]
            # As in Kubernetes: `a!=b` also matches objects without the label.
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        else:
            key = m["key"]
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels) for check in checks)


_FIELD_REQUIREMENT = re.compile(r"^\s*([\w.]+)\s*(==|=|!=)\s*(\S*)\s*$")


def parse_field_selector(text: str | None, allowed: Iterable[str] = _COMMON_FIELDS) -> Match:
    """Parse a field selector (``a=b``, ``a==b``, ``a!=b``, comma-joined) over the fields
    a kind supports; raises ValueError as the real server answers 400. A field the object
    lacks compares as the empty string (``spec.nodeName=`` is an unscheduled pod)."""
    if not text or not text.strip():
        return lambda obj: True
    allowed = set(allowed)
    checks: list[Match] = []
    for part in text.split(","):
        m = _FIELD_REQUIREMENT.match(part)
        if not m:
            raise ValueError(f"invalid selector: {part!r}; can't understand {part!r}")
        path, op, value = m.groups()
        if path not in allowed:
            raise ValueError(f'field label not supported: "{path}"')
        if op == "!=":
            checks.append(lambda obj, p=path, v=value: _field(obj, p) != v)
        else:
            checks.append(lambda obj, p=path, v=value: _field(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # an Event's source: its component
        return str(value.get("component", ""))
    return str(value)


def _matcher(resource: Resource, labels: str | None, fields: str | None) -> Match:
    by_labels = parse_selector(labels)
    by_fields = parse_field_selector(fields, resource.fields)
    return lambda obj: by_labels(_labels(obj)) and by_fields(obj)


# --- state -------------------------------------------------------------------------


@dataclass
class _Change:
    rv: int
    resource: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    prev: dict[str, Any] | None


@dataclass(eq=False)  # identity hash: watches live in a set
class _Watch:
    resource: str
    namespace: str | None
    match: Match
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)


@dataclass(frozen=True)
class Request:
    """One request the server saw, for tests that check what the client asked."""

    path: str
    query: dict[str, str]
    method: str = "GET"
    name: str | None = None  # None: the collection (a list, a watch or a create)
    subresource: str | None = None
    content_type: str | None = None
    body: Any = None

    @property
    def watch(self) -> bool:
        return _bool(self.query.get("watch"))

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and self.name is None and not self.watch


def _bool(value: str | None) -> bool:
    # The server parses booleans with Go's strconv.ParseBool, and the Python client sends
    # "True": accept what ParseBool accepts as true.
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


class KubeStandin:
    """The stand-in server. Use ``async with KubeStandin() as k8s`` inside a running loop."""

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self.rv = 0
        self.resources: dict[str, Resource] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[_Change] = []
        self.compacted_rv = 0  # watches from before this resourceVersion get 410
        self.requests: list[Request] = []
        self._watches: set[_Watch] = set()
        # (what, status, watches only): what is "status" or "drop"; applied in order.
        self._faults: list[tuple[str, int, bool]] = []
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._tokens = itertools.count(1)
        self.service_tokens: dict[str, dict[str, Any]] = {}  # token -> its claims
        self._runner: web.AppRunner | None = None
        self.port = 0
        for resource in (*BUILTIN, *resources):
            self.register(resource)
        for name in ("default", "kube-system"):
            self.create_namespace(name)

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        # One route: paths are parsed here, where every resource is known.
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch whose client hung up is forgotten at once, as
        # open_watches should only count live ones.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeStandin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(self, path: Path | str) -> Path:
        return write_kubeconfig(path, self.url)

    # --- resource controls ---

    def register(self, resource: Resource) -> Resource:
        """Serve a kind (as creating its CRD would); registering it again is harmless."""
        known = self.resources.get(resource.key)
        if known is not None and known != resource:
            raise ValueError(f"{resource.key} is already served as {known}")
        self.resources[resource.key] = resource
        return resource

    def register_crd(self, crd: dict[str, Any]) -> Resource:
        return self.register(resource_from_crd(crd))

    # --- object controls: namespaces and ConfigMaps ---

    def create_namespace(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        obj = self._new_object("namespaces", None, name, labels, annotations)
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        obj["metadata"]["labels"].setdefault("kubernetes.io/metadata.name", name)
        return self._store("namespaces", "ADDED", obj, None)

    def update_namespace(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return self._update("namespaces", "", name, None, labels, annotations)

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and, at once, everything in it."""
        for key in [k for k in self.objects if k[1] == name and k[0] != "namespaces"]:
            self._delete(*key)
        self._delete("namespaces", "", name)

    def create_configmap(
        self,
        namespace: str,
        name: str,
        data: dict[str, str] | None = None,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self._require_namespace(namespace)
        obj = self._new_object("configmaps", namespace, name, labels, annotations)
        obj["data"] = dict(data or {})
        return self._store("configmaps", "ADDED", obj, None)

    def update_configmap(
        self,
        namespace: str,
        name: str,
        data: dict[str, str] | None = None,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Replace whichever of data, labels and annotations are given."""
        return self._update("configmaps", namespace, name, data, labels, annotations)

    def delete_configmap(self, namespace: str, name: str) -> None:
        self._delete("configmaps", namespace, name)

    # --- object controls: Pods and Nodes ---

    def create_pod(
        self,
        namespace: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        node: str | None = None,
        phase: str = "Running",
    ) -> dict[str, Any]:
        """A Pod as the scheduler and kubelet left it: on ``node`` (None: unscheduled),
        in ``phase``."""
        self._require_namespace(namespace)
        obj = self._new_object("pods", namespace, name, labels, annotations)
        obj["metadata"]["generation"] = 1
        obj["spec"] = {"containers": [{"name": "app", "image": "app:1"}]}
        if node is not None:
            obj["spec"]["nodeName"] = node
        obj["status"] = {"phase": phase}
        return self._store("pods", "ADDED", obj, None)

    def update_pod(
        self,
        namespace: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        node: str | None = None,
        phase: str | None = None,
    ) -> dict[str, Any]:
        """Replace whichever of labels, annotations, node and phase are given."""
        obj = self._update("pods", namespace, name, None, labels, annotations, store=False)
        if node is not None:
            obj["spec"]["nodeName"] = node
        if phase is not None:
            obj["status"]["phase"] = phase
        return self._store("pods", "MODIFIED", obj, self.objects[("pods", namespace, name)])

    def terminate_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """Start a graceful deletion: the Pod stays, with a deletionTimestamp, as while
        its containers are being stopped."""
        prev = self._get("pods", namespace, name)
        obj = copy.deepcopy(prev)
        obj["metadata"]["deletionTimestamp"] = _now()
        obj["metadata"]["deletionGracePeriodSeconds"] = 30
        return self._store("pods", "MODIFIED", obj, prev)

    def delete_pod(self, namespace: str, name: str) -> None:
        self._delete("pods", namespace, name)

    def create_node(self, name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
        obj = self._new_object("nodes", None, name, labels, None)
        obj["metadata"]["labels"].setdefault("kubernetes.io/hostname", name)
        obj["spec"] = {}
        obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
        return self._store("nodes", "ADDED", obj, None)

    def update_node(self, name: str, *, labels: dict[str, str]) -> dict[str, Any]:
        return self._update("nodes", "", name, None, labels, None)

    def delete_node(self, name: str) -> None:
        self._delete("nodes", "", name)

    # --- object controls: any kind, with the HTTP API's rules ---

    def create(
        self, resource: str, body: dict[str, Any], *, manager: str = "kubectl-client-side-apply"
    ) -> dict[str, Any]:
        """Create as a POST would (in the body's namespace); raises ApiError."""
        res = self._resource(resource)
        namespace = body.get("metadata", {}).get("namespace", "default") if res.namespaced else None
        return self._create(res, namespace, body, manager)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of the object, or None."""
        obj = self.objects.get((self._resource(resource).key, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def replace(
        self,
        resource: str,
        body: dict[str, Any],
        *,
        subresource: str | None = None,
        manager: str = "kubectl-client-side-apply",
    ) -> dict[str, Any]:
        """Replace as a PUT would; raises ApiError (409 on a stale resourceVersion)."""
        res = self._resource(resource)
        meta = body.get("metadata", {})
        namespace = meta.get("namespace", "default") if res.namespaced else None
        return self._replace(res, namespace, meta.get("name", ""), body, subresource, manager)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str | None = None,
        manager: str = "kubectl-client-side-apply",
    ) -> dict[str, Any]:
        """Patch as a PATCH would; raises ApiError."""
        res = self._resource(resource)
        return self._patch(res, namespace, name, content_type, patch, subresource, manager)

    def delete(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete as a DELETE would: an object with finalizers only gets its
        deletionTimestamp. Returns the object as it is now."""
        return self._delete_object(self._resource(resource), namespace, name)

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every Event posted (``v1`` and ``events.k8s.io/v1``), oldest first."""
        found = [
            copy.deepcopy(obj)
            for (res, ns, _), obj in self.objects.items()
            if res in EVENT_RESOURCES and namespace in (None, ns)
        ]
        return sorted(found, key=lambda o: int(o["metadata"]["resourceVersion"]))

    # --- ServiceAccount tokens (TokenReview) ---

    def issue_token(
        self,
        namespace: str,
        pod: str,
        *,
        audiences: Iterable[str] = (API_AUDIENCE,),
        expires_in: float = 3600.0,
        service_account: str = "default",
    ) -> str:
        """A ServiceAccount token bound to an existing pod, as the kubelet requests it for
        a projected token volume (negative ``expires_in``: already expired)."""
        obj = self._get("pods", namespace, pod)
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": list(audiences),
            "exp": now + int(expires_in),
            "iat": now,
            "iss": API_AUDIENCE,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod, "uid": obj["metadata"]["uid"]},
                "serviceaccount": {
                    "name": service_account,
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_account}")),
                },
            },
            "nbf": now,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        node = obj["spec"].get("nodeName")
        if node:
            claims["kubernetes.io"]["node"] = {"name": node, "uid": str(uuid.uuid4())}
        header = _b64url(json.dumps({"alg": "RS256", "kid": "standin"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        token = f"{header}.{payload}.{_b64url(secrets.token_bytes(64))}"
        self.service_tokens[token] = claims
        return token

    def review_token(self, token: Any, audiences: Any = None) -> dict[str, Any]:
        """The ``status`` a TokenReview of ``token`` gets, as the real API server decides it."""
        claims = self.service_tokens.get(token) if isinstance(token, str) else None
        if claims is None:
            return _unauthenticated("square/go-jose: error in cryptographic primitive")
        wanted = list(audiences) if isinstance(audiences, list) and audiences else [API_AUDIENCE]
        common = [a for a in wanted if a in claims["aud"]]
        if not common:
            return _unauthenticated(
                f"token audiences {json.dumps(claims['aud'])} is invalid for the target "
                f"audiences {json.dumps(wanted)}"
            )
        if time.time() >= claims["exp"]:
            return _unauthenticated("service account token has expired")
        bound = claims["kubernetes.io"]
        namespace, pod = bound["namespace"], bound["pod"]
        current = self.objects.get(("pods", namespace, pod["name"]))
        if current is None or current["metadata"]["uid"] != pod["uid"]:
            # The pod is gone (or is another pod of the same name): the token dies with it.
            return _unauthenticated("service account token has been invalidated")
        extra = {
            "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"],
            "authentication.kubernetes.io/pod-name": [pod["name"]],
            "authentication.kubernetes.io/pod-uid": [pod["uid"]],
        }
        if "node" in bound:
            extra["authentication.kubernetes.io/node-name"] = [bound["node"]["name"]]
            extra["authentication.kubernetes.io/node-uid"] = [bound["node"]["uid"]]
        user = {
            "username": claims["sub"],
            "uid": bound["serviceaccount"]["uid"],
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "extra": extra,
        }
        return {"authenticated": True, "user": user, "audiences": common}

    def token_reviews(self) -> list[Request]:
        return [r for r in self.requests if r.path == TOKEN_REVIEW_PATH and r.method == "POST"]

    # --- stream and failure controls ---

    def compact(self) -> None:
        """Forget all history, so a watch from any older resourceVersion gets 410 (and so
        does a pending list ``continue`` token, whose snapshot is gone too)."""
        self.history.clear()
        self._snapshots.clear()
        self.compacted_rv = self.rv

    def end_watches(self, *, abrupt: bool = False) -> int:
        """End every open watch: cleanly, as at timeoutSeconds, or by cutting the
        connection mid-stream. Returns how many were ended."""
        watches = list(self._watches)
        self._watches.clear()
        for w in watches:
            w.queue.put_nowait(("drop" if abrupt else "end", None))
        return len(watches)

    def send_bookmarks(self) -> int:
        """Send a BOOKMARK at the current resourceVersion to every watch that asked for
        them. Returns how many were sent."""
        sent = 0
        for w in self._watches:
            if w.bookmarks:
                res = self.resources[w.resource]
                bookmark = {
                    "kind": res.kind,
                    "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(self.rv), "creationTimestamp": None},
                }
                w.queue.put_nowait(("event", {"type": "BOOKMARK", "object": bookmark}))
                sent += 1
        return sent

    def fail_next(self, n: int = 1, status: int = 500, *, watches_only: bool = False) -> None:
        """Answer the next n requests (or only watch requests) with this HTTP status and
        a Status body (429 also carries ``Retry-After: 1``)."""
        self._faults.extend([("status", status, watches_only)] * n)

    def drop_next(self, n: int = 1, *, watches_only: bool = False) -> None:
        """Close the connection of the next n requests (or watch requests) unanswered."""
        self._faults.extend([("drop", 0, watches_only)] * n)

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def lists(self, resource: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.is_list and _matches(r, resource)]

    def watch_requests(self, resource: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.watch and _matches(r, resource)]

    def writes(self, resource: str | None = None) -> list[Request]:
        """POST, PUT, PATCH and DELETE requests (to ``resource``'s plural), in order."""
        return [
            r
            for r in self.requests
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and _matches(r, resource)
        ]

    async def wait_for_watches(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least n watches are open (a client has (re)connected)."""
        deadline = time.monotonic() + timeout
        while self.open_watches < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.open_watches} watches open, wanted {n}")
            await asyncio.sleep(0.005)

    # --- internals: objects ---

    def _resource(self, key: str) -> Resource:
        try:
            return self.resources[key]
        except KeyError:
            raise ApiError(404, "the server could not find the requested resource") from None

    def _require_namespace(self, namespace: str) -> None:
        if ("namespaces", "", namespace) not in self.objects:
            raise ApiError(404, f'namespaces "{namespace}" not found')

    def _get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((resource, namespace or "", name))
        if obj is None:
            res = self.resources[resource]
            what = f"{res.plural}.{res.group}" if res.group else res.plural
            raise ApiError(404, f'{what} "{name}" not found')
        return obj

    def _new_object(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        labels: dict[str, str] | None,
        annotations: dict[str, str] | None,
    ) -> dict[str, Any]:
        key = (resource, namespace or "", name)
        if key in self.objects:
            raise ApiError(409, f'{resource} "{name}" already exists', "AlreadyExists")
        metadata: dict[str, Any] = {"name": name}
        if namespace is not None:
            metadata["namespace"] = namespace
        metadata.update(
            uid=str(uuid.uuid4()),
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            creationTimestamp=_now(),
        )
        res = self.resources[resource]
        return {"kind": res.kind, "apiVersion": res.api_version, "metadata": metadata}

    def _update(
        self,
        resource: str,
        namespace: str,
        name: str,
        data: dict[str, str] | None,
        labels: dict[str, str] | None,
        annotations: dict[str, str] | None,
        *,
        store: bool = True,
    ) -> dict[str, Any]:
        prev = self._get(resource, namespace, name)
        obj = copy.deepcopy(prev)
        if data is not None:
            obj["data"] = dict(data)
        if labels is not None:
            obj["metadata"]["labels"] = dict(labels)
        if annotations is not None:
            obj["metadata"]["annotations"] = dict(annotations)
        return self._store(resource, "MODIFIED", obj, prev) if store else obj

    def _delete(self, resource: str, namespace: str, name: str) -> None:
        prev = self._get(resource, namespace, name)
        obj = copy.deepcopy(prev)
        self._store(resource, "DELETED", obj, prev)

    def _store(
        self, resource: str, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None
    ) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        key = (resource, meta.get("namespace", ""), meta["name"])
        if etype == "DELETED":
            del self.objects[key]
        else:
            self.objects[key] = obj
        change = _Change(self.rv, resource, etype, obj, prev)
        self.history.append(change)
        for w in self._watches:
            event = _filter(change, w)
            if event is not None:
                w.queue.put_nowait(("event", event))
        return copy.deepcopy(obj)

    def _select(self, resource: str, namespace: str | None, match: Match) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource and namespace in (None, ns) and match(obj)
        ]

    # --- internals: writes with the API's rules ---

    def _create(
        self, res: Resource, namespace: str | None, body: Any, manager: str
    ) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "the body must be an object with a metadata map")
        self._check_type(res, body)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if meta.get("resourceVersion"):
            raise ApiError(400, "resourceVersion should not be set on objects to be created")
        if res.namespaced:
            assert namespace is not None
            if meta.setdefault("namespace", namespace) != namespace:
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request",
                )
            self._require_namespace(namespace)
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422, "metadata.name: Required value: name or generateName is required"
                )
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (res.key, namespace or "", meta["name"])
        if key in self.objects:
            what = f"{res.plural}.{res.group}" if res.group else res.plural
            raise ApiError(409, f'{what} "{meta["name"]}" already exists', "AlreadyExists")
        if res.key in EVENT_RESOURCES:
            _check_event(res, obj)
        for server_owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(server_owned, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if res.has_generation:
            meta["generation"] = 1
        if res.status:
            # The status subresource's rule: a create sets no status.
            obj.pop("status", None)
            if res.kind == "Pod":
                obj["status"] = {"phase": "Pending"}
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        _manage(obj, manager, None)
        return self._store(res.key, "ADDED", obj, None)

    def _replace(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None,
        manager: str,
    ) -> dict[str, Any]:
        current = self._get(res.key, namespace, name)
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "the body must be an object with a metadata map")
        self._check_type(res, body)
        if body["metadata"].get("name") != name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        rv = body["metadata"].get("resourceVersion")
        if not rv and not res.builtin:
            raise ApiError(
                422, "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
            )
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise _conflict(res, name)
        return self._write(res, current, body, subresource, manager)

    def _patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str | None,
        manager: str,
    ) -> dict[str, Any]:
        current = self._get(res.key, namespace, name)
        if content_type == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise ApiError(400, "a merge patch must be a JSON object")
            patched = _merge_patch(current, patch)
        elif content_type == JSON_PATCH:
            if not isinstance(patch, list):
                raise ApiError(
                    400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                )
            try:
                patched = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise ApiError(422, f"the server rejected our request: {e}") from None
        else:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}",
            )
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise ApiError(422, "the patch leaves no object")
        rv = patched["metadata"].get("resourceVersion")
        if rv != current["metadata"]["resourceVersion"]:
            raise _conflict(res, name)  # a patch that names a resourceVersion is a precondition
        return self._write(res, current, patched, subresource, manager)

    def _write(
        self,
        res: Resource,
        current: dict[str, Any],
        incoming: dict[str, Any],
        subresource: str | None,
        manager: str,
    ) -> dict[str, Any]:
        """Store what a PUT or PATCH asked, under the subresource's rules."""
        if subresource not in (None, "status") or (subresource == "status" and not res.status):
            raise ApiError(404, "the server could not find the requested resource")
        old_meta = current["metadata"]
        if subresource == "status":
            obj = copy.deepcopy(current)
            if incoming.get("status") is None:
                obj.pop("status", None)
            else:
                obj["status"] = copy.deepcopy(incoming["status"])
        else:
            obj = copy.deepcopy(incoming)
            meta = obj["metadata"]
            # What only the server sets.
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation", "namespace"):
                meta.pop(key, None)
                if key in old_meta:
                    meta[key] = old_meta[key]
            meta.pop("deletionGracePeriodSeconds", None)
            if "deletionGracePeriodSeconds" in old_meta:
                meta["deletionGracePeriodSeconds"] = old_meta["deletionGracePeriodSeconds"]
            if res.status:
                obj.pop("status", None)
                if "status" in current:
                    obj["status"] = copy.deepcopy(current["status"])
            if res.has_generation and _without(obj, "metadata", "status") != _without(
                current, "metadata", "status"
            ):
                meta["generation"] = old_meta.get("generation", 1) + 1
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        obj["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        obj["metadata"]["managedFields"] = copy.deepcopy(old_meta.get("managedFields", []))
        if old_meta.get("deletionTimestamp"):
            added = set(obj["metadata"].get("finalizers") or []) - set(
                old_meta.get("finalizers") or []
            )
            if added:
                raise ApiError(
                    422,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the "
                    "object is being deleted",
                )
        if obj == current:
            return copy.deepcopy(current)  # nothing changed: nothing stored, no event
        _manage(obj, manager, subresource)
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            return self._store(res.key, "DELETED", obj, current)
        return self._store(res.key, "MODIFIED", obj, current)

    def _delete_object(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        current = self._get(res.key, namespace, name)
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(current)
            obj = copy.deepcopy(current)
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._store(res.key, "MODIFIED", obj, current)
        return self._store(res.key, "DELETED", copy.deepcopy(current), current)

    @staticmethod
    def _check_type(res: Resource, body: dict[str, Any]) -> None:
        if body.get("apiVersion", res.api_version) != res.api_version:
            raise ApiError(
                400,
                f"the API version in the data ({body['apiVersion']}) does not match the "
                f"expected API version ({res.api_version})",
            )
        if body.get("kind", res.kind) != res.kind:
            raise ApiError(400, f"the kind in the data ({body['kind']}) does not match {res.kind}")

    # --- internals: HTTP ---

    def _route(self, path: str) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) for a request path."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        res = next(
            (
                r
                for r in self.resources.values()
                if (r.group, r.version, r.plural) == (group, version, rest[0])
            ),
            None,
        )
        if res is None or (namespace is not None and not res.namespaced):
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        return res, namespace, name, subresource

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        body: Any = None
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        try:
            route = self._route(request.path)
        except ApiError:
            route = None
        self.requests.append(
            Request(
                request.path,
                query,
                request.method,
                route[2] if route else None,
                route[3] if route else None,
                request.content_type,
                body,
            )
        )
        is_watch = _bool(query.get("watch"))
        fault = next((f for f in self._faults if is_watch or not f[2]), None)
        if fault is not None:
            self._faults.remove(fault)
            what, code, _ = fault
            if what == "drop":
                _abort(request)
            reason = _REASONS.get(code, "InternalError")
            headers = {"Retry-After": "1"} if code == 429 else {}
            return web.json_response(
                _status(code, reason, "injected failure"), status=code, headers=headers
            )
        try:
            if request.path == TOKEN_REVIEW_PATH and request.method == "POST":
                return web.json_response(_token_review(self, body), status=201)
            if route is None:
                raise ApiError(404, "the server could not find the requested resource")
            if isinstance(body, bytes):
                raise ApiError(400, "the request body is not JSON")
            return await self._serve(request, query, body, *route)
        except ApiError as e:
            return web.json_response(e.status(), status=e.code)

    async def _serve(
        self,
        request: web.Request,
        query: dict[str, str],
        body: Any,
        res: Resource,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
    ) -> web.StreamResponse:
        method = request.method
        manager = query.get("fieldManager") or request.headers.get("User-Agent", "").split("/")[0]
        if name is None:
            if method == "GET":
                try:
                    match = _matcher(res, query.get("labelSelector"), query.get("fieldSelector"))
                except ValueError as e:
                    raise ApiError(400, str(e)) from None
                if _bool(query.get("watch")):
                    return await self._watch(request, res, namespace, match, query)
                return self._list(res, namespace, match, query)
            if method == "POST" and (namespace is not None or not res.namespaced):
                return web.json_response(self._create(res, namespace, body, manager), status=201)
        elif method == "GET" and subresource in (None, "status"):
            if subresource == "status" and not res.status:
                raise ApiError(404, "the server could not find the requested resource")
            return web.json_response(copy.deepcopy(self._get(res.key, namespace, name)))
        elif method == "PUT":
            return web.json_response(
                self._replace(res, namespace, name, body, subresource, manager)
            )
        elif method == "PATCH":
            return web.json_response(
                self._patch(res, namespace, name, request.content_type, body, subresource, manager)
            )
        elif method == "DELETE" and subresource is None:
            obj = self._delete_object(res, namespace, name)
            if obj["metadata"].get("deletionTimestamp") or res.builtin:
                return web.json_response(obj)
            details = {
                "name": name,
                "group": res.group,
                "kind": res.plural,
                "uid": obj["metadata"]["uid"],
            }
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            )
        raise ApiError(405, f"{method} is not allowed here")

    def _list(
        self, res: Resource, namespace: str | None, match: Match, query: dict[str, str]
    ) -> web.Response:
        if token := query.get("continue"):
            if token not in self._snapshots:
                return web.json_response(
                    _status(410, "Expired", "The provided continue parameter is too old"),
                    status=410,
                )
            rv, items = self._snapshots.pop(token)
        else:
            rv, items = self.rv, self._select(res.key, namespace, match)
        if res.builtin:
            for item in items:
                # The real server leaves kind/apiVersion off built-in kinds' list items.
                item.pop("kind", None)
                item.pop("apiVersion", None)
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            items, rest = items[:limit], items[limit:]
            token = base64.urlsafe_b64encode(
                json.dumps({"rv": rv, "n": next(self._tokens)}).encode()
            ).decode()
            self._snapshots[token] = (rv, rest)
            metadata["continue"] = token
            metadata["remainingItemCount"] = len(rest)
        body = {
            "kind": res.kind + "List",
            "apiVersion": res.api_version,
            "metadata": metadata,
            "items": items,
        }
        return web.json_response(body)

    async def _watch(
        self,
        request: web.Request,
        res: Resource,
        namespace: str | None,
        match: Match,
        query: dict[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        bookmarks = _bool(query.get("allowWatchBookmarks"))
        w = _Watch(res.key, namespace, match, bookmarks)

        since = query.get("resourceVersion") or "0"
        if since == "0":
            initial = [
                {"type": "ADDED", "object": obj} for obj in self._select(res.key, namespace, match)
            ]
        elif int(since) < self.compacted_rv:
            message = f"too old resource version: {since} ({self.compacted_rv})"
            error = {"type": "ERROR", "object": _status(410, "Expired", message)}
            await resp.write(json.dumps(error).encode() + b"\n")
            await resp.write_eof()
            return resp
        else:
            initial = [
                e for c in self.history if c.rv > int(since) and (e := _filter(c, w)) is not None
            ]
        # Registered in the same step as the replay was computed (no await between), so
        # no change can fall between the two.
        self._watches.add(w)
        for event in initial:
            w.queue.put_nowait(("event", event))

        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    what, event = await asyncio.wait_for(w.queue.get(), remaining)
                except TimeoutError:
                    break
                if what == "end":
                    break
                if what == "drop":
                    _abort(request)  # no terminating chunk: a cut stream
                await resp.write(json.dumps(event).encode() + b"\n")
            await resp.write_eof()
        except ConnectionResetError:
            _abort(request)  # the client went away first
        finally:
            self._watches.discard(w)
        return resp


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unauthenticated(reason: str) -> dict[str, Any]:
    # As the real server answers: "authenticated" left out (false), an empty user.
    return {"user": {}, "error": f"[invalid bearer token, {reason}]"}


def _token_review(standin: KubeStandin, body: Any) -> dict[str, Any]:
    spec = body.get("spec") if isinstance(body, dict) else None
    if not isinstance(spec, dict) or not spec.get("token"):
        raise ApiError(422, "spec.token: Required value")
    return {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": standin.review_token(spec["token"], spec.get("audiences")),
    }


def _conflict(res: Resource, name: str) -> ApiError:
    what = f"{res.plural}.{res.group}" if res.group else res.plural
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )


def _check_event(res: Resource, event: dict[str, Any]) -> None:
    """The checks of the real server's Event validation that a client is likely to trip."""
    namespace = event["metadata"].get("namespace")
    if res.group:  # events.k8s.io/v1
        involved = event.get("regarding") or {}
        for required in ("reportingController", "reportingInstance", "action", "eventTime"):
            if not event.get(required):
                raise ApiError(422, f"{required}: Required value")
    else:
        involved = event.get("involvedObject") or {}
    if involved.get("namespace") and involved["namespace"] != namespace:
        raise ApiError(
            422, "involvedObject.namespace: Invalid value: does not match event.namespace"
        )
    if event.get("type") not in (None, "", "Normal", "Warning"):
        raise ApiError(422, f"type: Unsupported value: {event['type']!r}")


def _manage(obj: dict[str, Any], manager: str, subresource: str | None) -> None:
    """Record the write in managedFields: one entry per (manager, subresource)."""
    entries = obj["metadata"].setdefault("managedFields", [])
    entries[:] = [
        e for e in entries if (e.get("manager"), e.get("subresource")) != (manager, subresource)
    ]
    entry = {
        "manager": manager or "unknown",
        "operation": "Update",
        "apiVersion": obj["apiVersion"],
        "time": _now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    }
    if subresource:
        entry["subresource"] = subresource
    entries.append(entry)


def _abort(request: web.Request) -> NoReturn:
    """Close the connection and end the handler without answering (quietly: aiohttp
    treats a cancelled handler as a client that went away)."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError


def _matches(r: Request, resource: str | None) -> bool:
    if resource is None:
        return True
    plural = resource.split(".", 1)[0]
    return r.path.endswith("/" + plural) or f"/{plural}/" in r.path


def _filter(change: _Change, w: _Watch) -> dict[str, Any] | None:
    """The event watch w sees for a change, as the real watch cache decides it."""
    if change.resource != w.resource:
        return None
    ns = change.obj["metadata"].get("namespace")
    if w.namespace is not None and ns != w.namespace:
        return None
    now = change.type != "DELETED" and w.match(change.obj)
    before = change.prev is not None and w.match(change.prev)
    if now and not before:
        return {"type": "ADDED", "object": copy.deepcopy(change.obj)}
    if now and before:
        return {"type": "MODIFIED", "object": copy.deepcopy(change.obj)}
    if before:
        # Deleted, or no longer selected: the last content at the new version (for a
        # deletion that is the object as deleted, e.g. with its finalizers emptied).
        obj = copy.deepcopy(change.obj if change.type == "DELETED" else change.prev)
        assert obj is not None
        obj["metadata"]["resourceVersion"] = str(change.rv)
        return {"type": "DELETED", "object": obj}
    return None


def write_kubeconfig(path: Path | str, server: str, namespace: str = "default") -> Path:
    """Write a kubeconfig whose current context points at server (token ignored)."""
    path = Path(path)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": server}}],
        "users": [{"name": "standin", "user": {"token": "standin-token"}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
            }
        ],
        "current-context": "standin",
    }
    # JSON is valid YAML, and keeps this module free of a yaml import.
    path.write_text(json.dumps(config, indent=2))
    return path


class ThreadProxy:
    """Calls the stand-in's controls on its own loop from another thread."""

    def __init__(self, standin: KubeStandin, loop: asyncio.AbstractEventLoop) -> None:
        self._standin = standin
        self._loop = loop

    @property
    def url(self) -> str:
        return self._standin.url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._standin, name)
        if not callable(attr):
            return self.call(lambda: getattr(self._standin, name))

        def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(attr):
                fut = asyncio.run_coroutine_threadsafe(attr(*args, **kwargs), self._loop)
                return fut.result()
            return self.call(lambda: attr(*args, **kwargs))

        return call

    def call(self, fn: Callable[[], Any]) -> Any:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)


@contextlib.contextmanager
def run_in_thread() -> Iterator[ThreadProxy]:
    """Run a stand-in on its own loop in a daemon thread; yields a thread-safe proxy."""
    loop = asyncio.new_event_loop()
    standin: KubeStandin | None = None
    ready = threading.Event()

    def main() -> None:
        nonlocal standin
        asyncio.set_event_loop(loop)
        standin = KubeStandin()
        loop.run_until_complete(standin.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="k8s-standin", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("stand-in API server did not start")
    assert standin is not None
    try:
        yield ThreadProxy(standin, loop)
    finally:
        asyncio.run_coroutine_threadsafe(standin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
