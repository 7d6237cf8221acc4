//! The source side besides decoding: preflight checks, the least-privilege path, slots,
//! and clean removal, on real clusters.

use pgdms_tests::{cdc, pg_bindir, pgdms_apply, query_text, Cluster};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// pgdms.preflight() in `db` as `user`, after `setup` statements in the same session:
/// check name → (status, finding).
fn preflight(source: &Cluster, db: &str, user: &str, setup: &str, age: &str) -> BTreeMap<String, (String, String)> {
    let mut config = postgres::Config::new();
    config.host_path(source.socket_dir()).port(source.port).user(user).dbname(db);
    let mut client = config.connect(postgres::NoTls).unwrap();
    if !setup.is_empty() {
        client.batch_execute(setup).unwrap();
    }
    let rows = query_text(
        &mut client,
        &format!("select name, status, finding, coalesce(fix, '') from pgdms.preflight('{age}')"),
    );
    rows.into_iter()
        .map(|r| {
            let v = |i: usize| r[i].clone().unwrap_or_default();
            if v(1) != "ok" {
                assert!(!v(3).is_empty(), "check {} says {} without a fix", v(0), v(1));
            }
            (v(0), (v(1), v(2)))
        })
        .collect()
}

fn assert_statuses(got: &BTreeMap<String, (String, String)>, expected: &[(&str, &str)]) {
    for (name, status) in expected {
        let (s, finding) = got.get(*name).unwrap_or_else(|| panic!("no check named {name}: {got:#?}"));
        assert_eq!(s, status, "check {name}: {finding}");
    }
}

const CHECKS: &[&str] = &[
    "wal_level",
    "rds.logical_replication",
    "max_replication_slots",
    "max_wal_senders",
    "wal_sender_timeout",
    "output_plugin_libraries",
    "replication privilege",
    "select privilege",
    "tables without a key",
    "partitioned tables",
    "names differing only by case",
    "text fallback types",
    "unlogged tables",
    "large objects",
    "materialized views",
    "sequences",
    "inactive slots",
    "max_slot_wal_keep_size",
    "long-running transactions",
    "prepared transactions",
    "database encoding",
    "DDL capture",
    "capture schemas",
];

#[test]
fn preflight_passes_on_a_ready_database() {
    let source = Cluster::start();
    source.execute("create extension pgdms; create table t (id int primary key, v text)");
    let got = preflight(&source, "postgres", "postgres", "", "5 minutes");
    assert_eq!(got.keys().cloned().collect::<Vec<_>>().len(), CHECKS.len(), "{got:#?}");
    let all_ok: Vec<(&str, &str)> = CHECKS.iter().map(|c| (*c, "ok")).collect();
    assert_statuses(&got, &all_ok);
    // The capture switch, turned off by a superuser in a session.
    let off = preflight(&source, "postgres", "postgres", "set pgdms.capture_ddl = off", "5 minutes");
    assert_statuses(&off, &[("DDL capture", "warn")]);
}

