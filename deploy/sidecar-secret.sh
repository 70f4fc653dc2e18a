#!/bin/sh
# sidecar-secret.sh: give a namespace what its chaosfs sidecars need to reach NATS.
#
#   deploy/sidecar-secret.sh NAMESPACE [CHAOSBUS_NAMESPACE]
#
# Makes, or updates, the Secret chaosbus-sidecar in NAMESPACE, which the
# sidecar templates read:
#   password  the password of the NATS user "sidecar": the Secret
#             chaosbus-nats-sidecar in CHAOSBUS_NAMESPACE (default chaos-testing)
#   ca.crt    the CA that signed the NATS server's certificate (Secret nats-tls)
# Run it for every namespace that has injection configs, and again after
# changing the password or the CA. Needs kubectl, with the rights to read
# those two Secrets and to write Secrets in NAMESPACE.
set -eu

usage() {
    echo "usage: $0 NAMESPACE [CHAOSBUS_NAMESPACE]" >&2
    exit 2
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    usage
fi
namespace=$1
home=${2:-chaos-testing}
[ -n "$namespace" ] || usage

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# cert-manager writes nats-tls some seconds after the Certificate is applied.
kubectl -n "$home" wait --for=condition=Ready certificate/nats-tls --timeout=180s >/dev/null
kubectl -n "$home" get secret chaosbus-nats-sidecar -o jsonpath='{.data.password}' >"$tmp/password.b64"
kubectl -n "$home" get secret nats-tls -o 'jsonpath={.data.ca\.crt}' >"$tmp/ca.b64"
base64 -d <"$tmp/password.b64" >"$tmp/password"
base64 -d <"$tmp/ca.b64" >"$tmp/ca.crt"
if [ ! -s "$tmp/password" ]; then
    echo "$0: the Secret chaosbus-nats-sidecar in $home has no password" >&2
    exit 1
fi
if [ ! -s "$tmp/ca.crt" ]; then
    echo "$0: the Secret nats-tls in $home has no ca.crt" >&2
    exit 1
fi

kubectl create secret generic chaosbus-sidecar --namespace "$namespace" \
    --from-file=password="$tmp/password" --from-file=ca.crt="$tmp/ca.crt" \
    --dry-run=client -o yaml | kubectl apply -f -
