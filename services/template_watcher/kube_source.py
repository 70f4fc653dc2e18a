"""List-then-watch of ConfigMaps or Namespaces with kubernetes-asyncio, never giving up.

``watch_objects`` yields a RESET holding every selected object after each (re)list, then
single-object ADDED/MODIFIED/DELETED events. A watch that ends (they all do, after
timeoutSeconds) is resumed from the last resourceVersion seen, BOOKMARKs included, so
nothing is lost, repeated or relisted; only a 410 (the version fell out of the server's
history) forces a relist and a fresh RESET. Other failures are retried with jittered
exponential backoff.

The stream is read here rather than through ``kubernetes_asyncio.watch.Watch`` because,
in 36.1.0, Watch (a) never checks the HTTP status of a watch response (with
``_preload_content=False`` the REST layer does not raise on non-2xx), so a non-JSON
error body would come back as an "event" string; (b) deserializes every object into a
model we would only turn back into a dict; (c) builds a second ApiClient, with its own
aiohttp session, per Watch. The wire format handled is the same as Watch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse
from structlog.typing import FilteringBoundLogger

Kind = Literal["configmaps", "namespaces"]
_OBJECT_KIND: dict[str, str] = {"configmaps": "ConfigMap", "namespaces": "Namespace"}
_CHANGES = ("ADDED", "MODIFIED", "DELETED")

# The server ends each watch after this long; we then resume from the last version.
WATCH_TIMEOUT_SECONDS = 240
PAGE_SIZE = 500
CONNECT_TIMEOUT = 10.0
LIST_TIMEOUT = 60.0
# A watch silent for timeoutSeconds plus this is a dead connection, not a quiet one.
READ_GRACE = 30.0
# A watch that ends cleanly this fast without a single line is treated like a failure,
# so a misbehaving server or proxy cannot make us spin.
MIN_HEALTHY_WATCH = 1.0


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "RESET" (complete current set after a (re)list), "ADDED", "MODIFIED", "DELETED"
    objects: list[dict]  # for RESET: every object; otherwise exactly one object


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 10.0


class _Delays:
    """Doubling delays with jitter; each is drawn from [d/2, d] so retries spread out."""

    def __init__(self, policy: Backoff) -> None:
        self._policy = policy
        self._next = policy.initial

    def reset(self) -> None:
        self._next = self._policy.initial

    def next(self, at_least: float = 0.0) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._policy.maximum, self._next * 2)
        # A server's Retry-After is honoured, but never beyond our own ceiling.
        return max(delay, min(at_least, self._policy.maximum))


class _Gone(Exception):
    """The resourceVersion we hold is older than the server's history: relist."""


