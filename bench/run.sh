#!/usr/bin/env bash
# gatehouse beside nginx, HAProxy and (Debian's) Caddy, same certificate,
# upstream and load; see bench/README.md.
#
# Usage: bench/run.sh [--quick] [driver flags...]
#   --quick            short smoke run (small counts, one round; a few minutes)
#   --profile          then profile gatehouse (pprof build) in every scenario
#   --only=h1,h2,names scenarios to run (hs-ecdsa hs-rsa hs-mlkem h1 h2 h1-tls-up h2-h2c-up bulk bulk-nginx-up
#                      latency idle hostile hostile-latency partial partial-latency names)
#   --rounds=N  --d=8s  --names=10000,100000  --names-layout=hosts|routes
#   --only=names --names=10000,100000   issue 15's many-names table: gatehouse
#                      beside Caddy (and nginx, HAProxy at <= 10k), goals beside
# Results: bench/results/<time>/ (results.md, results.json, driver.log, profiles/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs (proxy on CPU 0, load on CPU 1)"; exit 1; }

need=()
command -v nginx   >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v h2load  >/dev/null 2>&1 || need+=(nghttp2-client)
command -v wrk     >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ] || ! command -v caddy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null || true
  if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # caddy is optional: measured when Debian has it
  command -v caddy >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq caddy >/dev/null 2>&1 || echo "bench: caddy not available; skipped"
fi

# One bench at a time per machine: two runs pinned to the same CPUs spoil
# each other's numbers (seen: stalled handshakes, SYN retransmits). Wait
# for a running one (bounded), then hold the lock until the driver exits.
exec 9>/tmp/gatehouse-bench.lock
if ! flock -n 9; then
  echo "bench: another bench run holds /tmp/gatehouse-bench.lock; waiting (at most 1 h)"
  flock -w 3600 9 || { echo "bench: still busy after 1 h; giving up"; exit 1; }
fi

cache="$root/bench/.cache"
# binaries are per checkout (bench/.bin), not in the cache: the cache may be
# shared between checkouts, and a build from another checkout must not
# replace a binary a running bench is about to start
bin="$root/bench/.bin"
mkdir -p "$cache" "$bin"
echo "bench: building gatehouse, gatehouse-pprof, loadgen, upstream, driver"
go build -trimpath -o "$bin/gatehouse" ./cmd/gatehouse
go build -trimpath -tags gatehouse_pprof -o "$bin/gatehouse-pprof" ./cmd/gatehouse
go build -trimpath -o "$bin/loadgen" ./bench/loadgen
go build -trimpath -o "$bin/upstream" ./bench/upstream
go build -trimpath -o "$bin/driver" ./bench/driver

# 5,000 idle connections on each side: the fd limit as high as allowed (20,000 here)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

out="$root/bench/results/$(date +%Y%m%d-%H%M%S)"
args=()
for a in "$@"; do
  case "$a" in
    --*=*) args+=("-${a#--}") ;;
    --*)   args+=("-${a#--}") ;;
    *)     args+=("$a") ;;
  esac
done
# the driver stops every process it started on exit or on a signal
exec "$bin/driver" -bin "$bin" -cache "$cache" -out "$out" "${args[@]}"
