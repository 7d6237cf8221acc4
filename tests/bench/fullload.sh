#!/usr/bin/env bash
# Full-load benchmark: pgdms-apply migrate against the anchor tools, in one run.
#
# One cluster (fsync on, wal_level logical, no unlogged tables) holds a pgbench source of
# SCALE; each tool loads it into a fresh empty target database of the same cluster, timed
# from process start to process exit, indexes (primary keys) and sequences included:
#   pgdms      pgdms-apply migrate --mode full-load --jobs 2 (its defaults otherwise)
#   pgcopydb   pgcopydb clone --table-jobs 2 --index-jobs 2 --split-tables-larger-than 100MB
#   dump/restore  pg_dump -Fd -j2, then pg_restore -j2 (both steps timed)
#   dump|psql  pg_dump | psql
#   native     schema (pg_dump -s | psql), then a subscription's initial sync until every
#              table is in state 'r'
#   floor      pre-data schema, COPY TO STDOUT | COPY FROM STDIN per table (2 at a time),
#              then the post-data (primary keys)
# After one untimed warm-up load, median of ROUNDS rounds, the order of the tools rotating
# from round to round. Installs
# pgcopydb (Debian package) if missing.
#
# Usage: tests/bench/fullload.sh [scale=100] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

SCALE=${1:-100}
ROUNDS=${2:-3}
APPLY=$PWD/target/release/pgdms-apply
[ -x "$APPLY" ] || { echo "build first: scripts/setup.sh" >&2; exit 1; }
if ! command -v pgcopydb >/dev/null; then
    echo "installing pgcopydb (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb >/dev/null
