"""A sidecar's identity on the bus, on its own: what it takes for a command, where it
publishes its audit events, and the token it sends at each connect."""

from __future__ import annotations

from pathlib import Path

import pytest

from authcallout.permissions import allowed
from chaosbus.audit import audit_subject
from chaosbus.bus import BusAuth, pod_inbox_prefix
from chaosfs import provenance
from chaosfs.control import pod_identity

CMD = "chaosbus.fs.cmd.a.db-0"


def test_a_command_sent_with_request_or_publish_is_read() -> None:
    assert provenance.refusal(CMD, "_INBOX_operator.x.y", None, CMD) is None
    assert provenance.refusal(CMD, "", None, CMD) is None
    assert provenance.refusal(CMD, None, {"X-Trace": "1"}, CMD) is None


@pytest.mark.parametrize(
    ("subject", "reply", "headers", "reason", "source"),
    [
        # Seen on nats-server 2.15 for ack policies explicit, all and none alike.
        (
            "$KV.NAMESPACES.evil",
            "$JS.ACK.KV_NAMESPACES.CHRbVSW0.1.1.1.1796526883163259863.0",
            {"KV-Operation": "PUT"},
            "delivered by a JetStream consumer",
            {"stream": "KV_NAMESPACES", "consumer": "CHRbVSW0", "subject": "$KV.NAMESPACES.evil"},
        ),
        # The form with a domain and an account hash.
        (
            "$KV.X.a",
            "$JS.ACK.hub.ACCHASH.KV_X.c1.1.2.3.1796526883163259863.0.r4nd",
            None,
            "delivered by a JetStream consumer",
            {"stream": "KV_X", "consumer": "c1", "subject": "$KV.X.a"},
        ),
        (
            CMD,
            "$JS.FC.KV_X.c1.abc",
            {"Status": "100", "Description": "FlowControl Request"},
            "a JetStream flow-control request",
            {"reply": "$JS.FC.KV_X.c1.abc"},
        ),
        (
            CMD,
            "",
            {"Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Stream": "2"},
            "a JetStream status message",
            {"status": "100"},
        ),
        (
            CMD,
            "",
            {
                "Nats-Stream": "KV_RENDERINGS",
                "Nats-Subject": "$KV.RENDERINGS.e",
                "Nats-Sequence": "3",
            },
            "republished from a JetStream stream",
            {"stream": "KV_RENDERINGS", "subject": CMD, "stored_subject": "$KV.RENDERINGS.e"},
        ),
        (
            "$KV.X.a",
            None,
            None,
            "delivered under another subject",
            {"subject": "$KV.X.a"},
        ),
    ],
)
def test_what_the_server_delivers_from_a_stream_is_refused(
    subject: str, reply: str | None, headers: dict[str, str] | None, reason: str, source: dict
) -> None:
    refused = provenance.refusal(subject, reply, headers, CMD)
    assert refused is not None
    assert (refused.reason, refused.source) == (reason, source)


def test_a_pod_token_makes_a_pod_identity() -> None:
    assert pod_identity(BusAuth(token="t"))
    assert pod_identity(BusAuth(token_file="/run/token"))
    assert not pod_identity(BusAuth(user="sidecar", password="p"))
    assert not pod_identity(BusAuth())


def test_the_token_file_is_read_at_every_connect(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    token = BusAuth.resolve({}, {"NATS_TOKEN_FILE": str(path)}).options()["token"]
    assert token() == "first"
    path.write_text("renewed\n")  # the kubelet renews it in place
    assert token() == "renewed"
    path.unlink()  # caught between two renewals: the last one read is sent again
    assert token() == "renewed"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_token_file_is_a_start_up_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="token file"):
        BusAuth(token_file=str(path)).options()


def test_the_pods_grants_match_where_chaosfs_publishes_and_listens() -> None:
    grants = allowed("a", "db.0")
    # Its audit events: under its pod, names escaped into single tokens.
    event = audit_subject("chaosfs", "sidecar.ready", ("a", "db.0"))
    assert event == "chaosbus.audit.chaosfs.a.db=2E0.sidecar=2Eready"
    assert "chaosbus.audit.chaosfs.a.db=2E0.>" in grants["pub"]
    # Its inboxes, and nobody else's.
    assert pod_inbox_prefix("a", "db.0") == "_INBOX_chaosfs.a.db=2E0"
    assert grants["sub"][0] == "_INBOX_chaosfs.a.db=2E0.>"
    assert not any(s.startswith("_INBOX.") or s == "_INBOX_chaosfs.>" for s in grants["sub"])
    # Consumers only in the form whose subject shows the filter.
    creates = [s for s in grants["pub"] if ".CONSUMER.CREATE." in s]
    assert creates == [
        "$JS.API.CONSUMER.CREATE.KV_DESIRED.*.$KV.DESIRED.fleet.>",
        "$JS.API.CONSUMER.CREATE.KV_DESIRED.*.$KV.DESIRED.pod.a.db=2E0.>",
        "$JS.API.CONSUMER.CREATE.KV_SIDECARS.*.$KV.SIDECARS.a.db=2E0",
    ]


def test_a_republished_entry_is_known_by_its_server_headers() -> None:
    headers = {
        "Nats-Stream": "KV_RENDERINGS",
        "Nats-Subject": "$KV.RENDERINGS.e",
        "Nats-Sequence": "9",
    }
    assert provenance.republished_from(headers) == "KV_RENDERINGS"
    # What chaosbus's own writers put on a desired-state entry.
    assert provenance.republished_from({"KV-Operation": "DEL"}) is None
    assert provenance.republished_from({"Nats-Msg-Id": "x"}) is None
    assert provenance.republished_from(None) is None
