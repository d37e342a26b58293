#!/usr/bin/env bash
# Builds debian:bookworm-slim locally when no registry can be reached: a
# minimal Debian rootfs from this machine's own apt sources (mmdebstrap needs
# no mirror named), imported under the tag the Dockerfile's runtime stage
# starts FROM. Does nothing if the image exists.
set -euo pipefail
TAG=${BASE_IMAGE:-debian:bookworm-slim}
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already present"
  exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
echo "bootstrapping $TAG from Debian's packages (a few minutes)"
mmdebstrap --quiet --variant=minbase --include=ca-certificates \
  bookworm - | docker import - "$TAG"
docker image inspect "$TAG" --format "imported $TAG: {{.Size}} bytes"
