#!/usr/bin/env bash
# Decoding benchmark: pgdms against pgoutput, test_decoding and wal2json on one WAL backlog.
#
# In one run: pgbench scale 10; one slot per plugin; `pgbench -n -c 4 -j 2 -t 50000`; then
# each slot is read up to the same end LSN with the SQL decoding functions, in ROUNDS
# alternating rounds, each on a fresh copy of the slot. Prints the median seconds and the
# total output bytes (sum(length(data))) per plugin.
#
# Usage: tests/bench/decode.sh [transactions per client, default 50000] [rounds, default 5]
# Needs the pgdms extension installed (scripts/setup.sh) and postgresql-15-wal2json.
set -euo pipefail

TX=${1:-50000}
ROUNDS=${2:-5}
BIN=$(/usr/lib/postgresql/15/bin/pg_config --bindir)
WORK=$(mktemp -d /tmp/pgdms-bench-decode.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
cleanup() { as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

as_pg "$BIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
wal_level = logical
max_replication_slots = 20
output_plugin_libraries = 'pgoutput, test_decoding, wal2json, pgdms'
shared_buffers = 512MB
max_wal_size = 8GB
synchronous_commit = off
logical_decoding_work_mem = 256MB
EOF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w start >/dev/null
PSQL=("$BIN/psql" -X -q -At -h "$WORK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
sql() { "${PSQL[@]}" -c "$1"; }

echo "pgbench scale 10, then -c 4 -j 2 -t $TX ($((TX * 4)) transactions)..." >&2
"$BIN/pgbench" -q -i -s 10 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
sql "create publication bench_pub for all tables" >/dev/null
for p in pgdms pgoutput test_decoding wal2json; do
    sql "select pg_create_logical_replication_slot('src_$p', '$p')" >/dev/null
done
"$BIN/pgbench" -n -c 4 -j 2 -t "$TX" -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
END_LSN=$(sql "select pg_current_wal_insert_lsn()")
echo "backlog ends at $END_LSN" >&2

read_slot() { # plugin slot -> "seconds bytes"
    local plugin=$1 slot=$2 fn args
    case $plugin in
        pgdms) fn=pg_logical_slot_peek_binary_changes; args="" ;;
        pgoutput) fn=pg_logical_slot_peek_binary_changes; args=", 'proto_version', '1', 'publication_names', 'bench_pub'" ;;
        test_decoding) fn=pg_logical_slot_peek_changes; args="" ;;
        wal2json) fn=pg_logical_slot_peek_changes; args=", 'format-version', '2'" ;;
    esac
    local t0 t1 bytes
    t0=$(date +%s.%N)
    bytes=$(sql "select coalesce(sum(length(data)), 0) from $fn('$slot', '$END_LSN', null$args)")
    t1=$(date +%s.%N)
    echo "$(echo "$t1 - $t0" | bc -l) $bytes"
}

declare -A TIMES BYTES
for round in $(seq 1 "$ROUNDS"); do
    # Alternate the order so no plugin always runs first (cold caches) or last.
    if ((round % 2)); then order="pgdms pgoutput test_decoding wal2json"; else order="wal2json test_decoding pgoutput pgdms"; fi
    for p in $order; do
        sql "select pg_copy_logical_replication_slot('src_$p', 'copy_$p')" >/dev/null
        read -r secs bytes < <(read_slot "$p" "copy_$p")
        sql "select pg_drop_replication_slot('copy_$p')" >/dev/null
        TIMES[$p]="${TIMES[$p]:-} $secs"
        BYTES[$p]=$bytes
        echo "round $round: $p ${secs}s ${bytes} bytes" >&2
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {printf "%.3f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf '\n%-14s %12s %16s\n' plugin "median s" "output bytes"
for p in pgdms pgoutput test_decoding wal2json; do
    printf '%-14s %12s %16s\n' "$p" "$(echo "${TIMES[$p]}" | median)" "${BYTES[$p]}"
done
