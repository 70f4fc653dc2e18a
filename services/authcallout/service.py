"""Answering the server's authorization requests.

nats-server sends every connecting client that is not one of the callout's own users
to ``$SYS.REQ.USER.AUTH`` as a JWT it signed (``authorization_request``), holding what
the client sent in CONNECT and a fresh user nkey. The answer is an
``authorization_response`` JWT for that nkey and that server, signed by the issuer the
server trusts, holding either an error or a user JWT: the pod's permissions, placed in
the chaosbus account.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import jwt, nkeys
from .permissions import user_permissions
from .tokenreview import PodIdentity, Refused

SUBJECT = "$SYS.REQ.USER.AUTH"
REQUEST_AUDIENCE = "nats-authorization-request"
QUEUE = "chaos-auth"
# Requests answered at once; the rest wait. A fleet reconnecting after a server restart
# must not open thousands of TokenReviews together, nor be answered one by one.
CONCURRENCY = 64


class Reviewer(Protocol):
    async def review(self, token: str) -> PodIdentity: ...


class Callout:
    def __init__(
        self,
        issuer: nkeys.KeyPair,
        reviewer: Reviewer,
        account: str,
        log: Any,
        *,
        concurrency: int = CONCURRENCY,
    ) -> None:
        if issuer.role != nkeys.ACCOUNT:
            raise ValueError("the issuer must be an account nkey (its seed starts with SA)")
        self.issuer = issuer
        self.reviewer = reviewer
        self.account = account
        self.log = log
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, nc: Client, queue: str = QUEUE) -> Subscription:
        """Subscribe (in a queue group: replicas share the requests)."""
        sub = await nc.subscribe(SUBJECT, queue=queue, cb=self._spawn)
        await nc.flush()
        return sub

    async def stop(self, timeout: float = 5.0) -> None:
        """Let the answers under way finish (briefly)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def _spawn(self, msg: Msg) -> None:
        # The subscription's callback runs one message at a time: hand each to a task.
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        async with self._slots:
            try:
                response = await self.respond(msg.data)
            except jwt.JwtError as exc:
                # Nothing to answer: without a valid request there is no user nkey and no
                # server to address a response to. The server times out and refuses.
                self.log.warning("request_unreadable", error=str(exc))
                return
            if msg.reply:
                await msg.respond(response.encode())

    async def respond(self, data: bytes) -> str:
        """The signed response to one request; raises JwtError for a request that is not
        a valid one from a server."""
        request = jwt.decode(data.decode(errors="replace"), issuer_role=nkeys.SERVER)
        claims = request.get("nats")
        if (
            request.get("aud") != REQUEST_AUDIENCE
            or request.get("sub") != self.issuer.public_key
            or not isinstance(claims, dict)
            or claims.get("type") != "authorization_request"
        ):
            raise jwt.JwtError("not an authorization request for this issuer")
        user_nkey = claims.get("user_nkey")
        server_id = (claims.get("server_id") or {}).get("id")
        if not isinstance(user_nkey, str) or not isinstance(server_id, str):
            raise jwt.JwtError("the request names no user or no server")
        client = claims.get("client_info") or {}
        where = {"host": client.get("host"), "client": client.get("name") or None}
        token = (claims.get("connect_opts") or {}).get("auth_token")
        if not isinstance(token, str) or not token:
            return self._refuse(user_nkey, server_id, "no token: connect with a pod's token", where)
        try:
            pod = await self.reviewer.review(token)
        except Refused as exc:
            return self._refuse(user_nkey, server_id, f"token refused: {exc}", where)
        except Exception as exc:  # the API server's answer, or none: unknown is not yes
            # The client retries, as on any refused connection.
            self.log.warning("token_review_failed", error=str(exc) or type(exc).__name__)
            return self._refuse(user_nkey, server_id, "cannot check the token now", where)
        user = self._user_jwt(user_nkey, pod)
        self.log.info(
            "authorized",
            pod=f"{pod.namespace}/{pod.pod}",
            pod_uid=pod.pod_uid,
            service_account=pod.service_account,
            expires=pod.expires,
            **where,
        )
        return self._response(user_nkey, server_id, {"jwt": user})

    def _user_jwt(self, user_nkey: str, pod: PodIdentity) -> str:
        claims: dict[str, Any] = {
            "sub": user_nkey,
            "aud": self.account,  # in server-configuration mode: the account to join
            "name": f"chaosfs:{pod.namespace}/{pod.pod}",
            "nats": {
                **user_permissions(pod.namespace, pod.pod),
                "type": "user",
                "version": jwt.VERSION,
            },
        }
        # No "exp": the server would close the connection when it passed, with an error
        # after which nats-py never reconnects, and a sidecar would go deaf when its
        # token expires. A connection therefore lives until it drops; every new one,
        # reconnects included, needs a token the API server accepts then.
        return jwt.encode(claims, self.issuer)

    def _refuse(self, user_nkey: str, server_id: str, reason: str, where: dict[str, Any]) -> str:
        self.log.warning("refused", reason=reason, **where)
        return self._response(user_nkey, server_id, {"error": reason})

    def _response(self, user_nkey: str, server_id: str, body: dict[str, Any]) -> str:
        claims = {
            "sub": user_nkey,
            "aud": server_id,
            # Short: a response is used at once or never.
            "exp": int(time.time()) + 60,
            "nats": {**body, "type": "authorization_response", "version": jwt.VERSION},
        }
        return jwt.encode(claims, self.issuer)
