#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ensure_deps
cargo test --workspace --locked "$@"
