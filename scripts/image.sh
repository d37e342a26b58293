#!/usr/bin/env bash
# Builds meshkv:latest without a registry: the Dockerfile's own runtime stage,
# fed a release binary built on this host instead of by the rust:1-bookworm
# build stage (which cannot be pulled here). Users with registry access
# build the Dockerfile as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${IMAGE:-meshkv:latest}

scripts/base-image.sh
cargo build --release --locked
runtime=$(sed -n '/^FROM debian:bookworm-slim AS runtime/,$p' Dockerfile \
  | sed 's#^COPY --from=build /src/target/release/meshkv #COPY target/release/meshkv #')
grep -q '^COPY target/release/meshkv ' <<<"$runtime" || {
  echo "image.sh: the Dockerfile's runtime stage changed; update this script" >&2
  exit 1
}
DOCKER_BUILDKIT=0 docker build --quiet -t "$TAG" -f - . <<<"$runtime" >/dev/null
docker image inspect "$TAG" --format "built $TAG ({{.Size}} bytes) from the Dockerfile's runtime stage"
