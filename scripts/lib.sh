# Shared shell helpers for pgdms scripts: throwaway clusters from the system's PostgreSQL.
# Source it; it defines PG_CONFIG, PG_BIN, as_pg and cluster_start/cluster_stop.

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)

# Runs a server-side command as the postgres OS user when we are root (PostgreSQL refuses root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# cluster_start DIR PORT [extra postgresql.conf lines...]: initdb DIR/data and start it,
# listening only on the Unix socket in DIR.
cluster_start() {
    local dir=$1 port=$2
    shift 2
    mkdir -p "$dir" && chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "wal_level = logical"
        echo "output_plugin_libraries = 'pgoutput, test_decoding, wal2json, pgdms'"
        for line in "$@"; do echo "$line"; done
    } >>"$dir/data/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
}

cluster_stop() {
    as_pg "$PG_BIN/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}
