#!/usr/bin/env bash
# Builds the three images of scaivault-agent from the Dockerfile's final stages:
#   init          -> <registry>/scaivault-init:<tag>
#   sidecar       -> <registry>/scaivault-sidecar:<tag>
#   csi-provider  -> <registry>/secrets-store-csi-driver-scaivault:<tag>
#
# Usage: deploy/build-images.sh [--registry scailabs] [--tag VERSION] [--platform linux/amd64,linux/arm64]
#                                [--push] [--print]
#   --registry  image name prefix (default: scailabs)
#   --tag       image tag and version label (default: the version in package.json)
#   --platform  platforms for `docker buildx build`; more than one needs --push
#   --push      push the images instead of loading them into the local engine
#   --print     print the docker commands instead of running them (needs no Docker engine)
#
# Environment: SOURCE_URL sets the org.opencontainers.image.source label; by default it is the
# URL of the git remote "origin", without user name, password or token.
#
# Needs Docker with BuildKit (docker buildx) and a running engine, except with --print.
set -euo pipefail
cd "$(dirname "$0")/.."

registry=scailabs
tag=""
platform=""
push=false
print=false

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --platform) platform=${2:?--platform needs a value}; shift 2 ;;
    --push) push=true; shift ;;
    --print) print=true; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown option \"$1\"; see --help" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' package.json | head -n 1)
if [ -z "$version" ]; then
  echo "build-images.sh: cannot read \"version\" from package.json" >&2
  exit 1
fi
tag=${tag:-$version}

# The commit, with -dirty when a file that goes into the image differs from it. A repository
# without commits, or no git at all, gives "unknown".
revision=$(git rev-parse --verify --quiet HEAD 2>/dev/null || true)
if [ -z "$revision" ]; then
  revision=unknown
elif [ -n "$(git status --porcelain -- Dockerfile .dockerignore package.json bun.lock mod.ts tsconfig.json src 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Prints a web URL for a git remote URL, without user info: a CI job clones with its token in
# it (https://gitlab-ci-token:TOKEN@host/...). ssh://, git:// and scp-style git@host:path become
# https://host/path. Prints nothing for a URL of another form, such as a local path.
public_source_url() {
  local url=$1
  case "$url" in
    https://*|http://*|ssh://*|git://*)
      local scheme=${url%%://*}
      local rest=${url#*://}
      local authority=${rest%%/*}
      local path=""
      if [ "$rest" != "$authority" ]; then path=/${rest#*/}; fi
      authority=${authority##*@}
      path=${path%%[?#]*}
      # The port of an ssh:// or git:// URL is not a web port.
      case "$scheme" in ssh|git) scheme=https; authority=${authority%%:*} ;; esac
      printf '%s://%s%s\n' "$scheme" "$authority" "$path"
      ;;
    *@*:*)
      local host=${url#*@}
      printf 'https://%s/%s\n' "${host%%:*}" "${host#*:}"
      ;;
  esac
}

if [ -n "${SOURCE_URL:-}" ]; then
  source_url=$(public_source_url "$SOURCE_URL")
else
  source_url=$(public_source_url "$(git config --get remote.origin.url 2>/dev/null || true)")
fi

if [ "$push" = false ] && [[ "$platform" == *,* ]]; then
  echo "build-images.sh: several platforms cannot be loaded into the local engine; add --push" >&2
  exit 2
fi

if [ "$print" = false ] && ! docker info >/dev/null 2>&1; then
  echo "build-images.sh: no Docker engine is reachable (docker info failed); start one, or use --print to see the commands" >&2
  exit 1
fi

run() {
  if [ "$print" = true ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

for target in init sidecar csi-provider; do
  case "$target" in
    init) name=scaivault-init ;;
    sidecar) name=scaivault-sidecar ;;
    csi-provider) name=secrets-store-csi-driver-scaivault ;;
  esac

  args=(docker buildx build --file Dockerfile --target "$target" --tag "$registry/$name:$tag"
    --build-arg "VERSION=$tag" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
  [ -n "$source_url" ] && args+=(--label "org.opencontainers.image.source=$source_url")
  [ -n "$platform" ] && args+=(--platform "$platform")
  if [ "$push" = true ]; then args+=(--push); else args+=(--load); fi
  args+=(.)

  run "${args[@]}"
done
