#!/usr/bin/env bash
# image-check.sh: build gatehouse's runtime image offline and check it.
#
# Usage: .ci/image-check.sh PATH_TO_STATIC_BINARY
#   e.g. CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /tmp/gatehouse-static ./cmd/gatehouse
#        .ci/image-check.sh /tmp/gatehouse-static
#
# The Dockerfile's build stage needs golang:1.26-bookworm from a registry,
# which CI cannot reach. So this script builds the same runtime stage with
# buildah from a binary built on the host: FROM scratch, the binary (with the
# same file capability), the host's CA bundle and zoneinfo, a passwd/group
# line for uid 65532, and the same USER/ENV/VOLUME/EXPOSE/HEALTHCHECK/
# ENTRYPOINT/CMD lines as the Dockerfile. Those lines are listed once below
# (RUNTIME_LINES) and each must appear verbatim in the Dockerfile's runtime
# stage, so the two cannot drift apart unnoticed.
#
# Checks:
#   build+inspect (always): config (user, entrypoint, cmd, env, ports,
#     volume, healthcheck; docker format, as OCI drops HEALTHCHECK), size
#     < 25 MB, the file capability on /gatehouse, /var/lib/gatehouse owned by
#     65532, CA bundle and zoneinfo present.
#   run (when containers can run here): the hardened container (read-only,
#     cap-drop ALL + NET_BIND_SERVICE, no-new-privileges, named volume)
#     proxies HTTPS to a local upstream; `podman healthcheck run` and
#     `gatehouse healthcheck` pass; SIGTERM exits 0; in its own network
#     namespace it binds :443/:80 as uid 65532; with --cap-drop ALL alone exec
#     is refused (as the Dockerfile documents). Then plain runc with the
#     capability sets Docker and Kubernetes use (never ambient, unlike podman)
#     checks each port/capability case the Dockerfile's comment lists.
#     Traffic goes to 127.0.0.1 or stays inside namespaces made here.
#   Dockerfile (only when golang:1.26-bookworm exists locally): builds the
#     real Dockerfile with --pull=never and runs the same inspect checks.
#
# Environment:
#   IMAGE_CHECK_REQUIRE_RUN=1  fail (instead of skipping) when containers
#                              cannot run on this machine.
#   CONTAINERS_CONF            used if set; else a containers.conf for this
#                              kind of machine (runc, cgroupfs, host netns,
#                              lower ulimits) is written to the temp dir.
#
# Ends with one line: "image-check: PASS ..." (exit 0) or
# "image-check: FAIL ..." (exit 1).

set -uo pipefail

# ---- the runtime stage's metadata lines; the Dockerfile must contain each.
RUNTIME_LINES=(
  'USER 65532:65532'
  'ENV GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml GATEHOUSE_STORAGE_DIR=/var/lib/gatehouse'
  'VOLUME /var/lib/gatehouse'
  'EXPOSE 80 443 443/udp'
  'HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/gatehouse","healthcheck"]'
  'ENTRYPOINT ["/gatehouse"]'
  'CMD ["run"]'
)
MAX_IMAGE_BYTES=25000000 # 25 MB
BUILDER_BASE=docker.io/library/golang:1.26-bookworm

