"""Who a ServiceAccount token belongs to, as the Kubernetes API server says.

The callout never trusts the token itself: it asks the API server (TokenReview), which
checks the signature, the expiry, the audience and, for a token bound to a pod, that
the pod still exists with the same uid. Only a token bound to a pod is accepted: the
pod is the identity a sidecar gets on the bus.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from . import jwt

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"


class Refused(Exception):
    """The token does not identify a live pod; the message says why."""


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    pod: str
    pod_uid: str
    service_account: str
    expires: float | None  # the token's own expiry, when it carries one


class TokenReviewer:
    def __init__(self, api: ApiClient, audience: str, timeout: float = 5.0) -> None:
        self._api = client.AuthenticationV1Api(api)
        self.audience = audience
        self.timeout = timeout

    async def review(self, token: str) -> PodIdentity:
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience])
        )
        answer = await self._api.create_token_review(body, _request_timeout=self.timeout)
        status = answer.status
        if status is None or not status.authenticated:
            raise Refused((status.error if status else None) or "token not authenticated")
        # An API server that ignores spec.audiences answers with its own: not ours.
        if self.audience not in (status.audiences or []):
            raise Refused(f"token is not for audience {self.audience!r}")
        return identity(status.user, token)


def identity(user: client.V1UserInfo | None, token: str) -> PodIdentity:
    """The pod an authenticated token speaks for; Refused when it is not a pod's."""
    username = (user.username if user else None) or ""
    if not username.startswith(SA_PREFIX) or username.count(":") != 3:
        raise Refused(f"{username or 'the user'} is not a service account")
    # A pod can only use service accounts of its own namespace.
    namespace, service_account = username[len(SA_PREFIX) :].split(":")
    extra = (user.extra if user else None) or {}
    names, uids = extra.get(POD_NAME) or [], extra.get(POD_UID) or []
    if len(names) != 1 or len(uids) != 1 or not names[0] or not namespace:
        raise Refused("the token is not bound to a pod")
    # The API server has just vouched for the token, so its expiry can be read as is.
    exp = jwt.unverified_claims(token).get("exp")
    expires = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    return PodIdentity(namespace, names[0], uids[0], service_account, expires)
