"""One identity per sidecar: deploy/nats/nats-callout.conf with the real chaos-auth.

The shipped file runs as it is (only the lines marked ``# chaosbus-test:`` are
replaced), with TLS and the role passwords in the server's environment. chaos-auth
checks the tokens with the stand-in Kubernetes API server's TokenReview, which refuses
them as the real one does (expired, wrong audience, pod deleted). A pod's client is a
plain nats-py connection with ``token=``, built by chaosbus.bus as chaosfs builds its
own, and the real chaosfs connects with ``NATS_TOKEN``.

"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from k8s_standin import API_AUDIENCE, ThreadProxy, run_in_thread, write_kubeconfig
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from tls_helpers import CA

from chaosbus import codec, desired, registry
from chaosbus.audit import ensure_stream
from chaosbus.bus import BusAuth, pod_inbox_prefix
from chaosbus.kv import open_bucket
from chaosbus.subjects import FLEET_COMMAND, pod_command, pod_event
from conftest import BIN, Sidecar, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "nats" / "nats-callout.conf"
STATIC = ROOT / "deploy" / "nats" / "nats.conf"
ROLES = ("operator", "template-watcher", "injector", "controller", "chaos-auth")
AUDIENCE = "chaosbus"
MARKED = re.compile(r'^(\s*)(\w+): "[^"]*" # chaosbus-test: (\w+)$')


class CalloutBus:
    """nats-server running the shipped callout configuration."""

    def __init__(self, root: Path, issuer: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"tls://127.0.0.1:{self.port}"
        self.ca = CA.create(root / "tls")
        cert, key = self.ca.issue("nats-server", ["127.0.0.1", "localhost"])
        values = {
            "listen": f"127.0.0.1:{self.port}",
            "cert_file": str(cert),
            "key_file": str(key),
            "ca_file": str(self.ca.cert_path),
            "store_dir": str(root / "jetstream"),
        }
        lines = []
        for line in CONFIG.read_text().splitlines():
            if m := MARKED.match(line):
                indent, key_name, marker = m.groups()
                line = f'{indent}{key_name}: "{values.pop(marker)}"'
            lines.append(line)
        assert not values, f"markers missing from {CONFIG}: {sorted(values)}"
        self.config = root / "nats.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.env = {"CHAOS_AUTH_ISSUER": issuer}
        for role in ROLES:
            password = "p" + secrets.token_hex(20)
            self.password_file(role).write_text(password + "\n")
            self.env[f"{role.upper().replace('-', '_')}_PASSWORD"] = password
        self.log = root / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def password_file(self, role: str) -> Path:
        return self.root / f"{role}.password"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "nats-server"), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
            env={**os.environ, **self.env},
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return True
            return False

        wait_for(up, what="nats-server to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def role(self, role: str) -> dict[str, Any]:
        return BusAuth(
            user=role, password_file=str(self.password_file(role)), ca=str(self.ca.cert_path)
        ).options()

    def pod(self, token: str, pod: str = "a/db-0") -> dict[str, Any]:
        """What chaosfs passes to nats.connect given NATS_TOKEN and NATS_CA: its replies
        under its pod's own inbox prefix."""
        options = BusAuth.resolve(
            {}, {"NATS_TOKEN": token, "NATS_CA": str(self.ca.cert_path)}
        ).options()
        return {**options, "inbox_prefix": pod_inbox_prefix(*pod.split("/"))}


def chaos_auth() -> tuple[list[str], dict[str, str]]:
    """The chaos-auth command and its environment: the console script once the package is
    installed, until then the package run from the tree."""
    script = BIN / "chaos-auth"
    if script.exists():
        return [str(script)], dict(os.environ)
    return [sys.executable, "-m", "authcallout"], {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), os.environ.get("PYTHONPATH", "")]),
    }


