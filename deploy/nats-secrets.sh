#!/bin/sh
# nats-secrets.sh: make the NATS password Secrets of a chaosbus installation.
#
#   deploy/nats-secrets.sh [CHAOSBUS_NAMESPACE]
#
# One random password per NATS user (operator, template-watcher, injector,
# sidecar, controller; letters and digits, as NATS wants them), written into
#   chaosbus-nats-users       the server's: OPERATOR_PASSWORD,
#                             TEMPLATE_WATCHER_PASSWORD, INJECTOR_PASSWORD,
#                             SIDECAR_PASSWORD, CONTROLLER_PASSWORD
#                             (deploy/nats/nats.conf)
#   chaosbus-nats-<user>      each user's own, under the key "password"
# in CHAOSBUS_NAMESPACE (default chaos-testing), which must exist. Run it once,
# before the first `kubectl apply`; it refuses to replace Secrets that exist
# (to change the passwords: delete the six, run it again, restart NATS and
# the services, and run deploy/sidecar-secret.sh again for every namespace).
# chaosctl users take the operator's password from chaosbus-nats-operator.
# The passwords go through files in a private temporary directory, never
# through command lines.
set -eu

namespace=${1:-chaos-testing}
users="operator template-watcher injector sidecar controller"

for name in users $users; do
    if kubectl -n "$namespace" get secret "chaosbus-nats-$name" >/dev/null 2>&1; then
        echo "$0: the Secret chaosbus-nats-$name exists in $namespace: nothing changed" >&2
        exit 1
    fi
done

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# 48 hex digits after a letter: NATS reads a bare number as a number.
for user in $users; do
    password=p$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s' "$password" >"$tmp/$user"
    printf '%s_PASSWORD=%s\n' "$(printf '%s' "$user" | tr 'a-z-' 'A-Z_')" "$password" >>"$tmp/users.env"
done

for user in $users; do
    kubectl -n "$namespace" create secret generic "chaosbus-nats-$user" \
        --from-file=password="$tmp/$user" >/dev/null
    echo "made the Secret chaosbus-nats-$user in $namespace"
done
kubectl -n "$namespace" create secret generic chaosbus-nats-users \
    --from-env-file="$tmp/users.env" >/dev/null
echo "made the Secret chaosbus-nats-users in $namespace"