#[test]
fn preflight_finds_every_problem_and_says_how_to_fix_it() {
    let source = Cluster::builder()
        .setting("wal_level", "replica")
        .setting("max_replication_slots", "1")
        .setting("max_wal_senders", "0")
        .setting("wal_sender_timeout", "0")
        .setting("output_plugin_libraries", "'pgoutput'")
        .setting("max_slot_wal_keep_size", "'100MB'")
        .setting("max_prepared_transactions", "2")
        .start();
    source.execute("create database ascii template template0 encoding 'SQL_ASCII' lc_collate 'C' lc_ctype 'C'");
    source.execute("select pg_create_physical_replication_slot('phys', true)");
    let mut db = source.connect("ascii");
    db.batch_execute(
        "create extension pgdms;
         create role weak login;
         create table nokey (a int);
         create table part (a int) partition by range (a);
         create table \"Case\" (id int primary key); create table \"case\" (id int primary key);
         create domain positive as int check (value > 0);
         create table fallback (id int primary key, v positive);
         create unlogged table ul (id int primary key);
         select lo_create(0);
         create materialized view mv as select 1 as one;
         create sequence sq;
         alter event trigger pgdms_intercept_ddl disable;
         grant create on schema public to weak;",
    )
    .unwrap();
    db.batch_execute("begin; create table prepared_one (id int); prepare transaction 'px'").unwrap();
    // A transaction left open (reported from an age of 0 seconds on).
    let mut open = source.connect("ascii");
    open.batch_execute("begin; select txid_current()").unwrap();
    std::thread::sleep(Duration::from_millis(20));

    let got = preflight(&source, "ascii", "postgres", "set rds.logical_replication = 0", "0 seconds");
    assert_statuses(
        &got,
        &[
            ("wal_level", "fail"),
            ("rds.logical_replication", "fail"),
            ("max_replication_slots", "fail"),
            ("max_wal_senders", "fail"),
            ("wal_sender_timeout", "warn"),
            ("output_plugin_libraries", "fail"),
            ("replication privilege", "ok"),
            ("select privilege", "ok"),
            ("tables without a key", "warn"),
            ("partitioned tables", "warn"),
            ("names differing only by case", "warn"),
            ("text fallback types", "warn"),
            ("unlogged tables", "warn"),
            ("large objects", "warn"),
            ("materialized views", "warn"),
            ("sequences", "warn"),
            ("inactive slots", "warn"),
            ("max_slot_wal_keep_size", "warn"),
            ("long-running transactions", "warn"),
            ("prepared transactions", "warn"),
            ("database encoding", "fail"),
            ("DDL capture", "fail"),
            ("capture schemas", "fail"),
        ],
    );
    assert!(got["capture schemas"].1.contains("open to CREATE by weak"), "{:?}", got["capture schemas"]);
    assert!(got["tables without a key"].1.contains("public.nokey"), "{:?}", got["tables without a key"]);
    assert!(
        got["names differing only by case"].1.contains("public.\"Case\""),
        "{:?}",
        got["names differing only by case"]
    );
    assert!(got["text fallback types"].1.contains("public.fallback.v"), "{:?}", got["text fallback types"]);
    assert!(got["inactive slots"].1.contains("phys"), "{:?}", got["inactive slots"]);
    assert!(got["long-running transactions"].1.contains("1 transactions"), "{:?}", got["long-running transactions"]);
    let rds_on = preflight(&source, "ascii", "postgres", "set rds.logical_replication = 1", "5 minutes");
    assert_statuses(&rds_on, &[("rds.logical_replication", "ok")]);

    // A role without rights is told what it lacks, and what it cannot see; nothing fails.
    let weak = preflight(&source, "ascii", "weak", "", "0 seconds");
    assert_eq!(weak.len(), CHECKS.len());
    assert_statuses(
        &weak,
        &[("replication privilege", "fail"), ("select privilege", "fail"), ("long-running transactions", "warn")],
    );
    assert!(weak["long-running transactions"].1.contains("cannot see"), "{:?}", weak["long-running transactions"]);
    db.batch_execute("rollback prepared 'px'").unwrap();
}

fn source_conninfo_as(source: &Cluster, user: &str) -> String {
    source.conninfo_as("postgres", user)
}