class Callout:
    """chaos-auth, as its console script runs it."""

    def __init__(self, bus: CalloutBus, seed: Path, kubeconfig: Path) -> None:
        self.log = bus.root / "chaos-auth.log"
        command, self.env = chaos_auth()
        self.cmd = [
            *command,
            "--nats",
            bus.url,
            "--nats-user",
            "chaos-auth",
            "--nats-password-file",
            str(bus.password_file("chaos-auth")),
            "--nats-tls-ca",
            str(bus.ca.cert_path),
            "--issuer-seed",
            str(seed),
            "--kubeconfig",
            str(kubeconfig),
            "--audience",
            AUDIENCE,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
        )
        wait_for(lambda: "callout_listening" in self.text(), what=f"chaos-auth ({self.log})")

    def text(self) -> str:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        return self.log.read_text(errors="replace")

    def records(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    out.append(record)
        return out

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        return self.proc.wait(10)


class Stack:
    def __init__(self, bus: CalloutBus, k8s: ThreadProxy, callout: Callout) -> None:
        self.bus, self.k8s, self.callout = bus, k8s, callout

    def token(self, pod: str = "db-0", **kwargs: Any) -> str:
        kwargs.setdefault("audiences", [AUDIENCE])
        return self.k8s.issue_token("a", pod, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("callout")
    seed = root / "issuer.nk"
    command, env = chaos_auth()

    def run(*args: str) -> str:
        done = subprocess.run(
            [*command, "--issuer-seed", str(seed), *args], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    issuer = run("--keygen")
    assert oct(seed.stat().st_mode & 0o777) == "0o600"  # a secret
    assert seed.read_text().startswith("SA") and issuer.startswith("A")
    assert run("--public-key") == issuer
    with run_in_thread() as k8s:
        k8s.create_namespace("a")
        for name in ("db-0", "db-1"):
            k8s.create_pod("a", name, node="node-1")
        bus = CalloutBus(root, issuer)
        bus.start()
        callout = Callout(bus, seed, write_kubeconfig(root / "kubeconfig", k8s.url))
        try:
            callout.start()
            asyncio.run(_make_buckets(bus))
            yield Stack(bus, k8s, callout)
        finally:
            callout.stop()
            bus.stop()


async def _make_buckets(bus: CalloutBus) -> None:
    """As the template-watcher does at start: the buckets and the audit stream."""
    nc = await nats.connect(bus.url, **bus.role("template-watcher"))
    try:
        for bucket in ("DESIRED", "SIDECARS"):
            await open_bucket(nc, bucket)
        await ensure_stream(nc, max_age=3600.0, max_bytes=1 << 26)
    finally:
        await nc.close()


class PodClient:
    """A pod's connection, recording what the server refuses."""

    def __init__(self, bus: CalloutBus, token: str, pod: str = "a/db-0") -> None:
        self.bus, self.token, self.pod = bus, token, pod
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self.nc: Client = None  # type: ignore[assignment]

    async def __aenter__(self) -> PodClient:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        async def on_closed() -> None:
            self.closed.set()

        self.nc = await nats.connect(
            self.bus.url,
            name="pod probe",
            error_cb=on_error,
            closed_cb=on_closed,
            allow_reconnect=False,
            **self.bus.pod(self.token, self.pod),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def refused(self, *fragments: str, timeout: float = 3.0) -> None:
        """Wait for the permissions violation whose text holds every fragment."""
        deadline = time.monotonic() + timeout
        wanted = [f.lower() for f in fragments]
        while not any(
            "permissions violation" in e and all(f in e for f in wanted) for e in self.errors
        ):
            assert time.monotonic() < deadline, f"no violation with {wanted} in {self.errors}"
            await asyncio.sleep(0.02)


async def read_desired(nc: Client, filter_subject: str) -> list[str]:
    """Read desired state as the sidecar must under the callout: a consumer with a name,
    so that nats-py creates it with the subject that shows its filter."""
    js = nc.jetstream(timeout=1.0)
    sub = await js.subscribe(
        filter_subject,
        stream="KV_DESIRED",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        config=ConsumerConfig(name="w" + secrets.token_hex(8)),
    )
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not info.delivered.consumer_seq:
            return []
        keys = []
        while True:
            msg = await sub.next_msg(timeout=2)
            keys.append(msg.subject)
            if msg.metadata.num_pending == 0:
                return sorted(keys)
    finally:
        await sub.unsubscribe()


async def put_desired(bus: CalloutBus, *keys: str) -> None:
    nc = await nats.connect(bus.url, **bus.role("operator"))
    try:
        kv = await nc.jetstream().key_value("DESIRED")
        for key in keys:
            await kv.put(key, codec.encode({"v": 1, "rule": {"id": key}}))
    finally:
        await nc.close()


# --- a pod's own things, and nobody else's ----------------------------------------------


def test_pod_writes_its_registry_key_events_and_audit_only(stack: Stack) -> None:
    async def probe() -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {"evt": [], "audit": []}
        op = await nats.connect(stack.bus.url, **stack.bus.role("operator"))

        async def note(msg: Any) -> None:
            seen["evt" if ".evt." in msg.subject else "audit"].append(msg.subject)

        await op.subscribe("chaosbus.fs.evt.>", cb=note)
        await op.subscribe("chaosbus.audit.>", cb=note)
        await op.flush()
        async with PodClient(stack.bus, stack.token()) as pod:
            js = pod.nc.jetstream(timeout=1.0)
            kv = await js.key_value(registry.BUCKET)
            assert await kv.put(registry.key("a", "db-0"), codec.encode({"pod": "a/db-0"})) > 0
            with pytest.raises(nats.errors.TimeoutError):
                await kv.put(registry.key("a", "db-1"), codec.encode({"pod": "a/db-1"}))
            await pod.refused('"$kv.sidecars.a.db-1"')
            with pytest.raises(nats.errors.TimeoutError):
                await kv.delete(registry.key("a", "db-1"))

            await pod.nc.publish(pod_event("ready", "a", "db-0"), b"{}")
            await pod.nc.publish(pod_event("ready", "a", "db-1"), b"{}")
            await pod.refused('"chaosbus.fs.evt.ready.a.db-1"')

            own = "chaosbus.audit.chaosfs.a.db-0.sidecar=2Eready"
            ack = await js.publish(own, codec.encode({"kind": "sidecar.ready"}))
            assert ack.stream == "AUDIT_SIDECARS"
            for other in (
                "chaosbus.audit.chaosfs.a.db-1.sidecar=2Eready",  # another pod's
                "chaosbus.audit.chaosfs.sidecar=2Eready",  # the shared shape of nats.conf
                "chaosbus.audit.chaosctl.rule=2Eset",  # another service's
            ):
                with pytest.raises(nats.errors.TimeoutError):
                    await js.publish(other, b"{}")
                await pod.refused(f'"{other}"')
            await pod.nc.flush()
        await asyncio.sleep(0.2)
        await op.close()
        return seen

    seen = asyncio.run(probe())
    assert seen["evt"] == [pod_event("ready", "a", "db-0")]
    assert seen["audit"] == ["chaosbus.audit.chaosfs.a.db-0.sidecar=2Eready"]

    async def registry_keys() -> list[str]:
        op = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
        try:
            kv = await op.jetstream().key_value(registry.BUCKET)
            return sorted(await kv.keys())
        finally:
            await op.close()

    assert asyncio.run(registry_keys()) == ["a.db-0"]


def test_pod_hears_its_commands_and_the_fleet_but_sends_none(stack: Stack) -> None:
    async def probe() -> None:
        op = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
        async with PodClient(stack.bus, stack.token()) as pod:

            async def answer(msg: Any) -> None:
                await msg.respond(b"pong " + msg.subject.encode())

            await pod.nc.subscribe(pod_command("a", "db-0"), cb=answer)
            await pod.nc.subscribe(FLEET_COMMAND, cb=answer)
            await pod.nc.subscribe(pod_command("a", "db-1"), cb=answer)
            await pod.refused("subscription", '"chaosbus.fs.cmd.a.db-1"')
            await pod.nc.flush()

            reply = await op.request(pod_command("a", "db-0"), b"ping", timeout=2)
            assert reply.data == b"pong chaosbus.fs.cmd.a.db-0"
            reply = await op.request(FLEET_COMMAND, b"ping", timeout=2)
            assert reply.data == b"pong chaosbus.fs.fleet"
            # Nobody may answer for db-1: its command subject reaches no one here.
            with pytest.raises(nats.errors.NoRespondersError):
                await op.request(pod_command("a", "db-1"), b"ping", timeout=1)

            for subject in (pod_command("a", "db-1"), pod_command("a", "db-0"), FLEET_COMMAND):
                await pod.nc.publish(subject, codec.encode({"op": "recover", "all": True}))
                await pod.refused(f'"{subject}"')
        await op.close()

    asyncio.run(probe())


def test_pod_reads_its_desired_state_and_the_fleets_only(stack: Stack) -> None:
    asyncio.run(put_desired(stack.bus, "pod.a.db-0.r1", "pod.a.db-1.r2", "fleet.f1"))

    async def probe() -> None:
        async with PodClient(stack.bus, stack.token()) as pod:
            assert await read_desired(pod.nc, "$KV.DESIRED.pod.a.db-0.>") == [
                "$KV.DESIRED.pod.a.db-0.r1"
            ]
            assert await read_desired(pod.nc, "$KV.DESIRED.fleet.>") == ["$KV.DESIRED.fleet.f1"]

            for elsewhere in ("$KV.DESIRED.pod.a.db-1.>", "$KV.DESIRED.pod.>", "$KV.DESIRED.>"):
                with pytest.raises(nats.errors.TimeoutError):
                    await read_desired(pod.nc, elsewhere)
                await pod.refused("$js.api.consumer.create.kv_desired.", elsewhere)

            # nats-py's KV watch creates its consumer without a name: the filter is then in
            # the body only, where permissions cannot see it, so that form is refused.
            kv = await pod.nc.jetstream(timeout=1.0).key_value("DESIRED")
            with pytest.raises(nats.errors.TimeoutError):
                await kv.watch("pod.a.db-0.>")
            await pod.refused('"$js.api.consumer.create.kv_desired"')

            # The subject it may use, with a body that asks for more: the server holds the
            # body to the subject.
            allowed = "$JS.API.CONSUMER.CREATE.KV_DESIRED.sneaky.$KV.DESIRED.pod.a.db-0.>"
            for config in (
                {"filter_subject": "$KV.DESIRED.pod.a.db-1.>"},
                {"filter_subjects": ["$KV.DESIRED.pod.a.db-0.>", "$KV.DESIRED.pod.a.db-1.>"]},
                {},
            ):
                body = {
                    "stream_name": "KV_DESIRED",
                    "config": {
                        "name": "sneaky",
                        "deliver_subject": pod.nc.new_inbox(),
                        "ack_policy": "none",
                        **config,
                    },
                }
                msg = await pod.nc.request(allowed, json.dumps(body).encode(), timeout=2)
                assert "error" in json.loads(msg.data), (config, msg.data)

    asyncio.run(probe())


def test_pod_reads_its_own_inbox_and_registry_entry_only(stack: Stack) -> None:
    """Replies and consumer deliveries come to a pod under its own inbox prefix, which no
    other pod may listen on; its registry entry (the counters it left) is its own too."""
    other = pod_inbox_prefix("a", "db-0")

    async def read_entry(nc: Client, key: str) -> None:
        await nc.jetstream(timeout=1.0).subscribe(
            f"$KV.{registry.BUCKET}.{key}",
            stream=f"KV_{registry.BUCKET}",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            config=ConsumerConfig(name="r" + secrets.token_hex(8)),
        )

    async def probe() -> None:
        async with PodClient(stack.bus, stack.token("db-1"), "a/db-1") as pod:
            for subject in (f"{other}.>", "_INBOX.>", "_INBOX_operator.>", "_INBOX_chaosfs.>"):
                await pod.nc.subscribe(subject)
                await pod.refused("subscription", f'"{subject}"')
            await read_entry(pod.nc, registry.key("a", "db-1"))  # answered on its own inbox
            with pytest.raises(nats.errors.TimeoutError):
                await read_entry(pod.nc, registry.key("a", "db-0"))
            await pod.refused("$js.api.consumer.create.kv_sidecars.", "$kv.sidecars.a.db-0")

    asyncio.run(probe())


# --- who is let in -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "tampered",
        "expired",
        "api audience",
        "deleted pod",
        "no token",
        "password",
        "api server down",
    ],
)
def test_refused(stack: Stack, case: str) -> None:
    k8s = stack.k8s
    auth: dict[str, Any]
    if case == "garbage":
        auth = stack.bus.pod("not-a-token")
    elif case == "tampered":
        # Another pod's name in a valid token's claims: the signature no longer matches.
        head, body, sig = stack.token().split(".")
        claims = json.loads(_unb64(body))
        claims["kubernetes.io"]["pod"]["name"] = "db-1"
        auth = stack.bus.pod(f"{head}.{_b64(json.dumps(claims).encode())}.{sig}")
    elif case == "expired":
        auth = stack.bus.pod(stack.token(expires_in=-10))
    elif case == "api audience":
        # The pod's ordinary API token is not a bus credential.
        auth = stack.bus.pod(stack.token(audiences=[API_AUDIENCE]))
    elif case == "deleted pod":
        k8s.create_pod("a", "gone-0", node="node-1")
        token = stack.token("gone-0")
        k8s.delete_pod("a", "gone-0")
        auth = stack.bus.pod(token)
    elif case == "api server down":
        # A valid token, but the API server cannot say so: unknown is not yes.
        auth = stack.bus.pod(stack.token())
        k8s.fail_next(1, 503)
    elif case == "no token":
        auth = BusAuth(ca=str(stack.bus.ca.cert_path)).options()
    else:
        # The shared sidecar user of nats.conf does not exist here.
        auth = {**stack.bus.role("operator"), "user": "sidecar"}
    before = len(stack.callout.records("refused"))

    async def connect() -> None:
        nc = await nats.connect(
            stack.bus.url, allow_reconnect=False, max_reconnect_attempts=0, **auth
        )
        await nc.close()

    with pytest.raises(Exception, match=r"(?i)authorization violation"):
        asyncio.run(connect())
    reasons = {
        "garbage": "invalid bearer token",
        "tampered": "invalid bearer token",
        "expired": "service account token has expired",
        "api audience": "is invalid for the target audiences",
        "deleted pod": "service account token has been invalidated",
        "no token": "no token",
        "password": "no token",
        "api server down": "cannot check the token now",
    }
    wait_for(lambda: len(stack.callout.records("refused")) > before, what="chaos-auth to log it")
    assert reasons[case] in stack.callout.records("refused")[-1]["reason"]


def test_static_roles_keep_their_passwords(stack: Stack) -> None:
    async def probe() -> None:
        nc = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
        await nc.close()
        wrong = {**stack.bus.role("operator"), "password": "p" + secrets.token_hex(20)}
        with pytest.raises(Exception, match=r"(?i)authorization violation"):
            await nats.connect(stack.bus.url, allow_reconnect=False, **wrong)
        # The callout's user is not a way in for a pod either.
        with pytest.raises(Exception, match=r"(?i)authorization violation"):
            await nats.connect(
                stack.bus.url,
                allow_reconnect=False,
                **{**stack.bus.pod(stack.token()), "user": "chaos-auth", "password": "x"},
            )

    asyncio.run(probe())


def test_a_connection_outlives_its_token_but_no_new_one_opens(stack: Stack) -> None:
    """The user JWT has no expiry (nats-py never reconnects after the server's "User
    Authentication Expired"): the connection lives on, but a new one needs a valid token."""
    token = stack.token(expires_in=2)
    expires = json.loads(_unb64(token.split(".")[1]))["exp"]

    async def probe() -> None:
        op = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
        async with PodClient(stack.bus, token) as pod:

            async def answer(msg: Any) -> None:
                await msg.respond(b"still here")

            await pod.nc.subscribe(pod_command("a", "db-0"), cb=answer)
            await pod.nc.flush()
            await asyncio.sleep(max(0.0, expires - time.time()) + 0.5)
            reply = await op.request(pod_command("a", "db-0"), b"ping", timeout=2)
            assert reply.data == b"still here"
            assert not pod.closed.is_set()
        await op.close()
        with pytest.raises(Exception, match=r"(?i)authorization violation"):
            await nats.connect(stack.bus.url, allow_reconnect=False, **stack.bus.pod(token))

    asyncio.run(probe())


def test_static_roles_are_those_of_nats_conf() -> None:
    """The callout file repeats the four static roles of nats.conf: they must not drift."""

    def blocks(text: str) -> dict[str, str]:
        found = re.findall(r"(      # --- (\S+).*?\n(?:(?!      # ---).*\n)*)", text)
        return {name.rstrip(":"): body.rstrip() for body, name in found}

    static, callout = blocks(STATIC.read_text()), blocks(CONFIG.read_text())
    for role in ("operator", "template-watcher", "injector", "controller"):
        assert callout[role].rstrip("]} \n") == static[role].rstrip("]} \n"), role
    assert "sidecar" not in callout


# --- the real chaosfs -------------------------------------------------------------------


class TokenSidecar(Sidecar):
    """conftest's Sidecar with its pod's token (NATS_TOKEN), not a user and password."""

    def __init__(self, root: Path, stack: Stack, pod: str, token: str) -> None:
        env = {"NATS_TOKEN": token, "NATS_CA": str(stack.bus.ca.cert_path)}
        super().__init__(root, stack.bus.url, pod, ["-heartbeat", "300ms"], env)
        self.stack = stack

    def request(self, payload: bytes | dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        ns, name = self.pod.split("/", 1)
        data = payload if isinstance(payload, bytes) else codec.encode(payload)

        async def ask() -> dict[str, Any]:
            nc = await nats.connect(self.stack.bus.url, **self.stack.bus.role("operator"))
            try:
                msg = await nc.request(pod_command(ns, name), data, timeout=timeout)
                return codec.decode(msg.data, limit=1 << 24)
            finally:
                await nc.close()

        return asyncio.run(ask())


def test_real_chaosfs_connects_with_its_pods_token(stack: Stack, tmp_path: Path) -> None:
    sidecar = TokenSidecar(tmp_path / "pod", stack, "a/db-0", stack.token())
    try:
        sidecar.start()  # returns once it answers the operator on its command subject
        assert sidecar.request({"op": "ping"})["ok"] is True

        async def registered() -> list[dict[str, Any]]:
            nc = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
            try:
                return await registry.entries(nc)
            finally:
                await nc.close()

        wait_for(
            lambda: any(e.get("pod") == "a/db-0" for e in asyncio.run(registered())),
            what="the sidecar's registry entry",
        )
        authorized = stack.callout.records("authorized")
        assert any(r["pod"] == "a/db-0" for r in authorized), authorized
    finally:
        sidecar.cleanup()


def test_real_chaosfs_follows_its_desired_state_and_audits_as_its_pod(
    stack: Stack, tmp_path: Path
) -> None:
    rule = {"id": "from-desired", "action": "errno", "errno": "EIO", "path": "x"}
    other = {"id": "not-mine", "action": "errno", "errno": "EIO", "path": "y"}

    async def put() -> None:
        nc = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
        try:
            kv = await nc.jetstream().key_value("DESIRED")
            for ns, name, r in (("a", "db-0", rule), ("a", "db-1", other)):
                entry = codec.encode(desired.Entry.of(r, "tester").to_wire())
                await kv.put(desired.pod_key(ns, name, r["id"]), entry)
        finally:
            await nc.close()

    asyncio.run(put())
    sidecar = TokenSidecar(tmp_path / "pod", stack, "a/db-0", stack.token())
    try:
        sidecar.start()
        # Read from desired state at start: no command carried it.
        wait_for(
            lambda: (
                [r["id"] for r in sidecar.request({"op": "status"})["rules"]] == ["from-desired"]
            ),
            what="the rule from desired state",
        )

        async def audited() -> list[str]:
            nc = await nats.connect(stack.bus.url, **stack.bus.role("operator"))
            try:
                js = nc.jetstream()
                sub = await js.subscribe(
                    "chaosbus.audit.chaosfs.>", stream="AUDIT_SIDECARS", ordered_consumer=True
                )
                subjects = []
                with contextlib.suppress(nats.errors.TimeoutError):
                    while True:
                        subjects.append((await sub.next_msg(timeout=0.5)).subject)
                await sub.unsubscribe()
                return subjects
            finally:
                await nc.close()

        wait_for(
            lambda: "chaosbus.audit.chaosfs.a.db-0.sidecar=2Eready" in asyncio.run(audited()),
            what="the sidecar's audit event under its pod",
        )
        # chaosctl audit finds it by kind, and shows the pod the subject vouches for.
        bus = stack.bus
        flags = ["--nats-user", "operator", "--nats-password-file"]
        flags += [str(bus.password_file("operator")), "--nats-tls-ca", str(bus.ca.cert_path)]
        command = [str(BIN / "chaosctl"), "--nats", bus.url, *flags, "--json", "audit"]
        done = subprocess.run(
            [*command, "--kind", "sidecar.ready"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert any(e.get("origin_pod") == "a/db-0" for e in events), events
    finally:
        sidecar.cleanup()
    log = stack.bus.log.read_text(errors="replace")
    # Every call chaosfs makes is one its pod's permissions allow.
    assert [v for v in log.splitlines() if "chaosfs a/db-0" in v and "Violation" in v] == []


def test_real_chaosfs_comes_back_with_the_renewed_token(stack: Stack, tmp_path: Path) -> None:
    """The kubelet renews a projected token in place (NATS_TOKEN_FILE); after a server
    restart chaosfs must come back with the file's current token, not the expired one."""
    token_file = tmp_path / "token"
    token_file.write_text(stack.token(expires_in=2))
    sidecar = TokenSidecar(tmp_path / "pod", stack, "a/db-0", "")
    sidecar.env = {"NATS_TOKEN_FILE": str(token_file), "NATS_CA": str(stack.bus.ca.cert_path)}
    try:
        sidecar.start()
        token_file.write_text(stack.token())  # the renewed token
        time.sleep(2.5)  # the first one has expired
        stack.bus.stop()
        stack.bus.start()
        wait_for(sidecar._answers, timeout=15, what="chaosfs back on the bus")
    finally:
        sidecar.cleanup()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
