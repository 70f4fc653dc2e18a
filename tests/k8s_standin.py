"""A small stand-in Kubernetes API server for ConfigMaps and Namespaces.

No real API server can run on the test machines, so the kubernetes seam is tested with
the real kubernetes-asyncio client against this server, which speaks the real list/watch
wire format over plain HTTP on a loopback port.

What it implements (and nothing more):

* ``GET /api/v1/configmaps``, ``GET /api/v1/namespaces/{ns}/configmaps`` and
  ``GET /api/v1/namespaces`` as list or watch (``watch=true``; booleans are parsed like
  Go's ParseBool, since the Python client sends ``True``), with ``labelSelector``
  (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``,
  comma-joined), ``limit``/``continue`` (a consistent snapshot per continue token),
  ``resourceVersion``, ``allowWatchBookmarks`` and ``timeoutSeconds``.
* Lists: ``{"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion":
  ...}, "items": [...]}``. Like the real server, items inside a list carry no ``kind`` or
  ``apiVersion`` (kubernetes/kubernetes#3030); objects in watch events do.
* Watches: HTTP 200, chunked, one JSON event per line. Without a resourceVersion (or
  with "0") the current objects are first sent as ADDED events, as the real server
  does; with one, every retained event after it is replayed. A resourceVersion older
  than the retained history gets the real server's answer: a 200 stream holding one
  ``ERROR`` event whose object is a ``Status`` with code 410, reason ``Expired``.
  Events are filtered like the watch cache does: an object that stops matching the
  selector is sent as DELETED (previous content, new resourceVersion), one that starts
  matching as ADDED.
* One global, monotonically increasing resourceVersion shared by every object.
* Failures: 500/429 answers with a ``Status`` body (429 with ``Retry-After``), dropped
  connections before any answer, and watches ended cleanly (as at ``timeoutSeconds``)
  or cut mid-stream.

Not implemented: authentication (the bearer token is ignored), field selectors, writes
over HTTP (tests change objects through the Python controls), GET of single objects,
``resourceVersionMatch``/``sendInitialEvents``, a namespace's Terminating phase (a deleted
namespace and its ConfigMaps vanish at once), future resourceVersions on watches (they
simply wait), list ``resourceVersion`` semantics (lists always read the current state),
TLS and protobuf.

The controls are plain methods that must run on the server's event loop thread; tests
that drive the server from another thread use :func:`run_in_thread`, whose proxy
marshals each call onto that loop.
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

KINDS: dict[str, tuple[str, bool]] = {
    # resource -> (kind, namespaced)
    "configmaps": ("ConfigMap", True),
    "namespaces": ("Namespace", False),
}
DEFAULT_WATCH_TIMEOUT = 1800.0  # the real server's minRequestTimeout
_REASONS = {410: "Expired", 429: "TooManyRequests", 503: "ServiceUnavailable"}

# --- label selectors ---------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"""^\s*(?:
        (?P<not>!)\s*(?P<nkey>[^\s=!,()]+)
      | (?P<skey>[^\s=!,()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
      | (?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s=!,()]*))?
    )\s*$""",
    re.VERBOSE,
)

Selector = Callable[[dict[str, str]], bool]


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
    selector: Selector
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)


@dataclass(frozen=True)
class Request:
    """One request the server saw, for tests that check what the client asked."""

    path: str
    query: dict[str, str]

    @property
    def watch(self) -> bool:
        return _bool(self.query.get("watch"))


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


class KubeStandin:
    """The stand-in server. Use ``async with KubeStandin() as k8s`` inside a running loop."""

    def __init__(self) -> None:
        self.rv = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[_Change] = []
        self.compacted_rv = 0  # watches from before this resourceVersion get 410
        self.requests: list[Request] = []
        self._watches: set[_Watch] = set()
        # (what, status, watches only): what is "status" or "drop"; applied in order.
        self._faults: list[tuple[str, int, bool]] = []
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._tokens = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        for name in ("default", "kube-system"):
            self.create_namespace(name)

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/configmaps", self._handle)
        app.router.add_get("/api/v1/namespaces/{namespace}/configmaps", self._handle)
        app.router.add_get("/api/v1/namespaces", self._handle)
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

    # --- object controls ---

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
        for ns, cm in [k[1:] for k in self.objects if k[0] == "configmaps" and k[1] == name]:
            self.delete_configmap(ns, cm)
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
        if ("namespaces", "", namespace) not in self.objects:
            raise LookupError(f'namespaces "{namespace}" not found')
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
                kind = KINDS[w.resource][0]
                bookmark = {
                    "kind": kind,
                    "apiVersion": "v1",
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
        return [r for r in self.requests if not r.watch and _matches(r, resource)]

    def watch_requests(self, resource: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.watch and _matches(r, resource)]

    async def wait_for_watches(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least n watches are open (a client has (re)connected)."""
        deadline = time.monotonic() + timeout
        while self.open_watches < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.open_watches} watches open, wanted {n}")
            await asyncio.sleep(0.005)

    # --- internals: objects ---

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
            raise FileExistsError(f'{resource} "{name}" already exists')
        metadata: dict[str, Any] = {"name": name}
        if namespace is not None:
            metadata["namespace"] = namespace
        metadata.update(
            uid=str(uuid.uuid4()),
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            creationTimestamp=_now(),
        )
        return {"kind": KINDS[resource][0], "apiVersion": "v1", "metadata": metadata}

    def _update(
        self,
        resource: str,
        namespace: str,
        name: str,
        data: dict[str, str] | None,
        labels: dict[str, str] | None,
        annotations: dict[str, str] | None,
    ) -> dict[str, Any]:
        prev = self.objects[(resource, namespace, name)]
        obj = copy.deepcopy(prev)
        if data is not None:
            obj["data"] = dict(data)
        if labels is not None:
            obj["metadata"]["labels"] = dict(labels)
        if annotations is not None:
            obj["metadata"]["annotations"] = dict(annotations)
        return self._store(resource, "MODIFIED", obj, prev)

    def _delete(self, resource: str, namespace: str, name: str) -> None:
        prev = self.objects[(resource, namespace, name)]
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

    def _select(
        self, resource: str, namespace: str | None, selector: Selector
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource and namespace in (None, ns) and selector(_labels(obj))
        ]

    # --- internals: HTTP ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(Request(request.path, query))
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
        resource = request.path.rsplit("/", 1)[1]
        namespace = request.match_info.get("namespace")
        try:
            selector = parse_selector(query.get("labelSelector"))
        except ValueError as e:
            return web.json_response(_status(400, "BadRequest", str(e)), status=400)
        if is_watch:
            return await self._watch(request, resource, namespace, selector, query)
        return self._list(resource, namespace, selector, query)

    def _list(
        self, resource: str, namespace: str | None, selector: Selector, query: dict[str, str]
    ) -> web.Response:
        if token := query.get("continue"):
            if token not in self._snapshots:
                return web.json_response(
                    _status(410, "Expired", "The provided continue parameter is too old"),
                    status=410,
                )
            rv, items = self._snapshots.pop(token)
        else:
            rv, items = self.rv, self._select(resource, namespace, selector)
        for item in items:
            # The real server leaves kind/apiVersion off list items.
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
            "kind": KINDS[resource][0] + "List",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": items,
        }
        return web.json_response(body)

    async def _watch(
        self,
        request: web.Request,
        resource: str,
        namespace: str | None,
        selector: Selector,
        query: dict[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        bookmarks = _bool(query.get("allowWatchBookmarks"))
        w = _Watch(resource, namespace, selector, bookmarks)

        since = query.get("resourceVersion") or "0"
        if since == "0":
            initial = [
                {"type": "ADDED", "object": obj}
                for obj in self._select(resource, namespace, selector)
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


def _abort(request: web.Request) -> NoReturn:
    """Close the connection and end the handler without answering (quietly: aiohttp
    treats a cancelled handler as a client that went away)."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError


def _matches(r: Request, resource: str | None) -> bool:
    return resource is None or r.path.endswith("/" + resource)


def _filter(change: _Change, w: _Watch) -> dict[str, Any] | None:
    """The event watch w sees for a change, as the real watch cache decides it."""
    if change.resource != w.resource:
        return None
    ns = change.obj["metadata"].get("namespace")
    if w.namespace is not None and ns != w.namespace:
        return None
    now = change.type != "DELETED" and w.selector(_labels(change.obj))
    before = change.prev is not None and w.selector(_labels(change.prev))
    if now and not before:
        return {"type": "ADDED", "object": copy.deepcopy(change.obj)}
    if now and before:
        return {"type": "MODIFIED", "object": copy.deepcopy(change.obj)}
    if before:
        # Deleted, or no longer selected: the previous content at the new version.
        assert change.prev is not None
        obj = copy.deepcopy(change.prev)
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
