#!/usr/bin/env bash
# The test command: installs what the tests talk to (real etcd, openssl,
# curl, h2load, the h2spec conformance suite), then runs every Go test
# with the race detector.
# Usage: ./test.sh [go test flags...]   e.g. ./test.sh -run TestEndToEnd ./cmd/...
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v chromium >/dev/null 2>&1 || need+=(chromium)     # browser tests (TestStatusPageInChromium, HTTP/3)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)   # deploy/monitoring (TestMonitoringDashboardQueries)
# DNS-01 tests: a real authoritative server (named) and nsupdate for hooks
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || need+=(bind9)
command -v nsupdate >/dev/null 2>&1 || need+=(bind9-dnsutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# h2spec, HTTP/2 conformance (TestHTTP2Conformance), from the Go module proxy
if ! command -v h2spec >/dev/null 2>&1; then
  echo "test.sh: installing h2spec"
  GOBIN="$(go env GOPATH)/bin" go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible
  export PATH="$(go env GOPATH)/bin:$PATH"
fi

if [ $# -eq 0 ]; then set -- ./...; fi
exec go test -race -count=1 -timeout 20m "$@"
