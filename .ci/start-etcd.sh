#!/usr/bin/env bash
# Installs Debian's etcd server (/usr/bin/etcd, 3.4) for the
# tlsconfig/etcdstore tests, which start their own throwaway etcd on
# 127.0.0.1 and fail (rather than skip) when the binary is missing.
# Nothing is started here: the tests own the server's lifetime.
set -euo pipefail
if [ -x /usr/bin/etcd ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y etcd-server
