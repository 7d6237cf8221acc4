#!/usr/bin/env bash
# CDC catch-up benchmark: pgdms-apply against PostgreSQL's native logical replication.
#
# Per round: a fresh pgbench scale-10 source and two identical targets (CREATE DATABASE ...
# TEMPLATE), a pgdms slot and a disabled native subscription (copy_data=false, binary=true,
# streaming=off) created before a backlog of `pgbench -n -c 4 -j 2 -t TX` builds up; then
# each replays the backlog: pgdms-apply timed from process start to exit, native from
# ENABLE until the target has applied the source LSN recorded after the backlog. Both use
# synchronous_commit = off (the subscription default). Median of ROUNDS alternating runs.
# Then, on the last round's setup, the commit-to-apply lag of pgdms-apply under a steady
# pgbench load (LAG_TPS transactions/s for LAG_SECONDS).
#
# Usage: tests/bench/cdc.sh [tx per client=50000] [rounds=3] [lag seconds=60] [lag tps=2000]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

TX=${1:-50000}
ROUNDS=${2:-3}
LAG_SECONDS=${3:-60}
LAG_TPS=${4:-2000}
APPLY=./target/release/pgdms-apply
[ -x "$APPLY" ] || { echo "build first: scripts/setup.sh" >&2; exit 1; }
WORK=$(mktemp -d /tmp/pgdms-bench-cdc.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
trap 'cluster_stop "$WORK"; rm -rf "$WORK"' EXIT
cluster_start "$WORK" "$PORT" "shared_buffers = 1GB" "max_wal_size = 8GB" "max_replication_slots = 20" \
    "max_wal_senders = 20" "max_logical_replication_workers = 8" "wal_sender_timeout = 0"
PSQL=("$PG_BIN/psql" -X -q -At -h "$WORK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1)
sql() { local db=$1; shift; "${PSQL[@]}" -d "$db" -c "$*"; }
now() { date +%s.%N; }
conn() { echo "host=$WORK port=$PORT user=postgres dbname=$1"; }
# pgdms-apply writes its target as a role without superuser, which owns the target's tables.
TARGET_ROLE=bench_target
target_conn() { echo "host=$WORK port=$PORT user=$TARGET_ROLE dbname=$1"; }
sql postgres "create role $TARGET_ROLE login; grant set on parameter session_replication_role to $TARGET_ROLE" >/dev/null

prepare() { # round: fresh source + 2 targets + pgdms slot + disabled subscription, then the backlog
    local r=$1
    if [ "$(sql postgres "select count(*) from pg_database where datname = 'tgt_native'")" = 1 ]; then
        # A database with a subscription cannot be dropped: detach it from its slot first.
        sql tgt_native "alter subscription bench_sub disable" >/dev/null
        sql tgt_native "alter subscription bench_sub set (slot_name = none)" >/dev/null
        sql tgt_native "drop subscription bench_sub" >/dev/null
    fi
    sql postgres "drop database if exists src with (force)" >/dev/null
    sql postgres "drop database if exists tgt_pgdms with (force)" >/dev/null
    sql postgres "drop database if exists tgt_native with (force)" >/dev/null
    sql postgres "select pg_drop_replication_slot(slot_name) from pg_replication_slots" >/dev/null
    sql postgres "create database src" >/dev/null
    "$PG_BIN/pgbench" -q -i -s 10 -h "$WORK" -p "$PORT" -U postgres src >/dev/null 2>&1
    sql src "create table bench_marker (round int primary key)" >/dev/null
    sql postgres "create database tgt_pgdms template src owner $TARGET_ROLE" >/dev/null
    sql tgt_pgdms "do \$\$ declare t text; begin
        for t in select tablename from pg_tables where schemaname = 'public' loop
            execute format('alter table %I owner to $TARGET_ROLE', t);
        end loop; end \$\$" >/dev/null
    sql postgres "create database tgt_native template src" >/dev/null
    sql src "create publication bench_pub for all tables" >/dev/null
    sql src "select pg_create_logical_replication_slot('bench_pgdms', 'pgdms')" >/dev/null
    sql src "select pg_create_logical_replication_slot('bench_native', 'pgoutput')" >/dev/null
    sql tgt_native "create subscription bench_sub connection '$(conn src)' publication bench_pub
        with (create_slot = false, slot_name = 'bench_native', enabled = false, copy_data = false,
              binary = true, streaming = off, synchronous_commit = off)" >/dev/null
    "$PG_BIN/pgbench" -n -c 4 -j 2 -t "$TX" -h "$WORK" -p "$PORT" -U postgres src >/dev/null 2>&1
    sql src "insert into bench_marker values ($r)" >/dev/null
    END=$(sql src "select pg_current_wal_flush_lsn()")
}

run_pgdms() {
    local t0 t1
    t0=$(now)
    PGDMS_LOG=warn "$APPLY" cdc --source "$(conn src)" --target "$(target_conn tgt_pgdms)" --slot bench_pgdms \
        --synchronous-commit off --until "$END"
    t1=$(now)
    [ "$(sql tgt_pgdms "select count(*) from bench_marker")" = 1 ] || { echo "pgdms-apply missed the marker" >&2; exit 1; }
    echo "$t1 - $t0" | bc -l
}

run_native() {
    local t0 t1
    t0=$(now)
    sql tgt_native "alter subscription bench_sub enable" >/dev/null
    until [ "$(sql tgt_native "select count(*) from bench_marker")" = 1 ]; do sleep 0.01; done
    t1=$(now)
    sql tgt_native "alter subscription bench_sub disable" >/dev/null
    echo "$t1 - $t0" | bc -l
}

check_equal() {
    local q="select md5(string_agg(t::text, ',' order by aid)) from pgbench_accounts t"
    local a b c
    a=$(sql src "$q"); b=$(sql tgt_pgdms "$q"); c=$(sql tgt_native "$q")
    [ "$a" = "$b" ] && [ "$a" = "$c" ] || { echo "targets differ from the source" >&2; exit 1; }
    q="select count(*), sum(delta) from pgbench_history"
    [ "$(sql src "$q")" = "$(sql tgt_pgdms "$q")" ] || { echo "pgbench_history differs" >&2; exit 1; }
}

P=() N=()
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: building a backlog of $((TX * 4)) transactions..." >&2
    prepare "$r"
    if ((r % 2)); then p=$(run_pgdms); n=$(run_native); else n=$(run_native); p=$(run_pgdms); fi
    check_equal
    P+=("$p") N+=("$n")
    printf 'round %d: pgdms-apply %.2fs  native %.2fs\n' "$r" "$p" "$n" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.2f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
MP=$(median "${P[@]}") MN=$(median "${N[@]}")
printf '\ncatch-up of %d transactions (%d row changes), median of %d:\n' $((TX * 4)) $((TX * 16)) "$ROUNDS"
printf '  %-22s %8ss  %8.0f tx/s\n' "pgdms-apply" "$MP" "$(echo "$TX * 4 / $MP" | bc -l)"
printf '  %-22s %8ss  %8.0f tx/s\n' "native logical repl." "$MN" "$(echo "$TX * 4 / $MN" | bc -l)"
printf '  speed-up: %.2fx\n' "$(echo "$MN / $MP" | bc -l)"

# Lag under a steady load: source commit time to target commit time, per group.
echo "lag: ${LAG_TPS} tps for ${LAG_SECONDS}s..." >&2
# The trigger fires as the target role, which writes apply_progress: its table is the role's.
sql tgt_pgdms "create table if not exists lag_samples (source_commit timestamptz, target_commit timestamptz);
    alter table lag_samples owner to $TARGET_ROLE" >/dev/null
sql tgt_pgdms "create or replace function lag_sample() returns trigger language plpgsql as \$\$
    begin insert into lag_samples select commit_time, clock_timestamp() from pgdms_apply.apply_progress; return null; end \$\$;
    -- Groups only: an idle position recorded between them keeps the last commit time.
    create trigger lag_sample after update on pgdms_apply.apply_progress for each row
        when (new.commit_time is distinct from old.commit_time) execute function lag_sample();
    alter table pgdms_apply.apply_progress enable always trigger lag_sample;" >/dev/null
PGDMS_LOG=warn "$APPLY" cdc --source "$(conn src)" --target "$(target_conn tgt_pgdms)" --slot bench_pgdms --synchronous-commit off &
APPLY_PID=$!
sleep 1
"$PG_BIN/pgbench" -n -c 4 -j 2 -R "$LAG_TPS" -T "$LAG_SECONDS" -h "$WORK" -p "$PORT" -U postgres src >/dev/null 2>&1
sleep 2
kill -TERM "$APPLY_PID"; wait "$APPLY_PID" || true
sql tgt_pgdms "select format('  lag p50 %s ms, p99 %s ms over %s groups',
    round(percentile_cont(0.5) within group (order by ms)::numeric, 1),
    round(percentile_cont(0.99) within group (order by ms)::numeric, 1), count(*))
    from (select extract(epoch from target_commit - source_commit) * 1000 as ms from lag_samples) s"
