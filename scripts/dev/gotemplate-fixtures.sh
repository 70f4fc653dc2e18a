#!/bin/sh
# Regenerate tests/unit/gotemplate_fixtures/go-text-template.json with real Go.
#
# Development only: installs Debian's golang-go if Go is missing (needs root and the
# network), then renders scripts/dev/gotemplate/corpus.yaml and the golden cases with
# Go's own text/template. Commit the file it writes. Nothing at run time, and no test,
# needs Go. Pass --check to only verify that the committed file is current.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! command -v go >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "gotemplate-fixtures: Go is not installed; as root: apt-get install golang-go" >&2
        exit 2
    fi
    echo "gotemplate-fixtures: installing Debian's golang-go"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go
fi

python=.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" scripts/dev/gotemplate/fixtures.py "$@"
