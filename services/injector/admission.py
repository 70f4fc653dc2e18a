"""One AdmissionReview in, one answer out; no I/O here.

The answer is a :class:`Verdict`: HTTP 400 for a body that is not an
AdmissionReview for a Pod, otherwise HTTP 200 with ``allowed: true`` in the
request's apiVersion. The webhook never denies a pod and never answers 5xx:
anything going wrong while deciding or mutating admits the pod unchanged with a
warning, because a broken injector must not stop a cluster's pods from starting.

For the same reason an injection that would make the API server refuse the pod
(the Pod rules in :mod:`.podrules`, the namespace's Pod Security level), lose
the app's data or leave it waiting for a sidecar that is not there is refused:
the pod is admitted unchanged, with the reason as a warning and in the audit
annotations; the caller writes it to the audit trail and counts it by rule.

Two kinds of call are not a pod's admission decision, and the caller records
neither in the audit trail nor in the admission metrics:

* a dry run (``request.dryRun``, e.g. ``kubectl apply --dry-run=server``): the
  answer is the same as for the real request, but the pod is never created;
* the API server's second call for an injected pod (reinvocation), made after
  later webhooks or its own ServiceAccount plugin changed it: the answer adds
  the sidecar's mounts to containers added since (``mutate.complete``) or is an
  empty allow; only an answer that adds something is audited.
"""

from __future__ import annotations

import base64
import json
import traceback
from dataclasses import dataclass, field
from typing import Any

from chaosbus.injection import Rendering

from . import podsecurity
from .mutate import Mutation, MutationError, Refusal, complete, has_injection, mutate
from .policy import Decision, View, decide, pod_identity

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


# A reinvocation's result (Verdict.reinvocation).
REINVOKED_UNCHANGED = "unchanged"
REINVOKED_PATCHED = "patched"


@dataclass(frozen=True)
class Review:
    api_version: str
    uid: str
    request: dict[str, Any]
    pod: dict[str, Any]
    namespace: str

    @property
    def dry_run(self) -> bool:
        return self.request.get("dryRun") is True


@dataclass
class Verdict:
    status: int
    body: dict[str, Any]
    outcome: str
    reason: str
    # For the log line: who, with what.
    fields: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    # The rules of the refusals, when the injection was refused.
    refused: list[str] = field(default_factory=list)
    # Set for the API server's second call on an injected pod: "unchanged" or "patched".
    reinvocation: str = ""


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
    if parsed.dry_run:
        fields["dry_run"] = True
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
            dry_run=parsed.dry_run,
        )


def _answer(parsed: Review, state: View, prefix: str, fields: dict[str, Any]) -> Verdict:
    dry_run = parsed.dry_run
    operation = parsed.request.get("operation", "CREATE")
    if operation != "CREATE":
        reason = f"operation {operation} is not a pod creation"
        body = _response(parsed, audit=(SKIPPED, reason))
        return Verdict(200, body, SKIPPED, reason, fields, dry_run)
    decision = decide(parsed.pod, parsed.namespace, state, prefix)
    fields["config"] = decision.config  # in place: the error path logs it too
    if decision.rendering is None:
        injected_with = decision.injected_with
        if injected_with is not None and has_injection(parsed.pod, injected_with):
            return _reinvoked(parsed, decision, injected_with, fields)
        body = _response(parsed, audit=(SKIPPED, decision.reason))
        return Verdict(200, body, SKIPPED, decision.reason, fields, dry_run)
    rendering = decision.rendering
    fields.update(rendering=f"{rendering.namespace}/{rendering.name}", revision=rendering.revision)
    mutation = mutate(parsed.pod, rendering, prefix)
    refusals = _pod_security(parsed, state, rendering.spec) + mutation.refusals
    if refusals:
        return _refused(parsed, decision, refusals, fields)
    warnings = [WARNING_PREFIX + w for w in mutation.warnings]
    fields.update(patch_ops=len(mutation.patch), warnings=mutation.warnings)
    outcome = INJECTED if mutation.patch else UNCHANGED
    body = _response(
        parsed, patch=mutation.patch, warnings=warnings, audit=(outcome, decision.reason)
    )
    return Verdict(200, body, outcome, decision.reason, fields, dry_run)


def _pod_security(parsed: Review, state: View, spec: dict[str, Any]) -> list[Refusal]:
    labels = state.namespace_labels(parsed.namespace)
    level = podsecurity.enforced_level(labels)
    broken = podsecurity.violations(level, spec, parsed.pod.get("spec"))
    if not broken:
        return []
    message = (
        f"namespace {parsed.namespace} enforces the Pod Security level {level!r} "
        f"({podsecurity.ENFORCE_LABEL}), which the sidecar breaks: {'; '.join(broken)}"
    )
    return [Refusal("pod-security", message)]


def _refused(
    parsed: Review, decision: Decision, refusals: list[Refusal], fields: dict[str, Any]
) -> Verdict:
    """Admit the pod as it came: with the injection it would not start, or not work."""
    reason = (
        f"injection of {decision.config!r} refused, the pod was admitted without it: "
        + "; ".join(r.message for r in refusals)
    )
    warnings = [WARNING_PREFIX + f"{decision.config!r} not injected: {r.message}" for r in refusals]
    rules = sorted({r.rule for r in refusals})
    fields["refused"] = rules
    body = _response(parsed, warnings=warnings, audit=(SKIPPED, reason))
    return Verdict(200, body, SKIPPED, reason, fields, parsed.dry_run, refused=rules)


def _reinvoked(
    parsed: Review, decision: Decision, rendering: Rendering, fields: dict[str, Any]
) -> Verdict:
    completion: Mutation = complete(parsed.pod, rendering)
    fields.update(rendering=f"{rendering.namespace}/{rendering.name}", reinvocation=True)
    if not completion.patch:
        reason = f"{decision.reason}; nothing to add"
        body = _response(parsed, audit=(UNCHANGED, reason))
        return Verdict(
            200, body, UNCHANGED, reason, fields, parsed.dry_run, reinvocation=REINVOKED_UNCHANGED
        )
    reason = f"{decision.reason}; reinvoked: " + "; ".join(completion.changes)
    fields.update(patch_ops=len(completion.patch), warnings=completion.warnings)
    warnings = [WARNING_PREFIX + w for w in completion.warnings]
    body = _response(parsed, patch=completion.patch, warnings=warnings, audit=(INJECTED, reason))
    return Verdict(
        200, body, INJECTED, reason, fields, parsed.dry_run, reinvocation=REINVOKED_PATCHED
    )


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