async def make_api_client(kubeconfig: str | None = None) -> ApiClient:
    """An ApiClient for an explicit kubeconfig path, else the in-cluster service account
    when KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG, else ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        # Resolved here, not through the library's default: that one reads $KUBECONFIG
        # once, at import time.
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        # persist_config=False: the library would otherwise write refreshed tokens back
        # into the user's kubeconfig.
        await config.load_kube_config(
            config_file=path, client_configuration=configuration, persist_config=False
        )
    return ApiClient(configuration)


async def watch_objects(
    api: ApiClient,
    kind: Kind,
    *,
    namespace: str | None,
    label_selector: str | None,
    log: FilteringBoundLogger,
    timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    page_size: int = PAGE_SIZE,
    backoff: Backoff = Backoff(),  # frozen, so one shared default is safe
) -> AsyncIterator[WatchEvent]:
    """Yield RESET after every (re)list, then changes; runs until cancelled or closed."""
    if kind not in _OBJECT_KIND:
        raise ValueError(f"unsupported kind {kind!r}")
    if kind == "namespaces" and namespace is not None:
        raise ValueError("namespaces are cluster-scoped; namespace must be None")
    log = log.bind(kind=kind, namespace=namespace, label_selector=label_selector)
    selector = {"label_selector": label_selector} if label_selector else {}
    async for event in list_and_watch(
        _list_function(api, kind, namespace),
        _OBJECT_KIND[kind],
        selector=selector,
        log=log,
        timeout_seconds=timeout_seconds,
        page_size=page_size,
        backoff=backoff,
    ):
        yield event


async def list_and_watch(
    list_fn: Callable[..., Any],
    object_kind: str,
    *,
    selector: dict[str, str],
    log: FilteringBoundLogger,
    timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    page_size: int = PAGE_SIZE,
    backoff: Backoff = Backoff(),
) -> AsyncIterator[WatchEvent]:
    """The list/watch discipline for any list function (ConfigMaps, Namespaces, custom
    resources): RESET after every (re)list, then changes; a 410 relists, a failure
    backs off and resumes from the last resourceVersion; runs until cancelled."""
    delays = _Delays(backoff)
    loop = asyncio.get_running_loop()
    rv: str | None = None  # None: we must (re)list
    # Whether a watch since the last list delivered anything or ran its course. A 410
    # before that means the list's own version is already gone: relisting at once could
    # spin, so back off first.
    progressed = False

    while True:
        if rv is None:
            try:
                items, rv = await _list_all(list_fn, object_kind, selector, page_size)
            except Exception as e:  # anything at all: log, wait, list again
                await _pause(log, delays, "kube list failed", e, None)
                continue
            progressed = False
            log.info("kube listed", count=len(items), resource_version=rv)
            yield WatchEvent("RESET", items)

        started, events = loop.time(), 0
        try:
            resp = await _open(
                list_fn,
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _request_timeout=aiohttp.ClientTimeout(
                    sock_connect=CONNECT_TIMEOUT, sock_read=timeout_seconds + READ_GRACE
                ),
                **selector,
            )
            try:
                while line := await resp.content.readline():
                    if not line.strip():
                        continue
                    etype, obj = _parse_event(line, object_kind)
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if not events:
                        # Backoff restarts only once the server has really delivered.
                        delays.reset()
                    events += 1
                    progressed = True
                    if etype != "BOOKMARK":
                        yield WatchEvent(etype, [obj])
            finally:
                # Close rather than release: a watch cut short must not go back to the pool
                # half read.
                resp.close()
        except _Gone as e:
            if progressed:
                log.info("kube watch expired, relisting", resource_version=rv, reason=str(e))
            else:
                await _pause(log, delays, "kube watch expired right after a list", e, rv)
            rv = None
            continue
        except Exception as e:  # connection, HTTP status, malformed line: resume from rv
            await _pause(log, delays, "kube watch failed", e, rv)
            continue

        progressed = True
        if events or loop.time() - started >= MIN_HEALTHY_WATCH:
            delays.reset()
        else:
            delay = delays.next()
            log.info("kube watch ended at once", resource_version=rv, retry_in=round(delay, 3))
            await asyncio.sleep(delay)


def _list_function(api: ApiClient, kind: Kind, namespace: str | None) -> Callable[..., Any]:
    core = client.CoreV1Api(api)
    if kind == "namespaces":
        return core.list_namespace
    if namespace is None:
        return core.list_config_map_for_all_namespaces
    return functools.partial(core.list_namespaced_config_map, namespace)


async def _open(fn: Callable[..., Awaitable[Any]], **params: Any) -> aiohttp.ClientResponse:
    """Call a list function for its raw response, raising ApiException on a non-2xx
    status (which the client does not do itself when _preload_content=False)."""
    resp: aiohttp.ClientResponse = await fn(_preload_content=False, **params)
    if 200 <= resp.status <= 299:
        return resp
    try:
        body = await resp.read()
    finally:
        resp.release()
    if resp.status == 410:
        raise _Gone(body.decode(errors="replace"))
    # The client raises exactly this itself; its type stub names the raw response.
    raise ApiException(http_resp=RESTResponse(resp, body))  # type: ignore[arg-type]


async def _list_all(
    fn: Callable[..., Awaitable[Any]],
    object_kind: str,
    selector: dict[str, str],
    page_size: int,
) -> tuple[list[dict], str]:
    """Every selected object, page by page, and the list's resourceVersion."""
    items: list[dict] = []
    rv: str | None = None
    token: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page_size, **selector}
        if token:
            params["_continue"] = token
        resp = await _open(
            fn,
            _request_timeout=aiohttp.ClientTimeout(
                total=LIST_TIMEOUT, sock_connect=CONNECT_TIMEOUT
            ),
            **params,
        )
        try:
            body = json.loads(await resp.read())
        finally:
            resp.release()
        metadata = body.get("metadata") or {}
        # Every page of a paginated list is one snapshot; its version is the first's.
        rv = rv or metadata.get("resourceVersion")
        for item in body.get("items") or []:
            # The server leaves kind/apiVersion off list items (kubernetes#3030);
            # put them back so listed and watched objects look the same.
            item.setdefault("apiVersion", "v1")
            item.setdefault("kind", object_kind)
            items.append(item)
        token = metadata.get("continue")
        if not token:
            break
    if not rv:
        raise ValueError("list response carries no resourceVersion")
    return items, rv


def _parse_event(line: bytes, object_kind: str) -> tuple[str, dict]:
    event = json.loads(line)
    etype, obj = event.get("type"), event.get("object")
    if not isinstance(obj, dict):
        raise ValueError(f"watch event without an object: {line[:200]!r}")
    if etype == "ERROR":
        # The server reports a too-old resourceVersion this way, inside a 200 stream.
        if obj.get("code") == 410:
            raise _Gone(f"{obj.get('reason')}: {obj.get('message')}")
        raise ApiException(
            status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}"
        )
    if etype == "BOOKMARK":
        if not obj.get("metadata", {}).get("resourceVersion"):
            raise ValueError(f"bookmark without a resourceVersion: {line[:200]!r}")
        return etype, obj
    if etype not in _CHANGES:
        raise ValueError(f"unknown watch event type {etype!r}")
    obj.setdefault("apiVersion", "v1")
    obj.setdefault("kind", object_kind)
    return etype, obj


async def _pause(
    log: FilteringBoundLogger,
    delays: _Delays,
    message: str,
    error: Exception,
    rv: str | None,
) -> None:
    retry_after = 0.0
    if isinstance(error, ApiException) and error.headers:
        with contextlib.suppress(ValueError):
            retry_after = float(error.headers.get("Retry-After", 0))
    delay = delays.next(retry_after)
    log.warning(message, error=_describe(error), resource_version=rv, retry_in=round(delay, 3))
    await asyncio.sleep(delay)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        # ApiException's str() dumps headers and body; status and reason say enough.
        return f"HTTP {error.status}: {error.reason}"
    return f"{type(error).__name__}: {error}"
