#!/usr/bin/env bash
# deploy-check.sh: parse and cross-check every deployment file in deploy/.
#
# Usage: .ci/deploy-check.sh        (from anywhere; works on the repo it is in)
#
#   YAML     every *.yaml under deploy/ with PyYAML (duplicate keys are errors);
#            Kubernetes documents need apiVersion, kind, metadata.name;
#            compose.yaml needs services. Kustomizations: their files exist,
#            and `kustomize build` renders each variant (kustomize is built
#            from the Go module proxy when missing; skipped if that fails).
#            docker-compose config, where available, checks compose.yaml
#            against the Compose schema.
#   cross    the rendered Deployment/Service/ConfigMap and compose.yaml agree
#            with each other and with the image: uid 65532, read-only root,
#            no privilege escalation, drop ALL + NET_BIND_SERVICE, probes on
#            the admin port that the config binds on a pod-reachable address,
#            ports, storage (PVC vs etcd, replicas), healthchecks.
#   TOML     deploy/*.toml and the gatehouse.toml of every ConfigMap (rendered
#            by the init container's own script with dummy EAB values) pass
#            `gatehouse validate`.
#   systemd  `systemd-analyze verify` on a temp copy of the unit whose
#            /usr/local/bin/gatehouse points at a freshly built binary (verify
#            rejects a missing ExecStart binary); any warning fails. Then
#            `systemd-analyze security --offline=true` must stay at or below
#            exposure 2.5. Skipped (said so) where systemd-analyze cannot be
#            had. No systemd needs to run.
#
# Ends with "deploy-check: PASS" (exit 0) or "deploy-check: FAIL ..." (exit 1).

set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEPLOY=$REPO/deploy
KUSTOMIZE_VERSION=v5.8.1
SECURITY_THRESHOLD=25 # systemd-analyze's 0-100 scale: exposure 2.5
START=$(date +%s)
FAILURES=()
fail() { echo "  FAIL: $*"; FAILURES+=("$*"); }
ok() { echo "  ok:   $*"; }
note() { echo "  note: $*"; }
step() { echo "== $* ($(( $(date +%s) - START ))s)"; }

