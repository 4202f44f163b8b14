#!/usr/bin/env bash
# The test command: installs what the tests talk to (real etcd, openssl,
# curl), then runs every Go test with the race detector.
# Usage: ./test.sh [go test flags...]   e.g. ./test.sh -run TestEndToEnd ./cmd/...
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ $# -eq 0 ]; then set -- ./...; fi
exec go test -race -count=1 -timeout 20m "$@"
