"""Calling the Kubernetes API for raw JSON, the controller's one way of doing it.

kubernetes-asyncio's generated methods build model objects from every answer;
the controller wants the plain JSON (custom resources have no models, and pods are
only read for a few fields), so it asks for the undecoded response and decodes it
here, raising ``ApiException`` on a non-2xx status as the client would have.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from template_watcher.kube_source import CONNECT_TIMEOUT


def bind(fn: Callable[..., Awaitable[Any]], *args: Any) -> Callable[..., Awaitable[Any]]:
    """``fn`` with its leading positional arguments fixed (group, version, namespace...)."""

    async def call(**params: Any) -> Any:
        return await fn(*args, **params)

    return call


async def call_json(
    fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float, **params: Any
) -> dict[str, Any]:
    """One API call's JSON answer ({} for an empty body); ApiException on a non-2xx status."""
    resp: aiohttp.ClientResponse = await fn(
        *args,
        _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT),
        **params,
    )
    try:
        body = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        # The client raises exactly this itself; its type stub names the raw response.
        raise ApiException(http_resp=RESTResponse(resp, body))  # type: ignore[arg-type]
    return json.loads(body) if body else {}
