# syntax=docker/dockerfile:1
#
# Images of scaivault-agent, one compiled binary in three final stages:
#   --target init          scailabs/scaivault-init
#   --target sidecar       scailabs/scaivault-sidecar
#   --target csi-provider  scailabs/secrets-store-csi-driver-scaivault
# deploy/build-images.sh builds and tags all three.
#
# The final stages are distroless: no shell and no package manager, so they hold no RUN step.
# The binary is Bun's runtime with the bundled program appended, linked against glibc: it needs a
# glibc base (distroless cc or base) and cannot start on distroless static, which has no libc.
#
# NOTE: the base images are pinned by tag only. Pin them by digest (image:tag@sha256:...) in the
# registry you build from, because a tag can be moved.
ARG BUN_IMAGE=oven/bun:1.4.5
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUN_IMAGE} AS build
WORKDIR /src

COPY package.json bun.lock ./
RUN bun install --frozen-lockfile --production

COPY mod.ts tsconfig.json ./
COPY src ./src
# `bun run build` runs `bun build --compile --bytecode`. The binary must not be stripped: the
# program is appended to the runtime executable, and strip removes it.
RUN bun run build && ./dist/scaivault-agent --version

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.vendor="ScaiLabs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
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
