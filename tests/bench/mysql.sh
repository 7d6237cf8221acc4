#!/usr/bin/env bash
# MySQL/MariaDB target benchmark: a PostgreSQL source into a throwaway MariaDB server.
#
# 1. Full load of pgbench scale SCALE: `pgdms-apply migrate --mode full-load` (through the
#    DMS mapping, keys and NOT NULL included) against the floor of a hand-made pipe per
#    table, `psql COPY TO STDOUT | mariadb LOAD DATA LOCAL INFILE` into tables of the same
#    shape (no mapping, no exactness checks), timed for all four tables.
# 2. CDC catch-up: with the slot stopped, a backlog of TX pgbench transactions (4 row
#    changes each); then `pgdms-apply cdc --until` (the source's LSN after the backlog) is
#    timed from start to exit; then target == source is checked (row counts and sums).
# Median of ROUNDS runs each. MariaDB runs with its defaults (innodb_flush_log_at_trx_commit=1).
#
# Usage: tests/bench/mysql.sh [scale=10] [tx=20000] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

SCALE=${1:-10}
TX=${2:-20000}
ROUNDS=${3:-3}
APPLY=./target/release/pgdms-apply
[ -x "$APPLY" ] || { echo "build first: scripts/setup.sh" >&2; exit 1; }
command -v mariadbd >/dev/null || { echo "needs mariadb-server-core: scripts/setup.sh" >&2; exit 1; }
WORK=$(mktemp -d /tmp/pgdms-bench-mysql.XXXXXX)
chmod 755 "$WORK"
PORT=$((20000 + RANDOM % 20000))
MYPORT=$((PORT + 1))
MY=(mariadb --no-defaults -h 127.0.0.1 -P "$MYPORT" -u root -N -B)
stop_mariadb() { [ -f "$WORK/my/pid" ] && kill "$(cat "$WORK/my/pid")" 2>/dev/null; sleep 1; }
trap 'stop_mariadb; cluster_stop "$WORK"; rm -rf "$WORK"' EXIT

cluster_start "$WORK" "$PORT" "shared_buffers = 1GB" "max_wal_size = 8GB" "wal_sender_timeout = 0" >/dev/null
PSQL=("$PG_BIN/psql" -X -q -At -h "$WORK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -d postgres)
SOURCE="host=$WORK port=$PORT user=postgres dbname=postgres"
"${PSQL[@]}" -c "create extension pgdms"
"$PG_BIN/pgbench" -q -i -s "$SCALE" -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1

mkdir -p "$WORK/my"
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK/my"; fi
as_pg mariadb-install-db --no-defaults --datadir="$WORK/my/data" --auth-root-authentication-method=normal \
    --skip-test-db --skip-name-resolve >/dev/null 2>&1
as_pg mariadbd --no-defaults --datadir="$WORK/my/data" --socket="$WORK/my/sock" --port="$MYPORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$WORK/my/pid" --log-error="$WORK/my/err.log" \
    --innodb-buffer-pool-size=1G --innodb-log-file-size=512M --local-infile=1 </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do "${MY[@]}" -e "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
TARGET="mysql://root@127.0.0.1:$MYPORT/"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
TABLES=(pgbench_accounts pgbench_branches pgbench_history pgbench_tellers)

load_pgdms() {
    "${MY[@]}" -e "drop database if exists pgdms; drop database if exists public"
    local t0; t0=$(now)
    PGDMS_LOG=warn "$APPLY" migrate --source "$SOURCE" --target "$TARGET" --slot bench_load --mode full-load
    echo "$(now) - $t0" | bc
}

load_floor() {
    "${MY[@]}" -e "drop database if exists floor; create database floor;
        create table floor.pgbench_accounts (aid int not null primary key, bid int, abalance int, filler char(84));
        create table floor.pgbench_branches (bid int not null primary key, bbalance int, filler char(88));
        create table floor.pgbench_history (tid int, bid int, aid int, delta int, mtime datetime(6), filler char(22));
        create table floor.pgbench_tellers (tid int not null primary key, bid int, tbalance int, filler char(84));"
    local t0; t0=$(now)
    for t in "${TABLES[@]}"; do
        rm -f "$WORK/fifo"; mkfifo "$WORK/fifo"; chmod 666 "$WORK/fifo"
        "$PG_BIN/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres -c "copy $t to stdout" >"$WORK/fifo" &
        mariadb --no-defaults --local-infile=1 -h 127.0.0.1 -P "$MYPORT" -u root \
            -e "load data local infile '$WORK/fifo' into table floor.$t fields terminated by '\t'"
        wait
    done
    echo "$(now) - $t0" | bc
}

catch_up() {
    # The slot of a migration (its load done), stopped, then a backlog, then the catch-up.
    "${MY[@]}" -e "drop database if exists pgdms; drop database if exists public"
    "${PSQL[@]}" -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots" >/dev/null
    PGDMS_LOG=warn "$APPLY" migrate --source "$SOURCE" --target "$TARGET" --slot bench_cdc \
        --until "$("${PSQL[@]}" -c "select pg_current_wal_lsn()")" >/dev/null
    "$PG_BIN/pgbench" -n -c 4 -j 2 -t $((TX / 4)) -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
    local lsn t0; lsn=$("${PSQL[@]}" -c "select pg_current_wal_lsn()")
    t0=$(now)
    PGDMS_LOG=warn "$APPLY" cdc --source "$SOURCE" --target "$TARGET" --slot bench_cdc --until "$lsn"
    local took; took=$(echo "$(now) - $t0" | bc)
    local want got
    want=$("${PSQL[@]}" -F' ' -c "select (select count(*) from pgbench_history), (select sum(abalance) from pgbench_accounts), (select sum(tbalance) from pgbench_tellers)")
    got=$("${MY[@]}" -e "select (select count(*) from public.pgbench_history), (select sum(abalance) from public.pgbench_accounts), (select sum(tbalance) from public.pgbench_tellers)" | tr '\t' ' ')
    [ "$want" = "$got" ] || { echo "target differs from source: want $want, got $got" >&2; exit 1; }
    echo "$took"
}

rows=$("${PSQL[@]}" -c "select count(*) from pgbench_accounts")
echo "pgbench scale $SCALE ($rows accounts), MariaDB $(mariadbd --version | awk '{print $3}'), $ROUNDS rounds"
pg=(); fl=(); cu=()
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then pg+=("$(load_pgdms)"); fl+=("$(load_floor)"); else fl+=("$(load_floor)"); pg+=("$(load_pgdms)"); fi
    cu+=("$(catch_up)")
done
P=$(printf '%s\n' "${pg[@]}" | median); F=$(printf '%s\n' "${fl[@]}" | median); C=$(printf '%s\n' "${cu[@]}" | median)
printf '%-58s %8s  %s\n' "full load" "median s" "runs"
printf '%-58s %8.2f  %s\n' "pgdms migrate --mode full-load (DMS mapping)" "$P" "${pg[*]}"
printf '%-58s %8.2f  %s\n' "floor: psql COPY | mariadb LOAD DATA, per table" "$F" "${fl[*]}"
printf 'pgdms / floor = %.2fx\n' "$(echo "$P / $F" | bc -l)"
printf '%-58s %8.2f  %s\n' "CDC catch-up of $TX pgbench transactions (4 changes each)" "$C" "${cu[*]}"
printf 'CDC: %.0f transactions/s, %.0f row changes/s\n' "$(echo "$TX / $C" | bc -l)" "$(echo "$TX * 4 / $C" | bc -l)"
