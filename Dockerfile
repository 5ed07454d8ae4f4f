# syntax=docker/dockerfile:1
#
# Images of scaivault-agent, one compiled binary in three final stages:
#   --target init          scailabs/scaivault-init
#   --target sidecar       scailabs/scaivault-sidecar
#   --target csi-provider  scailabs/secrets-store-csi-driver-scaivault
# deploy/build-images.sh builds and tags all three, for one or several platforms.
#
# The final stages are distroless: no shell and no package manager, so they hold no RUN step.
# The binary is Bun's runtime with the bundled program appended, linked against glibc: it needs a
# glibc base (distroless cc or base) and cannot start on distroless static, which has no libc.
#
# NOTE: the base images are pinned by tag only. Pin them by digest (image:tag@sha256:...) in the
# registry you build from, because a tag can be moved.
ARG BUN_IMAGE=oven/bun:1.4.5
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# The build stage runs on the builder's own platform and cross-compiles for the target platform,
# so a multi-platform build needs no emulation.
FROM --platform=$BUILDPLATFORM ${BUN_IMAGE} AS build
WORKDIR /src

COPY package.json bun.lock ./
RUN bun install --frozen-lockfile --production

COPY mod.ts tsconfig.json ./
COPY src ./src

# Bun's compile target for linux/amd64. The default x64 runtime needs AVX2 (Haswell, 2013 and
# later) and stops with "Illegal instruction" on CPUs without it, such as older nodes and VMs
# whose CPU model hides AVX2. The baseline runtime needs only SSE4.2 (Nehalem, 2008). The agent
# spends its time waiting on the network, so baseline costs nothing that matters here; set
# bun-linux-x64 or bun-linux-x64-modern to require AVX2.
ARG BUN_X64_TARGET=bun-linux-x64-baseline
ARG TARGETARCH
ARG BUILDARCH
# The flags are those of package.json's "build" script, plus --target. `bun build --target`
# fetches the runtime of the target platform from the npm registry, like `bun install` above.
# The binary must not be stripped: the program is appended to the runtime executable, and strip
# removes it. It runs here only when the target is the builder's own architecture.
# NOTE: an arm64 binary compiled this way on amd64, --bytecode included, was built but never run
# in this project's checks, which have no arm64 machine; run `--version` on arm64 before release.
RUN case "$TARGETARCH" in \
      amd64) target="$BUN_X64_TARGET" ;; \
      arm64) target=bun-linux-arm64 ;; \
      *) echo "Unsupported TARGETARCH \"$TARGETARCH\": Bun compiles for amd64 and arm64" >&2; exit 1 ;; \
    esac && \
    bun build mod.ts --compile --target="$target" --bytecode --splitting --format=esm \
      --no-compile-autoload-dotenv --no-compile-autoload-bunfig --outfile dist/scaivault-agent && \
    if [ "$TARGETARCH" = "$BUILDARCH" ]; then ./dist/scaivault-agent --version; fi

FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
# org.opencontainers.image.source comes from deploy/build-images.sh (--label) when the source
# URL is known; a Dockerfile cannot leave a label out, and an empty one says nothing.
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.vendor="ScaiLabs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build --chown=0:0 --chmod=0555 /src/dist/scaivault-agent /usr/local/bin/scaivault-agent
# 65532 is the distroless "nonroot" user; numeric, so that runAsNonRoot can check it.
USER 65532:65532

FROM runtime AS init
LABEL org.opencontainers.image.title="scaivault-init" \
      org.opencontainers.image.description="Init container that writes ScaiVault secrets to files before the application starts"
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/scaivault-agent", "init"]

FROM runtime AS sidecar
LABEL org.opencontainers.image.title="scaivault-sidecar" \
      org.opencontainers.image.description="Sidecar that keeps ScaiVault secret files current, reloads the application and manages dynamic leases"
USER 65532:65532
EXPOSE 8099
ENTRYPOINT ["/usr/local/bin/scaivault-agent", "sidecar"]

FROM runtime AS csi-provider
LABEL org.opencontainers.image.title="secrets-store-csi-driver-scaivault" \
      org.opencontainers.image.description="ScaiVault provider for the Kubernetes Secrets Store CSI driver"
USER 65532:65532
EXPOSE 8098
ENTRYPOINT ["/usr/local/bin/scaivault-agent", "csi-provider"]