WORK=$(mktemp -d /tmp/gatehouse-deploy-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
trap 'echo "deploy-check: FAIL (interrupted)"; exit 1' INT TERM

finish() {
  local took=$(( $(date +%s) - START ))
  if [ ${#FAILURES[@]} -eq 0 ]; then
    echo "deploy-check: PASS (${took}s)"
    exit 0
  fi
  echo "deploy-check: FAIL (${#FAILURES[@]} problem(s), ${took}s):"
  printf '  - %s\n' "${FAILURES[@]}"
  exit 1
}

apt_install() { # apt_install TIMEOUT PKG...: quiet, bounded, one update retry
  local t=$1; shift
  export DEBIAN_FRONTEND=noninteractive
  timeout "$t" apt-get install -y --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 && return 0
  timeout 300 apt-get update >>"$WORK/apt.log" 2>&1
  timeout "$t" apt-get install -y --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1
}

# ---- tools
step "tools"
[ -d "$DEPLOY" ] || { echo "deploy-check: FAIL (no $DEPLOY)"; exit 1; }
command -v go >/dev/null || { echo "deploy-check: FAIL (go not found)"; exit 1; }
# python3 >= 3.11 (tomllib) with PyYAML; Debian's python3-yaml installs into
# /usr/bin/python3, which may not be the python3 first on PATH.
PY=
for p in python3 /usr/bin/python3; do
  "$p" -c 'import sys, tomllib, yaml' 2>/dev/null && { PY=$p; break; }
done
if [ -z "$PY" ]; then
  echo "  installing python3-yaml"
  apt_install 300 python3 python3-yaml || true
  for p in python3 /usr/bin/python3; do
    "$p" -c 'import sys, tomllib, yaml' 2>/dev/null && { PY=$p; break; }
  done
  [ -n "$PY" ] || { echo "deploy-check: FAIL (python3 >= 3.11 with PyYAML not available)"; exit 1; }
fi
ok "$PY $("$PY" -c 'import sys, yaml; print(sys.version.split()[0], "PyYAML", yaml.__version__)')"

if ! command -v systemd-analyze >/dev/null; then
  echo "  installing systemd (for systemd-analyze; nothing is started)"
  apt_install 300 systemd || true
fi

KUSTOMIZE=$(command -v kustomize || true)
if [ -z "$KUSTOMIZE" ]; then
  kdir=${XDG_CACHE_HOME:-$HOME/.cache}/gatehouse-ci/kustomize-$KUSTOMIZE_VERSION
  if [ -x "$kdir/kustomize" ]; then
    KUSTOMIZE=$kdir/kustomize
  else
    echo "  building kustomize $KUSTOMIZE_VERSION from the Go module proxy"
    mkdir -p "$kdir"
    if (cd "$WORK" && GOBIN=$kdir GOFLAGS= timeout 300 go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION") >"$WORK/kustomize-install.log" 2>&1; then
      KUSTOMIZE=$kdir/kustomize
    else
      note "kustomize could not be built ($(tail -1 "$WORK/kustomize-install.log")): rendered checks use the raw files"
    fi
  fi
fi
[ -n "$KUSTOMIZE" ] && ok "kustomize $("$KUSTOMIZE" version 2>/dev/null | head -1)"

COMPOSE=$(command -v docker-compose || true)
[ -n "$COMPOSE" ] && ok "docker-compose $("$COMPOSE" version --short 2>/dev/null)" \
  || note "docker-compose not installed: compose.yaml is checked by PyYAML and the cross checks only"

# ---- the gatehouse binary, for `validate` (and as the systemd ExecStart)
step "build gatehouse"
if ! (cd "$REPO" && CGO_ENABLED=0 timeout 600 go build -o "$WORK/gatehouse" ./cmd/gatehouse) >"$WORK/build.log" 2>&1; then
  tail -20 "$WORK/build.log"
  echo "deploy-check: FAIL (go build ./cmd/gatehouse failed)"
  exit 1
fi
ok "built $("$WORK/gatehouse" version)"

# ---- kustomize build of each variant
step "kustomize"
VARIANTS=()
while IFS= read -r k; do
  d=$(dirname "$k")
  rel=${d#"$REPO"/}
  # base/ is a component, not meant to be applied alone: rendered, not cross-checked.
  if [ -n "$KUSTOMIZE" ]; then
    out=$WORK/render-$(echo "$rel" | tr '/' '_').yaml
    if timeout 120 "$KUSTOMIZE" build "$d" >"$out" 2>"$out.err"; then
      ok "kustomize build $rel: $(grep -c '^kind:' "$out") objects"
      [ "$(basename "$d")" = base ] || VARIANTS+=("$rel=$out")
    else
      fail "kustomize build $rel: $(head -3 "$out.err" | tr '\n' ' ')"
    fi
  fi
done < <(find "$DEPLOY" -name kustomization.yaml | sort)

# ---- YAML, cross checks and TOML (python)
step "YAML, TOML and cross checks"
RENDER_SH=sh
command -v busybox >/dev/null && RENDER_SH="busybox sh"
"$PY" - "$REPO" "$WORK" "$WORK/gatehouse" "$RENDER_SH" "${VARIANTS[@]}" >"$WORK/py.out" 2>&1 <<'PYEOF'
import os, re, shlex, subprocess, sys, tempfile
import yaml

repo, work, gatehouse, render_sh = sys.argv[1:5]
variants = [v.split("=", 1) for v in sys.argv[5:]]
deploy = os.path.join(repo, "deploy")
rel = lambda p: os.path.relpath(p, repo)

def ok(msg): print("ok " + msg)
def fail(msg): print("FAIL " + msg)

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last)."""
    def construct_mapping(self, node, deep=False):
        seen = set()
        for k, _ in node.value:
            key = self.construct_object(k, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", k.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

def load_all(path):
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]

# ---- every YAML file parses
docs_by_file = {}
for root, _, files in os.walk(deploy):
    for name in sorted(files):
        if not name.endswith((".yaml", ".yml")):
            continue
        p = os.path.join(root, name)
        try:
            docs_by_file[p] = load_all(p)
            ok(f"{rel(p)}: {len(docs_by_file[p])} YAML document(s) parse")
        except yaml.YAMLError as e:
            fail(f"{rel(p)}: {e}".replace("\n", " "))
if not docs_by_file:
    fail("no YAML files under deploy/")

# ---- compose
compose_path = os.path.join(deploy, "compose.yaml")
compose = (docs_by_file.get(compose_path) or [None])[0]
if compose is None:
    fail("deploy/compose.yaml missing or empty")

# ---- Kubernetes documents: apiVersion, kind, metadata.name; kustomization paths
kdir = os.path.join(deploy, "kubernetes")
for p, docs in sorted(docs_by_file.items()):
    if not p.startswith(kdir + os.sep):
        continue
    for i, d in enumerate(docs):
        where = f"{rel(p)} doc {i + 1}"
        if not isinstance(d, dict):
            fail(f"{where}: not a mapping"); continue
        missing = [k for k in ("apiVersion", "kind") if not d.get(k)]
        if d.get("kind") != "Kustomization" and not (d.get("metadata") or {}).get("name"):
            missing.append("metadata.name")
        if missing:
            fail(f"{where}: missing {', '.join(missing)}")
        else:
            ok(f"{where}: {d['apiVersion']} {d['kind']} {(d.get('metadata') or {}).get('name', '')}".rstrip())
        if d.get("kind") == "Kustomization":
            base = os.path.dirname(p)
            refs = list(d.get("resources") or []) + [x["path"] for x in d.get("patches") or [] if "path" in x]
            for r in refs:
                if not os.path.exists(os.path.normpath(os.path.join(base, r))):
                    fail(f"{rel(p)}: {r} does not exist")

# ---- helpers for the rendered objects
def render_config(toml_template, label):
    """Run the init container's own script on a ConfigMap's gatehouse.toml,
    with dummy EAB values, and return the path of the rendered file."""
    tdir = tempfile.mkdtemp(dir=work)
    os.makedirs(os.path.join(tdir, "tmpl")); os.makedirs(os.path.join(tdir, "out"))
    with open(os.path.join(tdir, "tmpl", "gatehouse.toml"), "w") as f:
        f.write(toml_template)
    script = RENDER_SCRIPT.replace("/config-template/", tdir + "/tmpl/").replace("/etc/gatehouse/", tdir + "/out/")
    env = dict(os.environ, EAB_KID="kid-deploy-check", EAB_HMAC="aG1hYy1kZXBsb3ktY2hlY2s")
    r = subprocess.run(shlex.split(render_sh) + ["-c", script], env=env, capture_output=True, text=True, timeout=30)
    out = os.path.join(tdir, "out", "gatehouse.toml")
    if r.returncode != 0 or not os.path.exists(out):
        fail(f"{label}: the render-config script failed: {r.stderr.strip()}")
        return None
    if "@EAB_" in open(out).read():
        fail(f"{label}: placeholders left after rendering")
    return out

def validate(path, label):
    r = subprocess.run([gatehouse, "validate", "--config", path], capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        ok(f"{label}: gatehouse validate: {r.stdout.strip().split(': ', 1)[-1]}")
        return True
    fail(f"{label}: gatehouse validate: {(r.stdout + r.stderr).strip()}".replace("\n", " | "))
    return False

def parse_toml(path):
    import tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)

def port_of(addr):
    return int(addr.rsplit(":", 1)[1])

def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")

# The init container's script, from the base Deployment.
RENDER_SCRIPT = None
base_dep = os.path.join(kdir, "base", "deployment.yaml")
for d in docs_by_file.get(base_dep, []):
    for ic in (d.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers") or []):
        if ic.get("name") == "render-config":
            RENDER_SCRIPT = ic["command"][-1]
if RENDER_SCRIPT is None:
    fail("base/deployment.yaml: no render-config init container")
    RENDER_SCRIPT = "cp /config-template/gatehouse.toml /etc/gatehouse/gatehouse.toml"

# ---- each rendered Kubernetes variant
def check_variant(name, objs):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        fail(f"{name}: {len(deps)} Deployments, want 1"); return
    dep = deps[0]
    spec = dep["spec"]; pod = spec["template"]["spec"]
    c = next((c for c in pod["containers"] if c["name"] == "gatehouse"), None)
    if c is None:
        fail(f"{name}: no container named gatehouse"); return
    psc, sc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    eff = lambda k: sc.get(k, psc.get(k))
    want = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for k, v in want.items():
        (ok if eff(k) == v else fail)(f"{name}: gatehouse {k} = {eff(k)!r}" + ("" if eff(k) == v else f", want {v!r}"))
    caps = sc.get("capabilities") or {}
    good = caps.get("drop") == ["ALL"] and caps.get("add") == ["NET_BIND_SERVICE"]
    (ok if good else fail)(f"{name}: capabilities {caps}")
    for ic in pod.get("initContainers") or []:
        isc = ic.get("securityContext") or {}
        if eff("runAsNonRoot") is not True or isc.get("allowPrivilegeEscalation") is not False or isc.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: init container {ic['name']} is less locked down than gatehouse")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}

    # The config this variant runs, rendered and validated.
    cms = [o for o in by_kind.get("ConfigMap", []) if "gatehouse.toml" in (o.get("data") or {})]
    if len(cms) != 1:
        fail(f"{name}: {len(cms)} ConfigMaps with gatehouse.toml, want 1"); return
    cfg_path = render_config(cms[0]["data"]["gatehouse.toml"], f"{name} ConfigMap {cms[0]['metadata']['name']}")
    if not cfg_path or not validate(cfg_path, f"{name} ConfigMap {cms[0]['metadata']['name']}"):
        return
    cfg = parse_toml(cfg_path)
    listen = cfg.get("listen", {})
    admin = listen.get("admin", "127.0.0.1:2019")
    if ports.get("https") == port_of(listen.get("https", ":443")) and ports.get("http") == port_of(listen.get("http", ":80")):
        ok(f"{name}: container ports http/https match [listen] ({ports.get('http')}, {ports.get('https')})")
    else:
        fail(f"{name}: container ports {ports} do not match [listen] {listen}")
    # Probes: httpGet needs admin on a pod-reachable address; exec needs none.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        pr = c.get(probe)
        if not pr:
            fail(f"{name}: no {probe}"); continue
        if "httpGet" in pr:
            hg = pr["httpGet"]
            port = ports.get(hg["port"], hg["port"])
            good = hg.get("path") == path and port == port_of(admin) and not is_loopback(admin)
            (ok if good else fail)(f"{name}: {probe} httpGet {hg.get('path')} port {hg['port']} ({port}); [listen] admin = {admin!r}")
        elif "exec" in pr:
            cmd = pr["exec"]["command"]
            good = cmd[:2] == ["/gatehouse", "healthcheck"] and (path == "/healthz" or any(path in x for x in cmd))
            (ok if good else fail)(f"{name}: {probe} exec {cmd}")
        else:
            fail(f"{name}: {probe} is neither httpGet nor exec")
    # Service
    svcs = by_kind.get("Service", [])
    if len(svcs) != 1:
        fail(f"{name}: {len(svcs)} Services, want 1")
    else:
        s = svcs[0]["spec"]
        sp = sorted((p["port"], p.get("targetPort"), p.get("protocol", "TCP")) for p in s.get("ports", []))
        good = s.get("type") == "LoadBalancer" and sp == [(80, "http", "TCP"), (443, "h3", "UDP"), (443, "https", "TCP")]
        (ok if good else fail)(f"{name}: Service {s.get('type')} ports {sp}")
        sel = s.get("selector") or {}
        labels = dep["spec"]["template"]["metadata"].get("labels") or {}
        (ok if sel and all(labels.get(k) == v for k, v in sel.items()) else fail)(f"{name}: Service selector {sel} matches the pod labels")
    # Storage
    storage = cfg.get("storage", {})
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    pvcs = by_kind.get("PersistentVolumeClaim", [])
    replicas = spec.get("replicas", 1)
    if storage.get("backend", "file") == "file":
        d = storage.get("dir", "/var/lib/gatehouse")
        v = vols.get(mounts.get(d, ""), {})
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        good = claim and any(p["metadata"]["name"] == claim for p in pvcs) and replicas == 1 \
            and (spec.get("strategy") or {}).get("type") == "Recreate"
        (ok if good else fail)(f"{name}: file storage {d} on PVC {claim!r}, replicas {replicas}, strategy {(spec.get('strategy') or {}).get('type')}")
    else:
        good = storage.get("backend") == "etcd" and storage.get("endpoints") and not pvcs and replicas >= 2 \
            and not any("persistentVolumeClaim" in v for v in vols.values())
        (ok if good else fail)(f"{name}: {storage.get('backend')} storage {storage.get('endpoints')}, replicas {replicas}, PVCs {len(pvcs)}")
    # EAB credentials come from the Secret, not the ConfigMap.
    if "@EAB_" in cms[0]["data"]["gatehouse.toml"]:
        secrets = {o["metadata"]["name"]: o for o in by_kind.get("Secret", [])}
        refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for ic in pod.get("initContainers") or [] for e in ic.get("env") or []
                if "secretKeyRef" in (e.get("valueFrom") or {})}
        good = refs == {("gatehouse-eab", "eab_kid"), ("gatehouse-eab", "eab_hmac")}
        (ok if good else fail)(f"{name}: EAB from Secret keys {sorted(refs)}")
        if "gatehouse-eab" in secrets:
            keys = set((secrets["gatehouse-eab"].get("stringData") or {}) | (secrets["gatehouse-eab"].get("data") or {}))
            (ok if {"eab_kid", "eab_hmac"} <= keys else fail)(f"{name}: Secret gatehouse-eab has {sorted(keys)}")

for name, out in variants:
    try:
        objs = load_all(out)
    except yaml.YAMLError as e:
        fail(f"{name}: rendered output does not parse: {e}"); continue
    check_variant(name, objs)
if not variants:
    print("note kustomize unavailable: checking the ConfigMaps' TOML only")
    for p, docs in sorted(docs_by_file.items()):
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == "ConfigMap" and "gatehouse.toml" in (d.get("data") or {}):
                out = render_config(d["data"]["gatehouse.toml"], rel(p))
                if out:
                    validate(out, rel(p))

# ---- compose.yaml
def check_compose(cp):
    base = os.path.dirname(compose_path)
    svcs = cp.get("services")
    if not isinstance(svcs, dict) or not svcs:
        fail("compose.yaml: no services"); return
    ok(f"compose.yaml: services {sorted(svcs)}")
    for n, s in svcs.items():
        if not (s.get("image") or s.get("build")):
            fail(f"compose.yaml: service {n} has neither image nor build")
    g = svcs.get("gatehouse")
    if not g:
        fail("compose.yaml: no gatehouse service"); return
    (ok if g.get("image") == "gatehouse:latest" and g.get("build") else fail)(f"compose.yaml: gatehouse image {g.get('image')!r}, build {g.get('build')!r}")
    b = g.get("build") or {}
    ctx = b if isinstance(b, str) else b.get("context", ".")
    dockerfile = os.path.join(base, ctx, "Dockerfile" if isinstance(b, str) else b.get("dockerfile", "Dockerfile"))
    (ok if os.path.exists(dockerfile) else fail)(f"compose.yaml: build Dockerfile {os.path.relpath(dockerfile, repo)} exists")
    hc = (g.get("healthcheck") or {}).get("test")
    (ok if hc and "/gatehouse" in hc and "healthcheck" in hc else fail)(f"compose.yaml: gatehouse healthcheck {hc}")
    nets = set(cp.get("networks") or {})
    named = set(cp.get("volumes") or {})
    for n, s in svcs.items():
        sn = s.get("networks") or []
        for net in (sn if isinstance(sn, list) else sn.keys()):
            if net not in nets:
                fail(f"compose.yaml: service {n} uses undeclared network {net}")
    apps_internal = all((cp["networks"].get(net) or {}).get("internal") for n, s in svcs.items() if n != "gatehouse"
                        for net in (s.get("networks") or []))
    (ok if apps_internal else fail)("compose.yaml: the sample apps are on internal networks only")
    mounts = {}
    cfg_file = None
    for v in g.get("volumes") or []:
        src, dst = v.split(":")[:2]
        mounts[dst] = src
        if src.startswith((".", "/")):
            p = os.path.normpath(os.path.join(base, src))
            if not os.path.exists(p):
                fail(f"compose.yaml: bind source {src} does not exist")
            if dst == "/etc/gatehouse/gatehouse.toml":
                cfg_file = p
        elif src not in named:
            fail(f"compose.yaml: named volume {src} is not declared")
    if not cfg_file:
        fail("compose.yaml: no config mounted at /etc/gatehouse/gatehouse.toml"); return
    if not validate(cfg_file, rel(cfg_file)):
        return
    cfg = parse_toml(cfg_file)
    listen, storage = cfg.get("listen", {}), cfg.get("storage", {})
    def target(p):
        port, _, proto = str(p).split(":")[-1].partition("/")
        return (int(port), proto or "tcp")
    targets = sorted(target(p) for p in g.get("ports") or [])
    https = port_of(listen.get("https", ":443"))
    want = sorted([(port_of(listen.get("http", ":80")), "tcp"), (https, "tcp")] +
                  ([] if listen.get("http3", True) is False else [(https, "udp")]))  # HTTP/3
    (ok if targets == want else fail)(f"compose.yaml: published container ports {targets} match [listen] {want}")
    d = storage.get("dir", "/var/lib/gatehouse")
    (ok if mounts.get(d) in named else fail)(f"compose.yaml: [storage] dir {d} is on named volume {mounts.get(d)!r}")
    up_hosts = {re.sub(r"^\w+://", "", r.get("upstream", "")).split(":")[0] for r in cfg.get("route", [])}
    missing = up_hosts - set(svcs)
    (ok if not missing else fail)(f"compose.yaml: upstream hosts {sorted(up_hosts)} are compose services" + (f" (missing {sorted(missing)})" if missing else ""))

if compose is not None:
    check_compose(compose)

# ---- other TOML files under deploy/ (compose's is done above)
for root, _, files in os.walk(deploy):
    for name in sorted(files):
        p = os.path.join(root, name)
        if name.endswith(".toml") and not p.endswith("gatehouse.compose.toml"):
            validate(p, rel(p))
PYEOF
pyrc=$?
while IFS= read -r l; do
  case $l in
    ok\ *) ok "${l#ok }" ;;
    FAIL\ *) fail "${l#FAIL }" ;;
    note\ *) note "${l#note }" ;;
    *) echo "  $l" ;;
  esac
done <"$WORK/py.out"
[ $pyrc -eq 0 ] || fail "the YAML/TOML checker crashed (exit $pyrc)"

if [ -n "$COMPOSE" ]; then
  if out=$(cd "$DEPLOY" && timeout 60 "$COMPOSE" -f compose.yaml config -q 2>&1); then
    ok "docker-compose config -q: compose.yaml is valid"
  else
    fail "docker-compose config: $(tr '\n' ' ' <<<"$out")"
  fi
fi

# ---- systemd
step "systemd"
UNIT=$DEPLOY/systemd/gatehouse.service
if [ ! -f "$UNIT" ]; then
  fail "no $UNIT"
elif ! command -v systemd-analyze >/dev/null; then
  note "skipped: systemd-analyze not available"
else
  # The directives the unit promises; a removed one fails here.
  for d in DynamicUser=yes StateDirectory=gatehouse ConfigurationDirectory=gatehouse \
      AmbientCapabilities=CAP_NET_BIND_SERVICE CapabilityBoundingSet=CAP_NET_BIND_SERVICE \
      ProtectSystem=strict ProtectHome=yes NoNewPrivileges=yes PrivateTmp=yes \
      'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' LimitNOFILE=1048576 \
      'Environment=GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml GATEHOUSE_STORAGE_DIR=/var/lib/gatehouse' \
      'ExecStart=/usr/local/bin/gatehouse run' 'ExecReload=/bin/kill -HUP $MAINPID' \
      KillSignal=SIGTERM TimeoutStopSec=30 Restart=on-failure; do
    grep -Fxq -- "$d" "$UNIT" || fail "gatehouse.service lacks the line: $d"
  done
  # verify needs ExecStart's binary to exist: a temp copy points at the one built above.
  mkdir -p "$WORK/systemd"
  sed "s|/usr/local/bin/gatehouse|$WORK/gatehouse|g" "$UNIT" >"$WORK/systemd/gatehouse.service"
  out=$(cd "$WORK/systemd" && timeout 60 systemd-analyze verify gatehouse.service 2>&1)
  rc=$?
  if [ $rc -eq 0 ] && [ -z "$out" ]; then
    ok "systemd-analyze verify: no warnings ($(systemd-analyze --version | head -1))"
  else
    fail "systemd-analyze verify (exit $rc): $(tr '\n' ' ' <<<"$out")"
  fi
  out=$(cd "$WORK/systemd" && timeout 60 systemd-analyze security --offline=true --threshold=$SECURITY_THRESHOLD gatehouse.service 2>&1)
  rc=$?
  score=$(grep -o 'Overall exposure level for gatehouse.service: .*' <<<"$out" | sed 's/.*: //')
  if [ $rc -eq 0 ]; then
    ok "systemd-analyze security --offline: exposure ${score:-?} (threshold $(awk -v t=$SECURITY_THRESHOLD 'BEGIN{print t/10}'))"
  elif grep -qi 'unrecognized option\|unknown option' <<<"$out"; then
    note "systemd-analyze security --offline not supported by this systemd: skipped"
  else
    fail "systemd-analyze security: exposure ${score:-?} above $(awk -v t=$SECURITY_THRESHOLD 'BEGIN{print t/10}') (exit $rc)"
  fi
fi

finish
