"""One AdmissionReview in, one answer out; no I/O here.

The answer is a :class:`Verdict`: HTTP 400 for a body that is not an
AdmissionReview for a Pod, otherwise HTTP 200 with ``allowed: true`` in the
request's apiVersion. The webhook never denies a pod and never answers 5xx:
anything going wrong while deciding or mutating admits the pod unchanged with a
warning, because a broken injector must not stop a cluster's pods from starting.
"""

from __future__ import annotations

import base64
import json
import traceback
from dataclasses import dataclass, field
from typing import Any

from .mutate import MutationError, mutate
from .policy import View, decide, pod_identity

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
WARNING_PREFIX = "chaos-injector: "

# Outcomes, also the metric's label values.
INJECTED = "injected"
UNCHANGED = "unchanged"  # injection requested but the pod already had it all
SKIPPED = "skipped"
ERROR = "error"
INVALID = "invalid"


class BadReview(ValueError):
    """The body is not an AdmissionReview this webhook can answer."""


@dataclass(frozen=True)
class Review:
    api_version: str
    uid: str
    request: dict[str, Any]
    pod: dict[str, Any]
    namespace: str


@dataclass
class Verdict:
    status: int
    body: dict[str, Any]
    outcome: str
    reason: str
    # For the log line: who, with what.
    fields: dict[str, Any] = field(default_factory=dict)


def _no_constants(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON; echoing one in
    # a patch would make the answer unparsable for the API server.
    raise BadReview(f"the body is not valid JSON: {name} is not a JSON value")


def parse(body: bytes) -> Review:
    try:
        doc = json.loads(body, parse_constant=_no_constants)
    except BadReview:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadReview(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadReview("the body is not a JSON object")
    if doc.get("kind") != "AdmissionReview":
        raise BadReview(f"kind must be AdmissionReview, got {doc.get('kind')!r}")
    api_version = doc.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise BadReview(f"apiVersion must be one of {', '.join(API_VERSIONS)}, got {api_version!r}")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise BadReview("the AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("the AdmissionReview request has no uid")
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        raise BadReview(f"this webhook only mutates core/v1 Pods, the request is for {kind!r}")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise BadReview("the AdmissionReview request has no Pod object")
    namespace = ""
    meta = pod.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("namespace"), str):
        namespace = meta["namespace"]
    if not namespace and isinstance(request.get("namespace"), str):
        # The API server fills the pod's namespace in after admission.
        namespace = request["namespace"]
    return Review(api_version, uid, request, pod, namespace)


def review(body: bytes, state: View, prefix: str) -> Verdict:
    try:
        parsed = parse(body)
    except BadReview as exc:
        return Verdict(400, {"error": str(exc)}, INVALID, str(exc))
    _, shown = pod_identity(parsed.pod)
    fields: dict[str, Any] = {"uid": parsed.uid, "namespace": parsed.namespace, "pod": shown}
    try:
        return _answer(parsed, state, prefix, fields)
    except Exception as exc:  # the pod must start whatever went wrong
        if isinstance(exc, MutationError):
            reason = f"cannot inject: {exc}; the pod was admitted unchanged"
        else:
            reason = f"internal error ({type(exc).__name__}: {exc}); the pod was admitted unchanged"
            # Not a pod we could not make sense of but a bug: keep the trace.
            fields = {**fields, "traceback": traceback.format_exc()}
        return Verdict(
            200,
            _response(parsed, warnings=[WARNING_PREFIX + reason], audit=(ERROR, reason)),
            ERROR,
            reason,
            {**fields, "error": repr(exc)},
        )


def _answer(parsed: Review, state: View, prefix: str, fields: dict[str, Any]) -> Verdict:
    operation = parsed.request.get("operation", "CREATE")
    if operation != "CREATE":
        reason = f"operation {operation} is not a pod creation"
        return Verdict(200, _response(parsed, audit=(SKIPPED, reason)), SKIPPED, reason, fields)
    decision = decide(parsed.pod, parsed.namespace, state, prefix)
    fields["config"] = decision.config  # in place: the error path logs it too
    if decision.rendering is None:
        body = _response(parsed, audit=(SKIPPED, decision.reason))
        return Verdict(200, body, SKIPPED, decision.reason, fields)
    mutation = mutate(parsed.pod, decision.rendering, prefix)
    warnings = [WARNING_PREFIX + w for w in mutation.warnings]
    fields.update(
        rendering=f"{decision.rendering.namespace}/{decision.rendering.name}",
        revision=decision.rendering.revision,
        patch_ops=len(mutation.patch),
        warnings=mutation.warnings,
    )
    outcome = INJECTED if mutation.patch else UNCHANGED
    body = _response(
        parsed, patch=mutation.patch, warnings=warnings, audit=(outcome, decision.reason)
    )
    return Verdict(200, body, outcome, decision.reason, fields)


def _printable(text: str, limit: int = 250) -> str:
    """Warnings become HTTP headers on the client side: one short printable line."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _response(
    parsed: Review,
    *,
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
    audit: tuple[str, str],
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": parsed.uid, "allowed": True}
    if patch:
        # Encoded here, inside the caller's try: a value json cannot encode
        # must end as an unchanged pod, not as a 500.
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(patch, separators=(",", ":"), allow_nan=False).encode()
        ).decode()
    if warnings:
        response["warnings"] = [_printable(w) for w in warnings]
    # The API server records these in its audit log (prefixed with the webhook's
    # name); every answer says what the injector did and why.
    outcome, reason = audit
    response["auditAnnotations"] = {"outcome": outcome, "reason": reason[:1000]}
    return {"apiVersion": parsed.api_version, "kind": "AdmissionReview", "response": response}
