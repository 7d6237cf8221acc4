#!/usr/bin/env bash
# Every test of pgdms: clippy at zero warnings, unit tests and end-to-end tests on throwaway
# PostgreSQL clusters.
# Installs what is missing first (scripts/setup.sh), so it runs on a fresh Debian 12 as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The workspace's lints (Cargo.toml) are kept at zero warnings.
if ! cargo clippy --version >/dev/null 2>&1; then
    echo "test: installing clippy" >&2
    rustup component add clippy
fi
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo test --release --workspace --exclude pgdms "$@"
