#!/usr/bin/env bash
# Issue 15 point 3: `gatehouse import autocert|caddy` of N names into an
# empty file storage; see bench/README.md ("Import at scale").
#
# Usage: bench/import.sh [N ...]     (default: 10000 100000)
#   RUNS=3      runs per count and kind (medians are yours to take)
#   KINDS="autocert caddy"
#   WORK=DIR    where the sources and the storage go (default a temp dir
#               under /tmp; the autocert source is kept there between runs)
# Each run prints: kind, N, wall s, user s, sys s, max RSS KiB, the load
# average before it, and gatehouse's own summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10000 100000)
runs=${RUNS:-3}
kinds=${KINDS:-"autocert caddy"}
work=${WORK:-/tmp/gatehouse-import-bench}
cache="$root/bench/.cache"
bin="$root/bench/.bin"
mkdir -p "$cache" "$bin" "$work"

# one bench at a time per machine (bench/run.sh takes the same lock)
exec 9>/tmp/gatehouse-bench.lock
if ! flock -n 9; then
  echo "import bench: another bench run holds /tmp/gatehouse-bench.lock; waiting (at most 1 h)"
  flock -w 3600 9 || { echo "import bench: still busy after 1 h; giving up"; exit 1; }
fi

go build -trimpath -o "$bin/gatehouse" ./cmd/gatehouse
go build -trimpath -o "$bin/driver" ./bench/driver

for n in "${counts[@]}"; do
  dir="$work/$n"
  # the names-N set (generated once, cached in bench/.cache) as an
  # autocert cache and a config listing every name
  eval "$("$bin/driver" -cache "$cache" -names "$n" -import-prep "$dir")"
  for kind in $kinds; do
    src=$autocert
    [ "$kind" = caddy ] && src=$caddy
    for r in $(seq 1 "$runs"); do
      # a fresh storage dir per run, all removed at the end: on ext4
      # without a journal (this VM's) the kernel skips inodes freed in
      # the last 1-6 minutes when it allocates new ones, one by one, so
      # removing the previous run's 400,000 files right before a run
      # made a run several times slower (bench/README.md)
      store="$dir/store-$kind-$r-$$"
      sed "s#^dir = .*#dir = \"$store\"#" "$config" >"$dir/run.toml"
      sync
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      summary=$( { /usr/bin/time -f "TIME %e %U %S %M" "$bin/gatehouse" import "$kind" "$src" --config "$dir/run.toml" >/dev/null; } 2>&1 ) || true
      t=$(grep '^TIME' <<<"$summary" | cut -d' ' -f2-)
      line=$(grep 'imported,' <<<"$summary" || true)
      printf '%-8s %6d run %d  wall %s user %s sys %s maxrss_kib %s  load %s  | %s\n' \
        "$kind" "$n" "$r" $t "$load" "${line#gatehouse import: }"
    done
  done
done
for n in "${counts[@]}"; do rm -rf "$work/$n"/store-*-$$; done
