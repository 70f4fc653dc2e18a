#!/bin/sh
# auth-secrets.sh: make the Secrets of chaos-auth, the NATS auth callout
# (deploy/optional/auth-callout).
#
#   deploy/auth-secrets.sh [CHAOSBUS_NAMESPACE]
#
# Makes, in CHAOSBUS_NAMESPACE (default chaos-testing), which must exist:
#   chaosbus-auth-issuer      issuer.nk: a new account nkey seed (SA...), with which
#                             chaos-auth signs every sidecar's user; only chaos-auth
#                             mounts it
#   chaosbus-nats-chaos-auth  password: chaos-auth's NATS password
#   chaosbus-auth-nats        the server's side, for nats-callout.conf:
#                             CHAOS_AUTH_ISSUER (the seed's public key, A...) and
#                             CHAOS_AUTH_PASSWORD
# The seed is made by `chaos-auth --keygen` (the chaos-auth of this repository's
# virtualenv after `make setup`, or any other: set CHAOS_AUTH to its path). Run it
# once, before the first `kubectl apply` with the component; it refuses to replace
# Secrets that exist (to change the issuer: delete the three, run it again, restart
# NATS and chaos-auth). Secrets go through files in a private temporary directory,
# never through command lines.
set -eu

namespace=${1:-chaos-testing}
chaos_auth=${CHAOS_AUTH:-chaos-auth}
secrets="chaosbus-auth-issuer chaosbus-nats-chaos-auth chaosbus-auth-nats"

if ! command -v "$chaos_auth" >/dev/null 2>&1; then
    echo "$0: $chaos_auth not found: set CHAOS_AUTH to chaos-auth's path (.venv/bin/chaos-auth)" >&2
    exit 2
fi
for name in $secrets; do
    if kubectl -n "$namespace" get secret "$name" >/dev/null 2>&1; then
        echo "$0: the Secret $name exists in $namespace: nothing changed" >&2
        exit 1
    fi
done

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

issuer=$("$chaos_auth" --issuer-seed "$tmp/issuer.nk" --keygen)
# 48 hex digits after a letter: NATS reads a bare number as a number.
password=p$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
printf '%s' "$password" >"$tmp/password"
printf 'CHAOS_AUTH_ISSUER=%s\nCHAOS_AUTH_PASSWORD=%s\n' "$issuer" "$password" >"$tmp/server.env"

kubectl -n "$namespace" create secret generic chaosbus-auth-issuer \
    --from-file=issuer.nk="$tmp/issuer.nk" >/dev/null
echo "made the Secret chaosbus-auth-issuer in $namespace (issuer $issuer)"
kubectl -n "$namespace" create secret generic chaosbus-nats-chaos-auth \
    --from-file=password="$tmp/password" >/dev/null
echo "made the Secret chaosbus-nats-chaos-auth in $namespace"
kubectl -n "$namespace" create secret generic chaosbus-auth-nats \
    --from-env-file="$tmp/server.env" >/dev/null
echo "made the Secret chaosbus-auth-nats in $namespace"
