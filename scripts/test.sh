#!/usr/bin/env bash
# The project's test command: installs what the tests need (protoc for etcd-client), then
# runs every test of the workspace in release mode. Extra arguments go to `cargo test`,
# e.g. `scripts/test.sh --test kv` (one end-to-end file) or `scripts/test.sh --no-run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
exec cargo test --workspace --release "$@"
