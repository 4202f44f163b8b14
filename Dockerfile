# gatehouse container image.
#
#   docker build -t gatehouse:latest --build-arg VERSION=$(git describe --tags --always) .
#   docker run -d --name gatehouse -p 80:80 -p 443:443 -p 443:443/udp \
#     -v "$PWD/gatehouse.toml:/etc/gatehouse/gatehouse.toml:ro" \
#     -v gatehouse-data:/var/lib/gatehouse \
#     --read-only --cap-drop ALL --cap-add NET_BIND_SERVICE \
#     --security-opt no-new-privileges gatehouse:latest
#
# Needs BuildKit (the default builder since Docker 23) or buildah/podman, for
# the RUN --mount cache mounts and for keeping the file capability (below).
#
# The runtime stage is mirrored by .ci/image-check.sh, which builds the same
# image offline from a prebuilt binary and fails when the USER, ENV, VOLUME,
# EXPOSE, HEALTHCHECK, ENTRYPOINT or CMD lines below drift from its copy.
# Change both together.

# ---------------------------------------------------------------- build stage
FROM golang:1.26-bookworm AS build

# ca-certificates and tzdata are copied into the scratch image; libcap2-bin
# provides setcap (see "Ports" below).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .

ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/gatehouse ./cmd/gatehouse \
 && /out/gatehouse version

# Ports: the image listens on 80/443 (the config defaults) as uid 65532. A
# non-root process may bind ports below 1024 only with CAP_NET_BIND_SERVICE
# in its effective set, and Docker and Kubernetes never give a non-root
# process capabilities across exec (no ambient capabilities: `--cap-add` or
# `capabilities.add` alone do not let uid 65532 bind :443). So the binary
# carries the capability as a file capability (NET_BIND_FILECAP=1, default):
#   - Docker/Podman defaults include NET_BIND_SERVICE: works as is.
#   - Hardened: --cap-drop ALL --cap-add NET_BIND_SERVICE (Kubernetes:
#     capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}): works, also with
#     --security-opt no-new-privileges / allowPrivilegeEscalation: false,
#     because the runtime puts the added capability in the permitted set and
#     no_new_privs only caps the file's grant at that set.
#   - --cap-drop ALL *without* --cap-add NET_BIND_SERVICE fails before
#     gatehouse starts: "exec /gatehouse: operation not permitted" (the kernel
#     refuses to exec a file whose effective file capability lies outside the
#     bounding set), even if gatehouse would listen on high ports. Add
#     NET_BIND_SERVICE back, or build with --build-arg NET_BIND_FILECAP=0 and
#     either listen on 8443/8080 (map them: -p 443:8443 -p 80:8080) or set
#     the sysctl net.ipv4.ip_unprivileged_port_start=0 (Docker sets it in
#     container network namespaces by default; Kubernetes allows it as a safe
#     sysctl).
# .ci/image-check.sh runs all of these cases under runc.
# The capability is an xattr (security.capability). buildah keeps it across
# COPY --from (image-check.sh checks), and so does BuildKit; some builders
# have dropped it (the legacy Docker builder: moby#38132; kaniko#2866). With
# another builder, check with `getcap` on the exported image. Without it,
# gatehouse exits with "cannot listen on :443 (https): permission denied".
ARG NET_BIND_FILECAP=1
RUN if [ "$NET_BIND_FILECAP" = 1 ]; then \
      setcap cap_net_bind_service=+ep /out/gatehouse && getcap /out/gatehouse | grep -q cap_net_bind_service; \
    fi

# The non-root user, and its state directory (the VOLUME below) owned by it:
# a fresh named volume copies the directory's owner and mode.
RUN mkdir -p /out/etc /out/state/var/lib/gatehouse \
 && echo 'gatehouse:x:65532:65532:gatehouse:/var/lib/gatehouse:/sbin/nologin' > /out/etc/passwd \
 && echo 'gatehouse:x:65532:' > /out/etc/group

# -------------------------------------------------------------- runtime stage
FROM scratch

COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/share/zoneinfo /usr/share/zoneinfo
COPY --from=build /out/etc/passwd /out/etc/group /etc/
COPY --from=build --chown=65532:65532 /out/state/var/lib/gatehouse /var/lib/gatehouse
COPY --from=build /out/gatehouse /gatehouse

USER 65532:65532
ENV GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml GATEHOUSE_STORAGE_DIR=/var/lib/gatehouse
VOLUME /var/lib/gatehouse
EXPOSE 80 443 443/udp
# Asks http://<[listen] admin>/healthz, found from $GATEHOUSE_CONFIG (default
# 127.0.0.1:2019). It fails when the config sets admin = "".
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/gatehouse","healthcheck"]
ENTRYPOINT ["/gatehouse"]
CMD ["run"]
