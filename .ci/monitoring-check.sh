#!/usr/bin/env bash
# monitoring-check.sh: the alert rules and the dashboard in deploy/monitoring.
#
#   promtool check rules   the rules parse and their templates render
#   promtool test rules    gatehouse-alerts.test.yml: each alert fires on the
#                          series it is for, and not on the ones beside it
#   go test                TestMonitoringMetricsExist: every metric the rules,
#                          their tests and the dashboard name is in a real
#                          /metrics scrape of a running gatehouse;
#                          TestMonitoringDashboardQueries: every dashboard
#                          query is valid PromQL (promtool)
#
# Installs Debian's prometheus (for promtool) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "monitoring-check: installing prometheus (promtool)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

cd deploy/monitoring
promtool check rules gatehouse-alerts.yml
promtool test rules gatehouse-alerts.test.yml
cd ../..
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! go test -count=1 -timeout 10m -run 'TestMonitoringMetricsExist|TestMonitoringDashboardQueries' -v ./cmd/gatehouse/ >"$log" 2>&1; then
  grep -vE 'level=(DEBUG|INFO)' "$log" | tail -60
  echo "monitoring-check: FAIL"
  exit 1
fi
grep -E '^(--- |    monitoring_test)' "$log"
echo "monitoring-check: PASS"
