"""Which pods in the cluster an experiment's selector picks, asked of the Kubernetes API.

This follows Chaos Mesh v0.9's selector (``pkg/utils/selector.go``, ``SelectPods``):

- Pods named one by one (``selector.pods``) are the whole answer: each is looked up
  by name and no other part of the selector applies. Chaos Mesh v0.9 failed the
  experiment when a named pod did not exist; later versions skip it with a log line,
  and so does this (the engine then records what it could select).
- Otherwise the label selector and the field selectors go to the API server, one list
  per namespace (every namespace when none is named), and the rest is filtered here:
  annotations (``annotationSelectors``: each key must have that value) and phases
  (``podPhaseSelectors``). Chaos Mesh read the namespace and phase lists as terms of a
  label selector, where ``Running`` includes and ``!Failed`` excludes (with no
  including term, everything not excluded is in); this does the same, though
  ``parse_manifest`` lets only plain names through today.
- Nodes (``nodes``: names; ``nodeSelectors``: node labels) came after v0.9, in Chaos
  Mesh 1.0: the pod must run on one of the named nodes or on a node whose labels
  match; when no node does, nothing is selected.
- An experiment that selects no pod failed in Chaos Mesh v0.9 ("no pod is selected");
  that decision is the engine's: this returns the empty list.

chaosbus adds one rule: a pod being deleted (``metadata.deletionTimestamp``) is never
a candidate, since its sidecar is about to go and faults set on it would only be
recorded as lost.

Every list is paginated (``limit``/``continue``) so a large cluster is read in bounded
pieces, and responses are read as JSON rather than deserialized into models (as in
``template_watcher.kube_source``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from .kubeapi import bind, call_json

if TYPE_CHECKING:
    from chaosbus.experiments.spec import PodSelector

PAGE_SIZE = 500
LIST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
# A continue token expires (410) when a paginated list takes longer than the server keeps
# its snapshot; the list then starts over, this many times at most.
RESTARTS = 2


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    phase: str = ""
    node: str = ""  # spec.nodeName; empty while unscheduled

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class KubePods:
    """Pod candidates for a selector, from the Kubernetes API (list pods and nodes only)."""

    def __init__(self, api: ApiClient, *, log: Any = None, page_size: int = PAGE_SIZE) -> None:
        self.core = client.CoreV1Api(api)
        self.log = log
        self.page_size = page_size

    async def candidates(self, selector: PodSelector) -> list[PodInfo]:
        """Every pod the selector picks, sorted by namespace and name."""
        if selector.pods:
            found = await self._named(selector.pods)
        else:
            found = await self._selected(selector)
        pods = {p.ref: p for p in found}
        return [pods[ref] for ref in sorted(pods)]

    # --- named pods ---

    async def _named(self, pods: Iterable[tuple[str, Iterable[str]]]) -> list[PodInfo]:
        out: list[PodInfo] = []
        for namespace, names in pods:
            wanted = set(names)
            if not wanted:
                continue
            # One name: ask for just that pod. Several: one list of the namespace.
            fields = f"metadata.name={_escape(next(iter(wanted)))}" if len(wanted) == 1 else None
            items = await self._list_pods(namespace, labels=None, fields=fields)
            got = {p.name: p for p in items if p.name in wanted}
            out.extend(got.values())
            missing = sorted(wanted - set(got))
            if missing and self.log is not None:
                self.log.info("selected pods not found", namespace=namespace, pods=missing)
        return out

    # --- selectors ---

    async def _selected(self, selector: PodSelector) -> list[PodInfo]:
        include_ns, exclude_ns = _terms(selector.namespaces)
        labels = selector.labels or None
        fields = ",".join(f"{k}={_escape(v)}" for k, v in selector.fields) or None
        wanted = dict(selector.annotations)
        items: list[PodInfo] = []
        namespaces: list[str | None] = [*sorted(include_ns)] or [None]  # None: all
        for namespace in namespaces:
            items += await self._list_pods(
                namespace, labels=labels, fields=fields, annotations=wanted
            )
        items = [p for p in items if p.namespace not in exclude_ns]

        include_phase, exclude_phase = _terms(selector.phases)
        items = [
            p
            for p in items
            if (not include_phase or p.phase in include_phase) and p.phase not in exclude_phase
        ]
        if selector.nodes or selector.node_selectors:
            nodes = set(selector.nodes)
            if selector.node_selectors:
                nodes |= await self._node_names(
                    ",".join(f"{k}={v}" for k, v in selector.node_selectors)
                )
            items = [p for p in items if p.node and p.node in nodes]
        return items

    async def _node_names(self, labels: str) -> set[str]:
        names: set[str] = set()
        for node in await self._pages(self.core.list_node, label_selector=labels):
            names.add(node["metadata"]["name"])
        return names

    async def _list_pods(
        self,
        namespace: str | None,
        *,
        labels: str | None,
        fields: str | None,
        annotations: Mapping[str, str] | None = None,
    ) -> list[PodInfo]:
        """Pods of one namespace (or all) that carry ``annotations``, less those being
        deleted."""
        params: dict[str, Any] = {}
        if labels:
            params["label_selector"] = labels
        if fields:
            params["field_selector"] = fields
        if namespace is None:
            fn: Callable[..., Awaitable[Any]] = self.core.list_pod_for_all_namespaces
        else:
            fn = bind(self.core.list_namespaced_pod, namespace)
        return [
            _info(pod)
            for pod in await self._pages(fn, **params)
            if not pod["metadata"].get("deletionTimestamp")
            and _annotated(pod["metadata"].get("annotations") or {}, annotations or {})
        ]

    async def _pages(self, fn: Callable[..., Awaitable[Any]], **params: Any) -> list[dict]:
        """Every item of a list, page by page; starts over if the continue token expires."""
        for attempt in range(RESTARTS + 1):
            items: list[dict] = []
            token: str | None = None
            try:
                while True:
                    page = {"limit": self.page_size, **params}
                    if token:
                        page["_continue"] = token
                    body = await call_json(fn, timeout=LIST_TIMEOUT, **page)
                    items.extend(body.get("items") or [])
                    token = (body.get("metadata") or {}).get("continue")
                    if not token:
                        return items
            except ApiException as e:
                if e.status != 410 or token is None or attempt == RESTARTS:
                    raise
                if self.log is not None:
                    self.log.info("pod list continue token expired, listing again")
        raise AssertionError("unreachable")


def _info(pod: dict[str, Any]) -> PodInfo:
    meta = pod["metadata"]
    return PodInfo(
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        phase=(pod.get("status") or {}).get("phase", ""),
        node=(pod.get("spec") or {}).get("nodeName", ""),
    )


def _annotated(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in wanted.items())


def _terms(values: Iterable[str]) -> tuple[set[str], set[str]]:
    """(included, excluded): ``x`` includes, ``!x`` excludes, as Chaos Mesh read them."""
    include, exclude = set(), set()
    for value in values:
        if value.startswith("!"):
            exclude.add(value[1:].strip())
        else:
            include.add(value.strip())
    return include, exclude


def _escape(value: str) -> str:
    """A field selector value as Kubernetes' fields.EscapeValue writes it."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
