#!/usr/bin/env bash
# The whole cargo test suite, as the README and CI run it: installs the
# tools the tests need (grpcurl), then `cargo test --locked --workspace`
# (the server and the client crate). Extra arguments go to cargo test (e.g.
# `scripts/test.sh --test node`).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/grpcurl.sh
. scripts/grpcurl.sh

cargo test --locked --workspace "$@"
