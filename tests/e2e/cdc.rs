//! `pgdms-apply cdc` into a PostgreSQL target: exactly once, through crashes, restarts and
//! disconnects, on real clusters.

use pgdms_tests::matrix::{setup_matrix, ROWS};
use pgdms_tests::{assert_same_rows, cdc, wait_until, Cluster};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Runs cdc up to the source's current position and checks it succeeded.
fn catch_up(source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) {
    let until = source.current_lsn();
    let out = cdc(source, target, slot, &["--until", &until]).args(extra).output().unwrap();
    assert!(out.status.success(), "cdc failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn progress(target: &Cluster) -> Option<String> {
    target.query("select end_lsn::text from pgdms.apply_progress").into_iter().next().and_then(|r| r[0].clone())
}

const MIXED_TABLES: &[&str] = &["matrix", "accounts", "docs", "events", "ident", "swap", "gone"];

fn mixed_schema(source: &Cluster) {
    setup_matrix(source);
    source.execute(
        "create table accounts (id int primary key, balance numeric(12,2), note text);
         create table docs (id int primary key, rev int, body text);
         alter table docs alter column body set storage external;
         create table events (at timestamptz, kind text, payload jsonb);
         alter table events replica identity full;
         create table ident (id bigint generated always as identity primary key, v int,
                             twice int generated always as (v * 2) stored);
         create table swap (id int primary key, u int unique, v text);
         create table gone (id serial primary key, v text);",
    );
}

fn mixed_workload(source: &Cluster) {
    for row in ROWS {
        source.execute(&format!("insert into matrix values ({row})"));
    }
    source.execute(
        "insert into accounts select i, i * 10, 'n' || i from generate_series(1, 200) i;
         insert into docs select i, 0, repeat(md5(i::text), 40000) from generate_series(1, 3) i;
         insert into events values ('2024-01-01', 'a', '{\"x\": 1}'), ('2024-01-01', 'a', '{\"x\": 1}'), ('2024-01-02', 'b', null);
         insert into ident (v) values (1), (2), (3);
         insert into swap select i, i, 'v' from generate_series(1, 10) i;
         insert into gone (v) values ('a'), ('b');",
    );
    // Updates, deletes, a key update, a key swap through a free value, delete and re-insert of
    // the same key, updates leaving TOASTed values untouched, whole-row identity with
    // duplicate rows, truncates with RESTART IDENTITY.
    source.execute("update matrix set c_text = 'changed', c_jsonb = '{\"n\": [1]}' where id = 1");
    source.execute("update matrix set id = 10 where id = 2");
    source.execute("delete from matrix where id = 3");
    source.execute("begin; update accounts set balance = balance + 1 where id % 2 = 0; delete from accounts where id % 7 = 0; commit");
    source.execute("update accounts set id = id + 1000 where id between 10 and 20");
    source.execute("begin; delete from accounts where id = 1; insert into accounts values (1, 0, 'again'); update accounts set note = 'x' where id = 1; commit");
    source.execute("update docs set rev = rev + 1");
    source.execute("update docs set body = body || 'tail' where id = 2");
    source.execute("delete from docs where id = 3");
    source.execute("update events set kind = 'c' where ctid = (select ctid from events where kind = 'a' limit 1)");
    source.execute("delete from events where kind = 'b'");
    source.execute(
        "update ident set v = v + 10 where id = 2; delete from ident where id = 3; insert into ident (v) values (4)",
    );
    source.execute("begin; update swap set u = 100 where id = 1; update swap set u = 1 where id = 2; update swap set u = 2 where id = 1; commit");
    source.execute("truncate gone restart identity; insert into gone (v) values ('c')");
    for i in 0..50 {
        source.execute(&format!(
            "insert into accounts values ({}, {i}, 'loop') on conflict (id) do update set balance = excluded.balance",
            5000 + i % 10
        ));
    }
}

#[test]
fn a_mixed_workload_of_every_type_ends_with_target_equal_to_source() {
    let (source, target, one_by_one) = (Cluster::start(), Cluster::start(), Cluster::start());
    mixed_schema(&source);
    source.copy_schema_to(&target);
    source.copy_schema_to(&one_by_one);
    source.create_slot("mixed");
    source.create_slot("mixed1");
    mixed_workload(&source);
    catch_up(&source, &target, "mixed", &[]);
    assert_same_rows(&source, &target, MIXED_TABLES);
    // Identity columns got the source's values, and generated columns were computed by the
    // target.
    assert_eq!(target.rows("ident"), ["(1,1,2)", "(2,12,24)", "(4,4,8)"]);
    // The same stream in batches and groups of one row each lands the same.
    catch_up(&source, &one_by_one, "mixed1", &["--batch-max-rows", "1", "--group-max-rows", "1"]);
    assert_same_rows(&source, &one_by_one, MIXED_TABLES);
}

fn workload_step(source: &Cluster, i: usize) {
    source.execute(&format!(
        "begin;
         insert into hist (n, at) values ({i}, now());
         update t set v = v + 1, pad = md5(v::text) where id = {a};
         update t set v = v - 1 where id = {b};
         {extra};
         commit;",
        a = i % 97,
        b = (i * 7) % 101,
        // A row inserted at step 3 moves to a new key at step 6 and goes at step 9.
        extra = match i % 10 {
            0 => format!("delete from t where id = {}", 1500 + i / 10),
            3 => format!("insert into t values ({}, 0, 'new')", 100_000 + i),
            6 => format!("update t set id = {} where id = {}", 200_000 + i, 100_000 + i - 3),
            9 => format!("delete from t where id = {}", 200_000 + i - 3),
            _ => "select 1".into(),
        }
    ));
}

fn kill_schema(source: &Cluster) {
    source.execute(
        "create table t (id int primary key, v int, pad text);
         insert into t select i, 0, 'p' from generate_series(0, 2000) i;
         create table hist (n int, at timestamptz);",
    );
}

#[test]
fn kill_9_at_any_point_loses_and_repeats_nothing() {
    let (source, target) = (Cluster::start(), Cluster::start());
    kill_schema(&source);
    source.copy_schema_to(&target);
    target.execute("insert into t select i, 0, 'p' from generate_series(0, 2000) i");
    source.create_slot("k");
    for i in 0..1500 {
        workload_step(&source, i);
    }
    // Small groups, so that kills land between and inside commits.
    let small = ["--group-max-rows", "40", "--batch-max-rows", "25"];
    let mut seen = Vec::new();
    for round in 0..6 {
        let mut child = cdc(&source, &target, "k", &small).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(150 + 120 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        seen.push(progress(&target));
        // More changes arrive while it is down.
        for i in 0..50 {
            workload_step(&source, 1500 + round as usize * 50 + i);
        }
    }
    assert!(
        seen.iter().flatten().collect::<std::collections::HashSet<_>>().len() >= 3,
        "kills landed mid-stream: {seen:?}"
    );
    catch_up(&source, &target, "k", &small);
    assert_same_rows(&source, &target, &["t", "hist"]);
}

fn spawn_cdc(source: &Cluster, target: &Cluster, slot: &str) -> Child {
    cdc(source, target, slot, &[]).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn a_terminated_walsender_and_a_restarted_target_are_survived_and_sigterm_stops_cleanly() {
    let (source, target) = (Cluster::start(), Cluster::start());
    kill_schema(&source);
    source.copy_schema_to(&target);
    target.execute("insert into t select i, 0, 'p' from generate_series(0, 2000) i");
    source.create_slot("r");
    let mut child = spawn_cdc(&source, &target, "r");
    for i in 0..900 {
        workload_step(&source, i);
        if i == 300 {
            source.execute("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'r' and active_pid is not null");
        }
        if i == 600 {
            target.restart();
        }
    }
    wait_until(Duration::from_secs(60), "the target to catch up", || {
        source.rows("hist") == target.rows("hist") && source.rows("t") == target.rows("t")
    });
    assert_eq!(child.try_wait().unwrap(), None, "cdc kept running through both failures");
    let stopped = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(5), "SIGTERM took {:?}", stopped.elapsed());
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("resuming from the last committed group"), "the reconnects were logged: {log}");
    assert_same_rows(&source, &target, &["t", "hist"]);
}

#[test]
fn a_change_the_target_rejects_stops_with_its_table_lsn_and_key_or_goes_to_the_exceptions_table() {
    let (source, target) = (Cluster::start(), Cluster::start());
    source.execute("create table t (id int primary key, v text); create table nokey (v int)");
    source.copy_schema_to(&target);
    target.execute("insert into t values (5, 'already here')");
    source.create_slot("e");
    source.execute("insert into t values (4, 'a'), (5, 'b'), (6, 'c')");
    source.execute("insert into nokey values (1); update nokey set v = 2");
    source.execute("insert into t values (7, 'd')");

    let until = source.current_lsn();
    let out = cdc(&source, &target, "e", &["--until", &until]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot apply insert on \"public\".\"t\""), "{stderr}");
    assert!(stderr.contains("(key id=5)"), "{stderr}");
    assert!(stderr.contains("duplicate key value"), "{stderr}");
    assert_eq!(target.rows("t"), ["(5,\"already here\")"], "nothing of the failing group was committed");

    target.execute("delete from t where id = 5");
    let out = cdc(&source, &target, "e", &["--until", &until]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("REPLICA IDENTITY FULL"), "the fix is named: {stderr}");

    // With --on-error=log the rejected change is recorded and the rest applies.
    target.execute("insert into t values (5, 'here again')");
    let out = cdc(&source, &target, "e", &["--until", &until, "--on-error", "log"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(target.rows("t"), ["(4,a)", "(5,\"here again\")", "(6,c)", "(7,d)"]);
    let exceptions =
        target.query("select table_name, operation, key::text, error from pgdms.apply_exceptions order by id");
    assert_eq!(exceptions.len(), 2, "{exceptions:?}");
    assert_eq!(exceptions[0][0].as_deref(), Some("\"public\".\"t\""));
    assert_eq!(exceptions[0][2].as_deref(), Some("{\"id\": \"5\"}"));
    assert_eq!(exceptions[1][1].as_deref(), Some("update"));
    assert!(exceptions[1][3].as_deref().unwrap().contains("REPLICA IDENTITY FULL"));
}
