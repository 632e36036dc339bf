#!/usr/bin/env bash
# The project's test command (README.md). Release mode: the Raft simulator runs thousands of
# seeds and property tests run many cases, which is far faster optimised.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release "$@"
