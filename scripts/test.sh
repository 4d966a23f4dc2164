#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ensure_deps
# A whole-suite run gains nothing from incremental data (gigabytes on a cold build);
# set CARGO_INCREMENTAL=1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --locked "$@"