usage() { echo "usage: $0 PATH_TO_STATIC_BINARY" >&2; exit 2; }
[ $# -eq 1 ] || usage
BIN=$(readlink -f "$1" 2>/dev/null) || usage
[ -f "$BIN" ] && [ -x "$BIN" ] || { echo "image-check: FAIL: $1 is not an executable file"; exit 1; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
DOCKERFILE=$REPO/Dockerfile
START=$(date +%s)
FAILURES=()
NOTES=()
fail() { echo "  FAIL: $*"; FAILURES+=("$*"); }
ok() { echo "  ok:   $*"; }
note() { echo "  note: $*"; NOTES+=("$*"); }
step() { echo "== $* ($(( $(date +%s) - START ))s)"; }

finish() {
  local took=$(( $(date +%s) - START ))
  if [ ${#FAILURES[@]} -eq 0 ]; then
    echo "image-check: PASS (size ${SIZE_MB:-?} MB; run: ${RUN_RESULT:-not tried}; Dockerfile build: ${DF_RESULT:-not tried}; ${took}s)"
    exit 0
  fi
  echo "image-check: FAIL (${#FAILURES[@]} problem(s), ${took}s):"
  printf '  - %s\n' "${FAILURES[@]}"
  exit 1
}

# ---- temp dir and cleanup of everything this script creates
WORK=$(mktemp -d /tmp/gatehouse-image-check.XXXXXX)
TAG=localhost/gatehouse-image-check:$$
DF_TAG=localhost/gatehouse-image-check-dockerfile:$$
NOCAP_TAG=localhost/gatehouse-image-check-nofilecap:$$
RUNC_IDS=()
BUILDAH_CTRS=()
CONTAINERS=()
VOLUMES=()
IMAGES=()
PIDS=()
cleanup() {
  local c v i p
  for c in "${RUNC_IDS[@]}"; do timeout 30 runc delete -f "$c" >/dev/null 2>&1; done
  for c in "${BUILDAH_CTRS[@]}"; do timeout 30 buildah rm "$c" >/dev/null 2>&1; done
  for c in "${CONTAINERS[@]}"; do timeout 30 podman rm -f -t 2 "$c" >/dev/null 2>&1; done
  for v in "${VOLUMES[@]}"; do timeout 30 podman volume rm -f "$v" >/dev/null 2>&1; done
  for i in "${IMAGES[@]}"; do timeout 60 buildah rmi -f "$i" >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "image-check: FAIL (interrupted)"; exit 1' INT TERM

# ---- tools
step "tools"
pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
need buildah buildah
need podman podman
need runc runc
need skopeo skopeo
need setcap libcap2-bin
need getcap libcap2-bin
need python3 python3
need openssl openssl
need curl curl
[ -s /etc/ssl/certs/ca-certificates.crt ] || pkgs+=(ca-certificates)
[ -e /usr/share/zoneinfo/UTC ] || pkgs+=(tzdata)
if [ ${#pkgs[@]} -gt 0 ]; then
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  echo "  installing: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout 600 apt-get install -y "${pkgs[@]}" >"$WORK/apt.log" 2>&1; then
    timeout 300 apt-get update >>"$WORK/apt.log" 2>&1
    timeout 600 apt-get install -y "${pkgs[@]}" >>"$WORK/apt.log" 2>&1 \
      || { tail -20 "$WORK/apt.log"; echo "image-check: FAIL (cannot install ${pkgs[*]})"; exit 1; }
  fi
fi
for t in buildah podman setcap getcap python3; do
  command -v "$t" >/dev/null || { echo "image-check: FAIL ($t not available)"; exit 1; }
done
ok "buildah $(buildah --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}')"

if [ -z "${CONTAINERS_CONF:-}" ]; then
  cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF=$WORK/containers.conf
fi

# ---- the binary must be static: FROM scratch has no dynamic loader
python3 - "$BIN" <<'EOF' || { echo "image-check: FAIL ($BIN is not a static ELF executable; build with CGO_ENABLED=0)"; exit 1; }
import struct, sys
with open(sys.argv[1], "rb") as f:
    h = f.read(64)
    if h[:4] != b"\x7fELF" or h[4] != 2:
        sys.exit(1)
    phoff, = struct.unpack_from("<Q", h, 32)
    phentsize, phnum = struct.unpack_from("<HH", h, 54)
    for i in range(phnum):
        f.seek(phoff + i * phentsize)
        if struct.unpack("<I", f.read(4))[0] == 3:  # PT_INTERP
            sys.exit(1)
EOF
ok "$BIN is a static ELF executable ($(stat -c %s "$BIN") bytes)"

# ---- drift: each metadata line must be in the Dockerfile's runtime stage
step "Dockerfile drift check"
if [ ! -f "$DOCKERFILE" ]; then
  fail "no Dockerfile at $DOCKERFILE"
else
  # The runtime stage: from the last FROM line to the end.
  runtime_stage=$(awk '/^FROM[ \t]/{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$DOCKERFILE")
  if ! grep -Eq '^FROM scratch[[:space:]]*$' <<<"$runtime_stage"; then
    fail "the Dockerfile's last stage is not FROM scratch"
  fi
  for line in "${RUNTIME_LINES[@]}"; do
    if grep -Fxq -- "$line" <<<"$runtime_stage"; then
      ok "Dockerfile has: $line"
    else
      fail "Dockerfile's runtime stage lacks the line: $line (keep Dockerfile and .ci/image-check.sh in sync)"
    fi
  done
  for kw in USER ENV VOLUME EXPOSE HEALTHCHECK ENTRYPOINT CMD; do
    n=$(grep -Ec "^${kw}[[:space:]]" <<<"$runtime_stage")
    [ "$n" -le 1 ] || fail "Dockerfile's runtime stage has $n $kw lines; image-check.sh mirrors exactly one"
  done
  grep -q 'setcap cap_net_bind_service=+ep /out/gatehouse' "$DOCKERFILE" \
    || fail "Dockerfile no longer sets cap_net_bind_service on the binary; image-check.sh does"
fi

# ---- build context
step "build (buildah bud --pull=never --format docker)"
ctx=$WORK/ctx
mkdir -p "$ctx/state"
cp "$BIN" "$ctx/gatehouse"
chmod 0755 "$ctx/gatehouse"
setcap cap_net_bind_service=+ep "$ctx/gatehouse" || fail "setcap on the binary copy failed"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
cp -a /usr/share/zoneinfo "$ctx/zoneinfo"
echo 'gatehouse:x:65532:65532:gatehouse:/var/lib/gatehouse:/sbin/nologin' >"$ctx/passwd"
echo 'gatehouse:x:65532:' >"$ctx/group"
{
  echo '# generated by .ci/image-check.sh: the Dockerfile runtime stage, from local files'
  echo 'FROM scratch'
  echo 'COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt'
  echo 'COPY zoneinfo /usr/share/zoneinfo'
  echo 'COPY passwd group /etc/'
  echo 'COPY --chown=65532:65532 state /var/lib/gatehouse'
  echo 'COPY gatehouse /gatehouse'
  printf '%s\n' "${RUNTIME_LINES[@]}"
} >"$ctx/Containerfile"
if ! timeout 300 buildah bud --pull=never --format docker --layers=false --force-rm -f "$ctx/Containerfile" -t "$TAG" "$ctx" >"$WORK/build.log" 2>&1; then
  tail -30 "$WORK/build.log"
  fail "buildah bud failed"
  finish
fi
IMAGES+=("$TAG")
ok "built $TAG"
# The same image without the file capability (NET_BIND_FILECAP=0), for the
# runc checks of the alternatives the Dockerfile documents.
cp "$BIN" "$ctx/gatehouse"
chmod 0755 "$ctx/gatehouse"
if timeout 300 buildah bud --pull=never --format docker --layers=false --force-rm -f "$ctx/Containerfile" -t "$NOCAP_TAG" "$ctx" >>"$WORK/build.log" 2>&1; then
  IMAGES+=("$NOCAP_TAG")
else
  NOCAP_TAG=
  note "could not build the variant without file capability; its runc checks are skipped"
fi

# ---- inspect: config, size and files of an image
# inspect_image IMAGE LABEL: sets SIZE_MB for the first image checked.
inspect_image() {
  local img=$1 label=$2 out mnt ctr size
  if ! timeout 60 buildah inspect --type image "$img" >"$WORK/inspect.json" 2>"$WORK/inspect.err"; then
    fail "$label: buildah inspect failed: $(head -3 "$WORK/inspect.err")"
    return
  fi
  out=$(python3 - "$WORK/inspect.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
dc = (d.get("Docker") or {}).get("config") or {}
oc = (d.get("OCIv1") or {}).get("config") or {}
errs = []
def want(name, got, exp):
    if got != exp:
        errs.append(f"{name} is {got!r}, want {exp!r}")
    else:
        print(f"ok {name} = {got!r}")
want("user", dc.get("User"), "65532:65532")
want("entrypoint", dc.get("Entrypoint"), ["/gatehouse"])
want("cmd", dc.get("Cmd"), ["run"])
want("exposed ports", sorted((dc.get("ExposedPorts") or {}).keys()), ["443/tcp", "443/udp", "80/tcp"])
want("volumes", sorted((dc.get("Volumes") or {}).keys()), ["/var/lib/gatehouse"])
env = dc.get("Env") or []
for e in ("GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml", "GATEHOUSE_STORAGE_DIR=/var/lib/gatehouse"):
    if e not in env:
        errs.append(f"env lacks {e} (has {env})")
    else:
        print(f"ok env has {e}")
hc = dc.get("Healthcheck") or {}
want("healthcheck", hc.get("Test"), ["CMD", "/gatehouse", "healthcheck"])
if oc and oc.get("User") != "65532:65532":
    errs.append(f"OCI config user is {oc.get('User')!r}")
for e in errs:
    print("FAIL " + e)
EOF
)
  while IFS= read -r l; do
    case $l in
      ok\ *) ok "$label: ${l#ok }" ;;
      FAIL\ *) fail "$label: ${l#FAIL }" ;;
    esac
  done <<<"$out"

  size=$(timeout 60 podman image inspect --format '{{.Size}}' "$img" 2>/dev/null)
  if [[ $size =~ ^[0-9]+$ ]]; then
    local mb
    mb=$(awk -v s="$size" 'BEGIN{printf "%.1f", s/1e6}')
    [ -z "${SIZE_MB:-}" ] && SIZE_MB=$mb
    if [ "$size" -lt "$MAX_IMAGE_BYTES" ]; then
      ok "$label: image size $size bytes ($mb MB) < 25 MB"
    else
      fail "$label: image size $size bytes ($mb MB) is not < 25 MB"
    fi
  else
    fail "$label: cannot read the image size"
  fi

  # Files, from the image's root filesystem.
  ctr=$(timeout 60 buildah from --pull-never "$img" 2>/dev/null) || { fail "$label: buildah from failed"; return; }
  mnt=$(timeout 60 buildah mount "$ctr" 2>/dev/null) || { timeout 30 buildah rm "$ctr" >/dev/null 2>&1; fail "$label: buildah mount failed"; return; }
  if getcap "$mnt/gatehouse" | grep -q 'cap_net_bind_service=ep'; then
    ok "$label: /gatehouse has file capability cap_net_bind_service=ep"
  else
    fail "$label: /gatehouse lacks the cap_net_bind_service file capability (getcap: $(getcap "$mnt/gatehouse"))"
  fi
  [ "$(stat -c '%u:%g' "$mnt/var/lib/gatehouse" 2>/dev/null)" = "65532:65532" ] \
    && ok "$label: /var/lib/gatehouse is owned by 65532:65532 (mode $(stat -c %a "$mnt/var/lib/gatehouse"))" \
    || fail "$label: /var/lib/gatehouse is owned by $(stat -c '%u:%g' "$mnt/var/lib/gatehouse" 2>&1), want 65532:65532"
  grep -q 'BEGIN CERTIFICATE' "$mnt/etc/ssl/certs/ca-certificates.crt" 2>/dev/null \
    && ok "$label: /etc/ssl/certs/ca-certificates.crt present ($(grep -c 'BEGIN CERTIFICATE' "$mnt/etc/ssl/certs/ca-certificates.crt") certificates)" \
    || fail "$label: no CA bundle at /etc/ssl/certs/ca-certificates.crt"
  [ -f "$mnt/usr/share/zoneinfo/UTC" ] && [ -f "$mnt/usr/share/zoneinfo/Europe/Berlin" ] \
    && ok "$label: /usr/share/zoneinfo present" || fail "$label: zoneinfo missing"
  grep -q '^gatehouse:x:65532:65532:' "$mnt/etc/passwd" 2>/dev/null && grep -q '^gatehouse:x:65532:' "$mnt/etc/group" 2>/dev/null \
    && ok "$label: /etc/passwd and /etc/group name uid/gid 65532" || fail "$label: passwd/group lack gatehouse 65532"
  timeout 30 buildah umount "$ctr" >/dev/null 2>&1
  timeout 30 buildah rm "$ctr" >/dev/null 2>&1
}

step "inspect"
inspect_image "$TAG" image

# ---- run
run_checks() {
  local why out
  # Can containers run at all? Probe with the image's own `version`.
  if ! out=$(timeout 60 podman run --rm --pull=never --no-healthcheck "$TAG" version 2>&1); then
    why="podman run failed: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
    if [ "${IMAGE_CHECK_REQUIRE_RUN:-0}" = 1 ]; then
      fail "containers cannot run and IMAGE_CHECK_REQUIRE_RUN=1: $why"
    else
      note "skipping run checks, containers cannot run here: $why"
    fi
    RUN_RESULT="skipped ($why)"
    return
  fi
  ok "podman run: $(tail -1 <<<"$out")"

  # Ports, test certificate, upstream, config.
  read -r P_HTTPS P_HTTP P_ADMIN P_UP < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  local cfg=$WORK/etc
  mkdir -p "$cfg" "$WORK/www"
  if ! timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=app.test -addext subjectAltName=DNS:app.test \
      -keyout "$cfg/app.test.key" -out "$cfg/app.test.crt" >"$WORK/openssl.log" 2>&1; then
    fail "openssl could not make a test certificate: $(tail -2 "$WORK/openssl.log")"; RUN_RESULT=failed; return
  fi
  chmod 0644 "$cfg/app.test.key" # test key, readable by uid 65532 in the container
  local marker="gatehouse-image-check-$$-$RANDOM"
  echo "$marker" >"$WORK/www/marker.txt"
  (cd "$WORK/www" && exec timeout 600 python3 -m http.server --bind 127.0.0.1 "$P_UP") >"$WORK/upstream.log" 2>&1 &
  PIDS+=($!)
  cat >"$cfg/gatehouse.toml" <<EOF
[listen]
https = "127.0.0.1:$P_HTTPS"
http  = "127.0.0.1:$P_HTTP"
admin = "127.0.0.1:$P_ADMIN"

[storage]
dir = "/var/lib/gatehouse"

[[route]]
hosts    = ["app.test"]
upstream = "http://127.0.0.1:$P_UP"
cert     = "/etc/gatehouse/app.test.crt"
key      = "/etc/gatehouse/app.test.key"
EOF
  local up=0
  for _ in $(seq 1 50); do
    curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$P_UP/marker.txt" 2>/dev/null && { up=1; break; }
    sleep 0.2
  done
  [ $up = 1 ] || { fail "test upstream (python3 -m http.server) did not start"; RUN_RESULT=failed; return; }

  local vol=gatehouse-image-check-$$
  timeout 30 podman volume create "$vol" >/dev/null && VOLUMES+=("$vol") || { fail "podman volume create failed"; RUN_RESULT=failed; return; }

  # The hardened way to run it: what compose.yaml and the Kubernetes
  # Deployment do.
  local name=gatehouse-image-check-$$
  local harden=(--read-only --cap-drop ALL --cap-add NET_BIND_SERVICE --security-opt no-new-privileges)
  if ! timeout 60 podman run -d --pull=never --name "$name" --network host "${harden[@]}" \
      -v "$cfg:/etc/gatehouse:ro" -v "$vol:/var/lib/gatehouse" "$TAG" >"$WORK/run.log" 2>&1; then
    fail "podman run -d failed: $(tail -3 "$WORK/run.log")"; RUN_RESULT=failed; return
  fi
  CONTAINERS+=("$name")
  local healthy=0
  for _ in $(seq 1 75); do
    curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$P_ADMIN/healthz" 2>/dev/null && { healthy=1; break; }
    [ "$(timeout 10 podman inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
    sleep 0.2
  done
  if [ $healthy != 1 ]; then
    fail "gatehouse did not answer /healthz within 15s; logs: $(timeout 10 podman logs "$name" 2>&1 | tail -5 | tr '\n' ' ')"
    RUN_RESULT=failed; return
  fi
  ok "container $name up, admin /healthz answers"

  out=$(curl -sS -m 10 --resolve "app.test:$P_HTTPS:127.0.0.1" --cacert "$cfg/app.test.crt" \
    -w '\n%{http_code} HTTP/%{http_version}' "https://app.test:$P_HTTPS/marker.txt" 2>&1)
  if [ "$(head -1 <<<"$out")" = "$marker" ] && grep -q '^200 ' <<<"$(tail -1 <<<"$out")"; then
    ok "HTTPS through the container to the upstream: $(tail -1 <<<"$out")"
  else
    fail "HTTPS request through the container failed: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
  fi
  out=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_ADMIN/readyz" 2>&1)
  [ "$out" = 200 ] && ok "admin /readyz 200" || fail "admin /readyz answered $out"

  if out=$(timeout 30 podman healthcheck run "$name" 2>&1); then
    ok "podman healthcheck run: ${out:-healthy}"
  else
    fail "podman healthcheck run failed: $out"
  fi
  if out=$(timeout 30 podman exec "$name" /gatehouse healthcheck 2>&1); then
    ok "gatehouse healthcheck inside the container exits 0"
  else
    fail "gatehouse healthcheck inside the container failed: $out"
  fi
  out=$(timeout 30 podman exec "$name" /gatehouse healthcheck --url "http://127.0.0.1:$P_HTTPS/" 2>&1) \
    && fail "gatehouse healthcheck against a wrong URL exited 0" \
    || ok "gatehouse healthcheck fails against a wrong URL ($(tr '\n' ' ' <<<"$out" | cut -c1-80))"
  if timeout 40 podman stop -t 20 "$name" >/dev/null 2>&1; then
    out=$(timeout 10 podman inspect -f '{{.State.ExitCode}}' "$name" 2>&1)
    [ "$out" = 0 ] && ok "SIGTERM: clean exit 0" || fail "after SIGTERM the exit code is $out"
  else
    fail "podman stop timed out"
  fi
  timeout 30 podman rm -f "$name" >/dev/null 2>&1

  # Ports 80/443 as uid 65532, in a network namespace of its own (no
  # traffic leaves it): the file capability at work under the hardening flags.
  local name2=${name}-lowports cfg2=$WORK/etc-lowports vol2=${vol}-lowports
  mkdir -p "$cfg2"
  timeout 30 podman volume create "$vol2" >/dev/null && VOLUMES+=("$vol2")
  cp "$cfg/app.test.crt" "$cfg/app.test.key" "$cfg2/"
  sed -e 's/^https = .*/https = ":443"/' -e 's/^http  = .*/http  = ":80"/' -e 's/^admin = .*/admin = "127.0.0.1:2019"/' \
    "$cfg/gatehouse.toml" >"$cfg2/gatehouse.toml"
  if timeout 60 podman run -d --pull=never --name "$name2" --network none "${harden[@]}" \
      -v "$cfg2:/etc/gatehouse:ro" -v "$vol2:/var/lib/gatehouse" "$TAG" >"$WORK/run2.log" 2>&1; then
    CONTAINERS+=("$name2")
    local up2=0
    for _ in $(seq 1 30); do
      timeout 10 podman exec "$name2" /gatehouse healthcheck >/dev/null 2>&1 && { up2=1; break; }
      [ "$(timeout 10 podman inspect -f '{{.State.Running}}' "$name2" 2>/dev/null)" = true ] || break
      sleep 0.5
    done
    if [ $up2 = 1 ]; then
      ok "uid 65532 binds :443 and :80 with --cap-drop ALL --cap-add NET_BIND_SERVICE --security-opt no-new-privileges"
    else
      fail "gatehouse on :443/:80 in its own netns did not come up: $(timeout 10 podman logs "$name2" 2>&1 | tail -3 | tr '\n' ' ')"
    fi
    timeout 30 podman rm -f -t 2 "$name2" >/dev/null 2>&1
  else
    note "could not start a container with --network none ($(tail -1 "$WORK/run2.log")): low-port check skipped"
  fi

  # Documented failure mode: without NET_BIND_SERVICE the kernel refuses to
  # exec a binary with that file capability.
  out=$(timeout 60 podman run --rm --pull=never --no-healthcheck --cap-drop ALL "$TAG" version 2>&1)
  if [ $? -ne 0 ] && grep -qi 'operation not permitted' <<<"$out"; then
    ok "--cap-drop ALL alone: exec refused as documented ($(tr '\n' ' ' <<<"$out" | cut -c1-80))"
  else
    fail "--cap-drop ALL alone did not fail as the Dockerfile documents: $out"
  fi

  runc_checks "$cfg"
  RUN_RESULT=ok
}

# ---- runc without podman: capabilities exactly as Docker and Kubernetes
# (containerd) hand them to a non-root process: bounding/permitted/effective,
# never ambient. (Podman also puts --cap-add'ed capabilities in the ambient
# set, which would hide a missing file capability.) Each case runs the image
# in a network namespace of its own with only loopback; nothing leaves it.
DOCKER_DEFAULT_CAPS=CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FSETID,CAP_FOWNER,CAP_MKNOD,CAP_NET_RAW,CAP_SETGID,CAP_SETUID,CAP_SETFCAP,CAP_SETPCAP,CAP_NET_BIND_SERVICE,CAP_SYS_CHROOT,CAP_KILL,CAP_AUDIT_WRITE
# runc_case LABEL IMAGE NNP(0|1) CAPS SYSCTL(0|1) EXPECT(up|exec-refused|bind-denied)
runc_case() {
  local label=$1 img=$2 nnp=$3 caps=$4 sysctl=$5 expect=$6
  local id=gatehouse-image-check-$$-$RANDOM bundle ctr mnt got log
  bundle=$WORK/runc-$id
  mkdir -p "$bundle"
  ctr=$(timeout 60 buildah from --pull-never "$img" 2>/dev/null) || { fail "runc $label: buildah from failed"; return; }
  BUILDAH_CTRS+=("$ctr")
  mnt=$(timeout 60 buildah mount "$ctr" 2>/dev/null) || { fail "runc $label: buildah mount failed"; return; }
  (cd "$bundle" && timeout 10 runc spec) || { fail "runc $label: runc spec failed"; return; }
  python3 - "$bundle/config.json" "$mnt" "$RUNC_CFG" "$nnp" "$caps" "$sysctl" <<'PYEOF' || { fail "runc $label: cannot write the OCI spec"; return; }
import json, sys
path, rootfs, confdir, nnp, caps, sysctl = sys.argv[1:7]
s = json.load(open(path))
caps = [c for c in caps.split(",") if c]
p = s["process"]
p.update(terminal=False, user={"uid": 65532, "gid": 65532}, cwd="/",
         args=["/gatehouse", "run"], env=["GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml"],
         noNewPrivileges=(nnp == "1"))
p["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []}
p["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
s["root"] = {"path": rootfs, "readonly": True}
s["mounts"] += [
    {"destination": "/etc/gatehouse", "type": "bind", "source": confdir, "options": ["rbind", "ro"]},
    {"destination": "/var/lib/gatehouse", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "mode=0700", "uid=65532", "gid=65532"]},
]
ns = s["linux"]["namespaces"]
if not any(n["type"] == "network" for n in ns):
    ns.append({"type": "network"})
if sysctl == "1":
    s["linux"].setdefault("sysctl", {})["net.ipv4.ip_unprivileged_port_start"] = "0"
json.dump(s, open(path, "w"), indent=1)
PYEOF
  log=$bundle/out.log
  if ! timeout 30 runc run -d --bundle "$bundle" "$id" >"$log" 2>&1 </dev/null; then
    got="runc-run-failed"
  else
    RUNC_IDS+=("$id")
    got=stopped
    for _ in $(seq 1 30); do
      if timeout 10 runc exec "$id" /gatehouse healthcheck >/dev/null 2>&1; then got=up; break; fi
      timeout 10 runc state "$id" 2>/dev/null | grep -q '"status": "running"' || break
      sleep 0.5
    done
  fi
  if [ "$got" != up ]; then
    sleep 0.2
    if grep -q 'operation not permitted' "$log"; then got=exec-refused
    elif grep -q 'permission denied' "$log"; then got=bind-denied
    fi
  fi
  if [ "$got" = "$expect" ]; then
    ok "runc $label: $got"
  else
    fail "runc $label: got $got, want $expect ($(tail -c 300 "$log" | tr '\n' ' '))"
  fi
  timeout 30 runc delete -f "$id" >/dev/null 2>&1
  timeout 30 buildah umount "$ctr" >/dev/null 2>&1
  timeout 30 buildah rm "$ctr" >/dev/null 2>&1
}

# runc_checks CERT_DIR
runc_checks() {
  if ! command -v runc >/dev/null; then note "runc not installed: runc checks skipped"; return; fi
  RUNC_CFG=$WORK/etc-runc
  mkdir -p "$RUNC_CFG"
  cp "$1/app.test.crt" "$1/app.test.key" "$RUNC_CFG/"
  cat >"$RUNC_CFG/gatehouse.toml" <<'EOF'
[listen]
https = ":443"
http  = ":80"
admin = "127.0.0.1:2019"

[storage]
dir = "/var/lib/gatehouse"

[[route]]
hosts    = ["app.test"]
upstream = "http://127.0.0.1:8080"
cert     = "/etc/gatehouse/app.test.crt"
key      = "/etc/gatehouse/app.test.key"
EOF
  runc_case "uid 65532 on :443/:80, caps [NET_BIND_SERVICE] + no_new_privs (Kubernetes restricted)" "$TAG" 1 CAP_NET_BIND_SERVICE 0 up
  runc_case "uid 65532 on :443/:80, Docker's default caps" "$TAG" 0 "$DOCKER_DEFAULT_CAPS" 0 up
  runc_case "no capabilities (--cap-drop ALL alone), as documented" "$TAG" 1 "" 0 exec-refused
  if [ -n "$NOCAP_TAG" ]; then
    runc_case "NET_BIND_FILECAP=0 + caps [NET_BIND_SERVICE]: cap-add alone cannot bind :443" "$NOCAP_TAG" 1 CAP_NET_BIND_SERVICE 0 bind-denied
    runc_case "NET_BIND_FILECAP=0, no caps, sysctl net.ipv4.ip_unprivileged_port_start=0" "$NOCAP_TAG" 1 "" 1 up
  fi
}

step "run"
run_checks

# ---- the real Dockerfile, when its builder base is here (not in offline CI)
step "Dockerfile build"
if timeout 30 podman image exists "$BUILDER_BASE" 2>/dev/null; then
  if timeout 1200 buildah bud --pull=never --network host --format docker --layers=false --force-rm -f "$DOCKERFILE" \
      --build-arg VERSION=image-check -t "$DF_TAG" "$REPO" >"$WORK/df-build.log" 2>&1; then
    IMAGES+=("$DF_TAG")
    DF_RESULT=ok
    ok "built the Dockerfile as $DF_TAG"
    inspect_image "$DF_TAG" Dockerfile-image
    out=$(timeout 60 podman run --rm --pull=never --no-healthcheck "$DF_TAG" version 2>&1) \
      && ok "Dockerfile image runs: $(tail -1 <<<"$out")" || note "Dockerfile image did not run: $out"
  else
    tail -30 "$WORK/df-build.log"
    DF_RESULT=failed
    fail "building the Dockerfile failed"
  fi
else
  DF_RESULT="skipped ($BUILDER_BASE not available locally)"
  note "Dockerfile build skipped: $BUILDER_BASE is not in local storage and registries are unreachable"
fi

finish
