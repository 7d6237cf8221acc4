#!/usr/bin/env bash
# Installs what pgdms needs on Debian 12 (as root), builds it, and installs the extension
# into the system PostgreSQL 15. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# mariadb-server-core and mariadb-client-core: the MariaDB server binaries the MySQL
# target's tests start throwaway servers from (no system service is installed or started).
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-wal2json
              mariadb-server-core mariadb-client-core
              libclang-dev clang pkg-config sudo build-essential bc ca-certificates curl)
PGRX_VERSION=0.18.1

log() { echo "setup: $*" >&2; }
need_root() {
    if [ "$(id -u)" != 0 ]; then
        log "this step needs root: $*"
        exit 1
    fi
}

# PostgreSQL must have output_plugin_libraries (15.19 and later) for pgdms to be allowed.
pg_ok() {
    [ -x "$PG_CONFIG" ] && [ -x /usr/lib/postgresql/15/bin/postgres ] &&
        grep -q output_plugin_libraries /usr/share/postgresql/15/postgresql.conf.sample 2>/dev/null
}
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || ! pg_ok; then
    need_root "apt-get install ${missing[*]:-postgresql-15 (upgrade)}"
    log "installing Debian packages: ${missing[*]:-} (and the latest postgresql-15)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
    # The package's own cluster is not used; pgdms starts throwaway clusters of its own.
    pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
pg_ok || { log "PostgreSQL 15 with output_plugin_libraries (15.19+) is required"; exit 1; }

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        log "installing the Rust toolchain (rustup)"
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    }
    export PATH="$HOME/.cargo/bin:$PATH"
fi

if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
if ! grep -q "^pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    log "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

log "building and installing the pgdms extension"
need_root "install the extension into $("$PG_CONFIG" --pkglibdir)"
mkdir -p target
if ! (cd pgdms_ext && cargo pgrx install --release --pg-config "$PG_CONFIG") >target/pgrx-install.log 2>&1; then
    cat target/pgrx-install.log >&2
    log "building or installing the extension failed (log above, also in target/pgrx-install.log)"
    exit 1
fi
# The install scripts of earlier releases (sql/releases/), next to the update scripts pgrx
# installs: CREATE EXTENSION pgdms VERSION '0.1.0' then ALTER EXTENSION pgdms UPDATE is
# how the tests check the update path.
install -m 644 sql/releases/pgdms--*.sql "$("$PG_CONFIG" --sharedir)/extension/"

log "building pgdms-apply"
cargo build --release --quiet -p pgdms_apply
log "ready: $(./target/release/pgdms-apply --version)"