#[test]
fn a_role_with_only_replication_and_select_runs_the_migration() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute(
        "create table acct (id int primary key, v text); insert into acct values (1, 'a');
         create role mig login; create role app login; create schema appschema authorization app;",
    );
    target.execute("create role mig; create role app");
    source.copy_schema_to(&target);
    target.execute("insert into acct values (1, 'a')");
    source.execute("create extension pgdms");

    let before = preflight(&source, "postgres", "mig", "", "5 minutes");
    assert_statuses(&before, &[("replication privilege", "fail"), ("select privilege", "fail")]);
    assert!(before["replication privilege"].1.contains("mig"));

    let granted = source.query("select * from pgdms.grant_migration_role('mig')");
    assert!(granted.iter().any(|r| r[0].as_deref() == Some("ALTER ROLE mig REPLICATION")), "{granted:?}");
    let after = preflight(&source, "postgres", "mig", "", "5 minutes");
    assert_statuses(&after, &[("replication privilege", "ok"), ("select privilege", "ok")]);
    assert_eq!(source.value("select rolsuper from pg_roles where rolname = 'mig'"), "f");

    // The migration role creates its slot...
    let out = pgdms_apply()
        .args(["slot", "create", "--source", &source_conninfo_as(&source, "mig"), "--slot", "least"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ...an unprivileged application role changes its own schema (captured all the same)...
    let mut app = postgres::Config::new();
    app.host_path(source.socket_dir()).port(source.port).user("app").dbname("postgres");
    let mut app = app.connect(postgres::NoTls).unwrap();
    app.batch_execute(
        "create table appschema.items (id int primary key, n int);
         insert into appschema.items select i, i from generate_series(1, 10) i;
         alter table appschema.items add column m text default 'm';
         update appschema.items set m = 'set' where id < 4;",
    )
    .unwrap();
    source.execute("insert into acct values (2, 'b'); update acct set v = 'z' where id = 1");
    // ...and the migration role streams it all to the target.
    let until = source.current_lsn();
    let mut c = pgdms_apply();
    c.args([
        "cdc",
        "--source",
        &source_conninfo_as(&source, "mig"),
        "--target",
        &target.target_conninfo("postgres"),
        "--slot",
        "least",
        "--until",
        &until,
    ]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pgdms_tests::assert_same_rows(&source, &target, &["acct", "appschema.items"]);
    // New tables are readable by the migration role too (default privileges).
    let later = preflight(&source, "postgres", "mig", "", "5 minutes");
    assert_statuses(&later, &[("select privilege", "ok")]);
}

/// Every object of a database a user could have created, by kind and name.
const CATALOG: &str = r#"
select 'relation ' || c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'
union all select 'function ' || p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where n.nspname not in ('pg_catalog', 'information_schema')
union all select 'schema ' || nspname from pg_namespace
union all select 'event trigger ' || evtname from pg_event_trigger
union all select 'type ' || format_type(t.oid, null) from pg_type t join pg_namespace n on n.oid = t.typnamespace
 where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'
union all select 'extension ' || extname from pg_extension
union all select 'default acl ' || defaclrole::regrole::text from pg_default_acl
order by 1"#;

fn catalog(source: &Cluster, db: &str) -> Vec<String> {
    query_text(&mut source.connect(db), CATALOG).into_iter().map(|r| r[0].clone().unwrap()).collect()
}

fn psql(source: &Cluster, db: &str, sql: &str) -> (bool, String) {
    let out = Command::new(pg_bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &source.conninfo(db), "-c", sql])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn drop_extension_removes_everything_it_created_and_names_its_slots() {
    let source = Cluster::start();
    for db in ["plain", "elsewhere", "existing"] {
        source.execute(&format!("create database {db}"));
    }

    // Default: artifacts in the first schema of the search_path, functions in "pgdms".
    let before = catalog(&source, "plain");
    let mut plain = source.connect("plain");
    plain
        .batch_execute(
            "create extension pgdms;
             create table t (id int primary key); alter table t add column v text; drop table t;",
        )
        .unwrap();
    let installed = catalog(&source, "plain");
    for expected in [
        "relation pgdms_ddl_audit",
        "relation pgdms.ddl_audit",
        "schema pgdms",
        "function pgdms.preflight(interval)",
        "function pgdms.intercept_ddl()",
        "event trigger pgdms_intercept_ddl",
    ] {
        assert!(installed.iter().any(|o| o == expected), "{expected} missing: {installed:#?}");
    }
    assert_eq!(source.value("select 1 from pg_database where datname = 'plain'"), "1");
    plain.batch_execute("select pg_create_logical_replication_slot('left_behind', 'pgdms')").unwrap();
    drop(plain);
    let (ok, stderr) = psql(&source, "plain", "drop extension pgdms");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("left_behind"),
        "DROP EXTENSION must name the slot: {stderr}"
    );
    assert_eq!(catalog(&source, "plain"), before, "DROP EXTENSION left objects behind");
    source.execute("select pg_drop_replication_slot('left_behind')");

    // CREATE EXTENSION ... SCHEMA x: the audit view goes to x, which stays (pgdms made it
    // not); what the capture writes stays in "pgdms".
    let mut elsewhere = source.connect("elsewhere");
    elsewhere.batch_execute("create schema x").unwrap();
    let before = catalog(&source, "elsewhere");
    elsewhere.batch_execute("create extension pgdms schema x; create table t (id int)").unwrap();
    let installed = catalog(&source, "elsewhere");
    assert!(installed.iter().any(|o| o == "relation x.pgdms_ddl_audit"), "{installed:#?}");
    assert!(installed.iter().any(|o| o == "function pgdms.intercept_ddl()"), "{installed:#?}");
    assert_eq!(
        query_text(&mut elsewhere, "select count(*) from x.pgdms_ddl_audit where c_name = 't'")[0][0].as_deref(),
        Some("1")
    );
    elsewhere.batch_execute("drop table t; drop extension pgdms").unwrap();
    assert_eq!(catalog(&source, "elsewhere"), before);

    // A "pgdms" schema that existed before is the user's: it stays.
    let mut existing = source.connect("existing");
    existing.batch_execute("create schema pgdms; create table pgdms.mine (id int)").unwrap();
    let before = catalog(&source, "existing");
    existing.batch_execute("create extension pgdms; drop extension pgdms").unwrap();
    assert_eq!(catalog(&source, "existing"), before);
}

#[test]
fn pgdms_slots_are_listed_dropped_and_never_left_behind() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key)");
    source.copy_schema_to(&target);
    source.execute("create extension pgdms");
    source.create_slot("mine");
    source.execute("select pg_create_logical_replication_slot('other', 'test_decoding')");
    source.execute("insert into t select generate_series(1, 10000)");

    let slots = source.query("select slot_name, retained_wal_bytes > 0, wal_status from pgdms.slots()");
    assert_eq!(slots, vec![vec![Some("mine".into()), Some("t".into()), Some("reserved".into())]]);

    let refuse = |sql: &str, want: &str| {
        let err = source.connect("postgres").batch_execute(sql).unwrap_err();
        let text = format!("{err:?}");
        assert!(text.contains(want), "{sql}: {text}");
    };
    refuse("select pgdms.drop_slot('other')", "does not use the pgdms plugin");
    refuse("select pgdms.drop_slot('nope')", "does not exist");

    // In use by a running apply: refused, with the process named.
    let mut running = cdc(&source, &target, "mine", &[]).stderr(Stdio::null()).spawn().unwrap();
    pgdms_tests::wait_until(Duration::from_secs(20), "the apply to hold the slot", || {
        source.value("select active from pg_replication_slots where slot_name = 'mine'") == "t"
    });
    refuse("select pgdms.drop_slot('mine')", "is in use by process");
    running.kill().unwrap();
    running.wait().unwrap();
    pgdms_tests::wait_until(Duration::from_secs(20), "the slot to be released", || {
        source.value("select active from pg_replication_slots where slot_name = 'mine'") == "f"
    });
    source.execute("select pgdms.drop_slot('mine')");
    assert_eq!(source.value("select count(*) from pgdms.slots()"), "0");

    // A migration that finishes drops its own slot.
    source.create_slot("finishing");
    source.execute("insert into t values (0)");
    let until = source.current_lsn();
    let out = cdc(&source, &target, "finishing", &["--until", &until, "--drop-slot-on-finish"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(source.value("select count(*) from pg_replication_slots where slot_name = 'finishing'"), "0");
    assert_eq!(target.value("select count(*) from t where id = 0"), "1");
}
