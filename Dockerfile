# Container image of the tunnel sidecar: a static binary on an empty root,
# run as an unprivileged user (65532).
#
# The base images are build arguments. The defaults are public images, so
# that `docker build .` works on a fresh machine with a registry: the Go
# image of the version go.mod names to build, and the empty scratch image
# (built in, no registry needed) to run. Without a registry, pass images
# you have; integration/container builds its own build base from the host
# (/usr/local/go, busybox and CA certificates, `docker import`ed as
# tunnel-build-base:local) and passes it:
#
#   docker build -t tunnel:latest --build-arg BUILD_IMAGE=tunnel-build-base:local .
#
# Any image with a Go toolchain of go.mod's version and a shell will do;
# RUNTIME_IMAGE may be any image too (e.g.
# gcr.io/distroless/static-debian12:nonroot), since the binary is static.
#
# The build context has no .git, so the Go toolchain cannot stamp a version;
# pass one in (`tunnel version` and the first log line show it), e.g.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" .
#
# Go modules are fetched in the build stage from GOPROXY (a build argument,
# default the Go toolchain's own). Without network access, vendor them first
# (`go mod vendor`, do not commit vendor/) and pass --build-arg GOFLAGS=-mod=vendor.
ARG BUILD_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=scratch

FROM ${BUILD_IMAGE} AS build
ARG GOPROXY
ARG GOFLAGS
ARG VERSION
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
WORKDIR /src
COPY go.mod go.sum ./
RUN case " ${GOFLAGS:-} " in *-mod=vendor*) ;; *) go mod download ;; esac
COPY . .
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/usr/local/bin/tunnel ./cmd/tunnel \
 && /out/usr/local/bin/tunnel version \
 && mkdir -p /out/etc /out/keys \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/out/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' >/out/etc/group

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/etc/passwd /out/etc/group /etc/
# /keys is owned by the runtime user so that a fresh named volume mounted
# there is writable by `tunnel keygen` (Docker copies ownership into it).
COPY --from=build --chown=65532:65532 /out/keys /keys
COPY --from=build /out/usr/local/bin/tunnel /usr/local/bin/tunnel
# An agent in this image serves its status endpoint on loopback, where the
# health check asks /readyz: healthy once the entry has a session with the
# exit, and while the exit's backend accepts connections. `tunnel
# healthcheck` reads the same TUNNEL_STATUS_ADDR as the agent, so change the
# address through that variable (not --status-addr); set it empty to turn
# the endpoint off, and the health check with it (--no-healthcheck). With host
# networking, give each agent its own port.
ENV PATH=/usr/local/bin:/usr/bin:/bin TUNNEL_STATUS_ADDR=127.0.0.1:9070
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
  CMD ["tunnel", "healthcheck"]
USER 65532:65532
EXPOSE 5000 7000
ENTRYPOINT ["tunnel"]
CMD ["--help"]
