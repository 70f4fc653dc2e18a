"""What one sidecar may do on the bus: the permissions of its user JWT.

The same grants as the shared ``sidecar`` user of deploy/nats/nats.conf, with every
subject that names a pod narrowed to this pod. Reading desired state is the one that
needs care: a consumer created with ``$JS.API.CONSUMER.CREATE.<stream>`` carries its
filter in the body, where permissions cannot see it, so only the extended form
``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`` is granted; the server refuses one
whose body filters on anything else than its subject says.
"""

from __future__ import annotations

from typing import Any

from chaosbus import desired, registry
from chaosbus.audit import SUBJECT_ROOT
from chaosbus.subjects import FLEET_COMMAND, PREFIX, encode_token, pod_command

AUDIT_SERVICE = "chaosfs"
RESPONSE_TTL_NS = 60 * 1_000_000_000  # one answer per command received, within a minute

# Refused whatever the allow list says, as in nats.conf: widening the allow list by
# mistake cannot grant these.
DENY_PUBLISH = (
    "chaosbus.fs.cmd.>",
    FLEET_COMMAND,
    "$KV.DESIRED.>",
    "$KV.RENDERINGS.>",
    "$KV.NAMESPACES.>",
    "$KV.EXPERIMENTS.>",
    "$KV.EXPERIMENT_STATUS.>",
    "$KV.CONTROLLER_LEASE.>",
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.CONSUMER.DELETE.>",
    # Consumer creates whose filter the subject does not show (any stream).
    "$JS.API.CONSUMER.CREATE.*",
    "$JS.API.CONSUMER.CREATE.*.*",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
)


def audit_prefix(namespace: str, pod: str) -> str:
    """Where this pod's audit events go: ``chaosbus.audit.chaosfs.<ns>.<pod>.<kind>``."""
    return f"{SUBJECT_ROOT}.{AUDIT_SERVICE}.{encode_token(namespace)}.{encode_token(pod)}"


def desired_filters(namespace: str, pod: str) -> tuple[str, str]:
    """The two watches a sidecar keeps on DESIRED: the fleet's entries and its pod's."""
    pre = f"$KV.{desired.BUCKET}."
    return f"{pre}fleet.>", f"{pre}{desired.pod_prefix(namespace, pod)}.>"


def allowed(namespace: str, pod: str) -> dict[str, list[str]]:
    """Subjects pod ``namespace/pod`` may publish to and subscribe to."""
    ns, name = encode_token(namespace), encode_token(pod)
    stream = f"KV_{desired.BUCKET}"
    creates = [f"$JS.API.CONSUMER.CREATE.{stream}.*.{f}" for f in desired_filters(namespace, pod)]
    return {
        "pub": [
            f"{PREFIX}.fs.evt.*.{ns}.{name}",
            f"{audit_prefix(namespace, pod)}.>",
            f"$KV.{registry.BUCKET}.{registry.key(namespace, pod)}",
            f"$JS.API.STREAM.INFO.KV_{registry.BUCKET}",
            f"$JS.API.STREAM.INFO.{stream}",
            "$JS.API.STREAM.INFO.AUDIT",
            *creates,
            f"$JS.API.CONSUMER.INFO.{stream}.*",
            f"$JS.FC.{stream}.>",
        ],
        "sub": ["_INBOX.>", pod_command(namespace, pod), FLEET_COMMAND],
    }


def user_permissions(namespace: str, pod: str) -> dict[str, Any]:
    """The ``nats`` part of the user JWT, as nats-io/jwt v2 spells it."""
    grants = allowed(namespace, pod)
    return {
        "pub": {"allow": grants["pub"], "deny": list(DENY_PUBLISH)},
        "sub": {"allow": grants["sub"]},
        "resp": {"max": 1, "ttl": RESPONSE_TTL_NS},
        # Plain NATS clients only: no websocket, MQTT or leaf node speaks for a pod.
        "allowed_connection_types": ["STANDARD"],
        "subs": -1,
        "data": -1,
        "payload": -1,
    }
