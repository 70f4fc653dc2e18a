"""What chaosctl audit shows as an event's origin: the subject, never the body's claim."""

from __future__ import annotations

from chaosctl.auditlog import stamp


def test_a_service_event_is_attributed_to_its_subjects_service():
    assert stamp("chaosbus.audit.chaosctl.rule=2Eset") == {
        "subject": "chaosbus.audit.chaosctl.rule=2Eset",
        "origin": "chaosctl",
    }


def test_a_sidecar_with_its_own_identity_is_attributed_to_its_pod_too():
    stamped = stamp("chaosbus.audit.chaosfs.a.db-0.sidecar=2Eready")
    assert stamped["origin"] == "chaosfs"
    assert stamped["origin_pod"] == "a/db-0"


def test_a_subject_too_short_to_name_a_service_has_an_unknown_origin():
    assert stamp("chaosbus.audit")["origin"] == "?"
