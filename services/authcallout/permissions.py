"""What one sidecar may do on the bus: the permissions of its user JWT.

The same grants as the shared ``sidecar`` user of deploy/nats/nats.conf, with every
subject that names a pod narrowed to this pod, its inboxes included
(``_INBOX_chaosfs.<ns>.<pod>``: no pod reads another's replies or deliveries).
Reading desired state and the registry is the part that needs care: a consumer
created with ``$JS.API.CONSUMER.CREATE.<stream>`` carries its filter in the body,
where permissions cannot see it, so only the extended form
``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`` is granted; the server refuses
one whose body filters on anything else than its subject says.
"""

from __future__ import annotations

from typing import Any

from chaosbus import desired, registry
from chaosbus.audit import SUBJECT_ROOT
from chaosbus.bus import pod_inbox_prefix
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
    """The two feeds a sidecar keeps on DESIRED: the fleet's entries and its pod's."""
    pre = f"$KV.{desired.BUCKET}."
    return f"{pre}fleet.>", f"{pre}{desired.pod_prefix(namespace, pod)}.>"


def registry_subject(namespace: str, pod: str) -> str:
    """The pod's own registry entry, the one key of SIDECARS it may write and read."""
    return f"$KV.{registry.BUCKET}.{registry.key(namespace, pod)}"


def allowed(namespace: str, pod: str) -> dict[str, list[str]]:
    """Subjects pod ``namespace/pod`` may publish to and subscribe to: what chaosfs does
    (services/chaosfs/control.py and convergence.py), for this pod only."""
    ns, name = encode_token(namespace), encode_token(pod)
    desired_stream, registry_stream = f"KV_{desired.BUCKET}", f"KV_{registry.BUCKET}"
    own_entry = registry_subject(namespace, pod)
    # Named consumers (chaosfs names every consumer it makes): the filter is in the
    # subject, and the server holds the request's body to it.
    creates = [
        f"$JS.API.CONSUMER.CREATE.{desired_stream}.*.{f}" for f in desired_filters(namespace, pod)
    ]
    return {
        "pub": [
            # ready, heartbeat, gone and inject events
            f"{PREFIX}.fs.evt.*.{ns}.{name}",
            f"{audit_prefix(namespace, pod)}.>",
            # its registry entry: put, and delete with its counters when it goes
            own_entry,
            f"$JS.API.STREAM.INFO.{registry_stream}",
            f"$JS.API.STREAM.INFO.{desired_stream}",
            # checked at start, before the first audit event
            "$JS.API.STREAM.INFO.AUDIT",
            # its desired state and the fleet's, followed as they change
            *creates,
            f"$JS.API.CONSUMER.INFO.{desired_stream}.*",
            f"$JS.FC.{desired_stream}.>",
            # its own entry read back once at start: the counters of its pod's previous
            # sidecar, so that a spent --count rule stays spent
            f"$JS.API.CONSUMER.CREATE.{registry_stream}.*.{own_entry}",
            f"$JS.API.CONSUMER.INFO.{registry_stream}.*",
            f"$JS.FC.{registry_stream}.>",
        ],
        "sub": [
            f"{pod_inbox_prefix(namespace, pod)}.>",
            pod_command(namespace, pod),
            FLEET_COMMAND,
        ],
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
