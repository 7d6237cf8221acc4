#!/usr/bin/env bash
# Every test of pgdms: unit tests and end-to-end tests on throwaway PostgreSQL clusters.
# Installs what is missing first (scripts/setup.sh), so it runs on a fresh Debian 12 as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --release --workspace --exclude pgdms "$@"