fi
WORK=$(mktemp -d /tmp/pgdms-bench-load.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
trap 'cluster_stop "$WORK"; rm -rf "$WORK"' EXIT
cluster_start "$WORK" "$PORT" "shared_buffers = 2GB" "max_wal_size = 16GB" "checkpoint_timeout = 30min" \
    "maintenance_work_mem = 512MB" "max_replication_slots = 20" "max_wal_senders = 20" \
    "max_logical_replication_workers = 8" "max_sync_workers_per_subscription = 2"
PSQL=("$PG_BIN/psql" -X -q -At -h "$WORK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1)
sql() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" -d "$db" -c "$*"; }
conn() { echo "host=$WORK port=$PORT user=postgres dbname=$1"; }
uri() { echo "postgresql://postgres@:$PORT/$1?host=$WORK"; }
now() { date +%s.%N; }
# pgdms-apply writes its target as a role without superuser: the owner of the target database.
TARGET_ROLE=bench_target
sql postgres "create role $TARGET_ROLE login; grant set on parameter session_replication_role to $TARGET_ROLE"

echo "pgbench -i -s $SCALE (source)..." >&2
sql postgres "create database src"
"$PG_BIN/pgbench" -q -i -s "$SCALE" -h "$WORK" -p "$PORT" -U postgres src >/dev/null 2>&1
# In a schema of its own: the tools that restore everything (pg_dump | psql...) then restore
# it into a target database that the target role owns, which the extension's default schema
# there (public, the database owner's) is refused for.
sql src "create schema pgdms_audit; create extension pgdms schema pgdms_audit"
sql src "vacuum analyze"
echo "source: $(sql src "select pg_size_pretty(pg_database_size('src'))")" >&2

fresh_target() {
    if [ "$(sql postgres "select count(*) from pg_database where datname = 'tgt'")" = 1 ]; then
        sql tgt "select 1 from pg_subscription where subname = 'bench_sub'" | grep -q 1 && {
            sql tgt "alter subscription bench_sub disable"
            sql tgt "alter subscription bench_sub set (slot_name = none)"
            sql tgt "drop subscription bench_sub"
        }
    fi
    sql postgres "select pg_drop_replication_slot(slot_name) from pg_replication_slots where not active" >/dev/null
    sql src "drop publication if exists bench_pub"
    sql postgres "drop database if exists tgt with (force)"
    sql postgres "create database tgt owner $TARGET_ROLE"
    sql postgres "checkpoint"
    rm -rf "$WORK/dump" "$WORK/pgcopydb"
}

run_pgdms() {
    "$APPLY" --log warn migrate --mode full-load --jobs 2 --source "$(conn src)" \
        --target "host=$WORK port=$PORT user=$TARGET_ROLE dbname=tgt" \
        --slot bench_load >/dev/null
}

run_pgcopydb() {
    pgcopydb clone --dir "$WORK/pgcopydb" --source "$(uri src)" --target "$(uri tgt)" \
        --table-jobs 2 --index-jobs 2 --split-tables-larger-than 100MB >/dev/null 2>&1
}

run_dump_restore() {
    "$PG_BIN/pg_dump" -h "$WORK" -p "$PORT" -U postgres -Fd -j2 -f "$WORK/dump" src
    "$PG_BIN/pg_restore" -h "$WORK" -p "$PORT" -U postgres -j2 -d tgt "$WORK/dump"
}

run_dump_psql() {
    "$PG_BIN/pg_dump" -h "$WORK" -p "$PORT" -U postgres src | "${PSQL[@]}" -d tgt >/dev/null
}

run_native() {
    "$PG_BIN/pg_dump" -h "$WORK" -p "$PORT" -U postgres -s src | "${PSQL[@]}" -d tgt >/dev/null
    sql src "create publication bench_pub for table pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
    sql src "select pg_create_logical_replication_slot('bench_sub', 'pgoutput')" >/dev/null
    sql tgt "create subscription bench_sub connection '$(conn src)' publication bench_pub
             with (create_slot = false, slot_name = 'bench_sub', binary = true)"
    until [ "$(sql tgt "select count(*) filter (where srsubstate <> 'r') || '/' || count(*) from pg_subscription_rel")" = "0/4" ]; do
        sleep 0.05
    done
}

run_floor() {
    "$PG_BIN/pg_dump" -h "$WORK" -p "$PORT" -U postgres -s --section=pre-data src | "${PSQL[@]}" -d tgt >/dev/null
    local t
    for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
        ( "${PSQL[@]}" -d src -c "copy $t to stdout" | "${PSQL[@]}" -d tgt -c "copy $t from stdin" ) &
        while [ "$(jobs -r | wc -l)" -ge 2 ]; do sleep 0.02; done
    done
    wait
    "$PG_BIN/pg_dump" -h "$WORK" -p "$PORT" -U postgres -s --section=post-data src | "${PSQL[@]}" -d tgt >/dev/null
}

check_target() { # the target holds every row, and the primary key of the largest table
    local rows pk
    rows=$(sql tgt "select count(*) from pgbench_accounts")
    pk=$(sql tgt "select count(*) from pg_indexes where indexname = 'pgbench_accounts_pkey'")
    if [ "$rows" != "$((SCALE * 100000))" ] || [ "$pk" != 1 ]; then
        echo "$1 left an incomplete target: $rows rows, pkey $pk" >&2
        exit 1
    fi
}

TOOLS=(pgdms pgcopydb dump_restore dump_psql native floor)
declare -A TIMES
# One untimed load first (the floor's), so that no tool is the one that reads the source
# cold or writes the cluster's first WAL: a fresh cluster creates each new 16 MB WAL segment
# (zero-filled) where later loads recycle them, which cost the first tool of round 1 2-3 s.
echo "warm-up load (untimed)..." >&2
fresh_target
run_floor
for r in $(seq 1 "$ROUNDS"); do
    line="round $r:"
    # Alternate the order: each tool runs first in some round, last in another.
    order=("${TOOLS[@]:$(( (r - 1) % ${#TOOLS[@]} ))}" "${TOOLS[@]:0:$(( (r - 1) % ${#TOOLS[@]} ))}")
    for tool in "${order[@]}"; do
        fresh_target
        t0=$(now)
        "run_$tool"
        t1=$(now)
        check_target "$tool"
        s=$(echo "$t1 - $t0" | bc)
        TIMES[$tool]+="$s "
        line+=" $tool $(printf %.2f "$s")s"
    done
    echo "$line" >&2
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "full load of pgbench scale $SCALE ($(sql src "select pg_size_pretty(pg_database_size('src'))")), 2 jobs, median of $ROUNDS:"
for tool in "${TOOLS[@]}"; do
    printf "  %-14s %7.2fs   (%s)\n" "$tool" "$(median "${TIMES[$tool]}")" "${TIMES[$tool]% }"
done
p=$(median "${TIMES[pgdms]}")
c=$(median "${TIMES[pgcopydb]}")
best=$(for t in dump_restore dump_psql native; do median "${TIMES[$t]}"; done | sort -g | head -1)
echo "  pgdms / pgcopydb: $(echo "scale=2; $p / $c" | bc)x (bar: <= 0.80)"
echo "  pgdms / fastest of dump_restore, dump_psql, native: $(echo "scale=2; $p / $best" | bc)x (bar: <= 1.00)"
