//! `pgdms-apply migrate`, `cutover` and `validate`: a live database moved with no gap and no
//! duplicate, through a crash of the full load, on real clusters.

use pgdms_tests::matrix::{setup_matrix, ROWS};
use pgdms_tests::{assert_same_rows, pg_bindir, pgdms_apply, wait_until, Cluster};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn migrate(source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) -> Command {
    pgdms_tests::between("migrate", source, target, slot, extra)
}

fn cutover(source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) -> std::process::Output {
    pgdms_apply()
        .args(["cutover", "--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
        .args(["--slot", slot, "--drop-slot"])
        .args(extra)
        .output()
        .unwrap()
}

fn loaded_tables(target: &Cluster) -> usize {
    if target.value("select to_regclass('pgdms_apply.load_progress') is not null") != "t" {
        return 0;
    }
    target.value("select count(*) from pgdms_apply.load_progress").parse().unwrap()
}

fn terminate(child: &mut Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "pgdms-apply exited with {status} after SIGTERM");
}

/// Every user table of the source's postgres database.
fn user_tables(source: &Cluster) -> Vec<String> {
    source
        .query(
            "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema', 'pgdms', 'pgdms_apply')
                and c.relname !~ '^pgdms_' order by 1",
        )
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

/// A writer that keeps changing the source until stopped: inserts, updates (keys too),
/// deletes, in the mixed-case and partitioned tables.
fn start_workload(source: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut client = source.connect("postgres");
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let i = 1_000_000 + n as i64;
            client
                .batch_execute(&format!(
                    "begin;
                     insert into \"Mixed Case\" (\"Id\", \"Value\") values ({i}, 'w{n}');
                     update \"Mixed Case\" set \"Value\" = 'u{n}' where \"Id\" = {k};
                     update \"Mixed Case\" set \"Id\" = -{k} where \"Id\" = {k} + 1;
                     delete from \"Mixed Case\" where \"Id\" = {k} + 2;
                     insert into measurements (at, device, reading) values (date '2024-01-01' + ({n} % 700), {n} % 50, {n});
                     update measurements set reading = reading + 1 where device = {n} % 50 and at < date '2024-06-01';
                     commit",
                    k = 3 * n
                ))
                .unwrap();
        }
        n
    })
}

#[test]
fn a_live_database_migrates_with_no_gap_and_no_duplicate() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    setup_matrix(&source);
    for row in ROWS {
        source.execute(&format!("insert into matrix values ({row})"));
    }
    source.execute(
        "create extension pgdms;
         create table \"Mixed Case\" (\"Id\" bigint primary key, \"Value\" text, big text);
         insert into \"Mixed Case\" select i, md5(i::text), case when i % 10000 = 0 then repeat('x', 100000) end
           from generate_series(1, 1000000) i;
         create table \"mixed case\" (id int primary key, v text); insert into \"mixed case\" values (1, 'lower twin');
         create table measurements (id bigserial, at date not null, device int, reading numeric(12,2),
                                    primary key (id, at)) partition by range (at);
         create table measurements_2024 partition of measurements for values from ('2024-01-01') to ('2025-01-01');
         create table measurements_2025 partition of measurements for values from ('2025-01-01') to ('2026-01-01');
         insert into measurements (at, device, reading) select date '2024-01-01' + (i % 700), i % 50, i
           from generate_series(1, 20000) i;
         create index on measurements (device);
         create table keyless (a int, b text) ; alter table keyless replica identity full;
         insert into keyless select i, 'k' from generate_series(1, 100) i;
         -- Types whose binary form names other types' oids, which differ on the target.
         create type feeling as enum ('sad', 'ok');
         create type couple as (m feeling, n int);
         create table oids_inside (id int primary key, moods feeling[], p couple, ps couple[], r regclass);
         insert into oids_inside values (1, '{sad,ok}', row('ok', 1), array[row('sad', 2)::couple], 'keyless');",
    );
    let pgbench = |args: &[&str]| {
        let out = Command::new(pg_bindir().join("pgbench"))
            .args(args)
            .args(["-h", &source.socket_dir().display().to_string(), "-p", &source.port.to_string(), "-U", "postgres"])
            .arg("postgres")
            .output()
            .unwrap();
        assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    };
    pgbench(&["-i", "-s", "2", "-q"]);

    // Writes go on during the whole migration: pgbench and the custom workload.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = start_workload(&source, stop.clone());
    let bench = {
        let (dir, port) = (source.socket_dir().display().to_string(), source.port.to_string());
        std::thread::spawn(move || {
            Command::new(pg_bindir().join("pgbench"))
                .args(["-c", "2", "-T", "12", "-n", "-h", &dir, "-p", &port, "-U", "postgres", "postgres"])
                .output()
                .unwrap()
        })
    };
    let mut running = migrate(&source, &target, "live", &["--jobs", "2", "--split-tables-larger-than", "16MB"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(120), "the full load to finish", || {
        target.migration_phase("live").as_deref() == Some("cdc")
    });
    assert!(bench.join().unwrap().status.success());
    stop.store(true, Ordering::Relaxed);
    let writes = workload.join().unwrap();
    assert!(writes > 10, "the workload ran during the migration ({writes} transactions)");
    source.execute("alter table \"Mixed Case\" add column later int default 7; update \"Mixed Case\" set later = 8 where \"Id\" < 10");
    std::thread::sleep(Duration::from_millis(500));
    terminate(&mut running);

    // Cutover: catch up, set sequences, validate (exit 0 only when every table matches).
    let out = cutover(&source, &target, "live", &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cutover: {report}\n{}", String::from_utf8_lossy(&out.stderr));
    let tables = user_tables(&source);
    assert!(report.contains(&format!("{} tables compared, 0 differ", tables.len())), "{report}");
    // An independent comparison agrees.
    assert_same_rows(&source, &target, &tables.iter().map(String::as_str).collect::<Vec<_>>());
    // Indexes and constraints came after the load; sequences continue past the source's.
    assert_eq!(target.value("select count(*) from pg_indexes where tablename = 'measurements_2024'"), "2");
    let src_seq: i64 = source.value("select last_value from measurements_id_seq").parse().unwrap();
    let tgt_next: i64 = target.value("select nextval('measurements_id_seq')").parse().unwrap();
    assert!(tgt_next > src_seq, "target sequence {tgt_next} must continue past the source's {src_seq}");
    assert_eq!(source.value("select count(*) from pg_replication_slots where slot_name = 'live'"), "0");
    // validate on its own, after a change made only on the target, names the row.
    target.execute("update \"Mixed Case\" set \"Value\" = 'tampered' where \"Id\" = 999999");
    let out = pgdms_apply()
        .args(["validate", "--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        report.contains("DIFFERS  \"public\".\"Mixed Case\"") && report.contains("different: (999999)"),
        "{report}"
    );
}

#[test]
fn a_full_load_killed_midway_resumes_with_only_the_unfinished_tables() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create extension pgdms");
    for i in 0..6 {
        source.execute(&format!(
            "create table t{i} (id int primary key, v text);
             insert into t{i} select g, md5(g::text) from generate_series(1, 300000) g"
        ));
    }
    let mut running = migrate(&source, &target, "crash", &["--jobs", "1"]).stderr(Stdio::null()).spawn().unwrap();
    wait_until(Duration::from_secs(60), "two tables loaded", || loaded_tables(&target) >= 2);
    running.kill().unwrap(); // SIGKILL, in the middle of the load
    running.wait().unwrap();
    assert_eq!(target.migration_phase("crash").as_deref(), Some("load"), "the crash must hit the load");
    let done_before: Vec<String> = target
        .query("select table_name from pgdms_apply.load_progress order by 1")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert!(done_before.len() < 6);

    // Changes while nothing runs, to loaded and unloaded tables alike; and an unloaded table
    // dropped and created again (its DDL is in the reload's snapshot: replaying it after the
    // reload would empty the copy).
    for i in 0..6 {
        source.execute(&format!(
            "update t{i} set v = 'changed' where id <= 10; delete from t{i} where id between 11 and 20;
             insert into t{i} values (400000, 'new')"
        ));
    }
    let unloaded =
        (0..6).map(|i| format!("t{i}")).find(|t| !done_before.contains(&format!("\"public\".\"{t}\""))).unwrap();
    source.execute(&format!(
        "drop table {unloaded}; create table {unloaded} (id int primary key, v text);
         insert into {unloaded} select g, 'recreated' from generate_series(1, 1000) g"
    ));
    let until = source.current_lsn();
    let out = migrate(&source, &target, "crash", &["--jobs", "2", "--until", &until]).output().unwrap();
    assert!(out.status.success(), "rerun: {}", String::from_utf8_lossy(&out.stderr));
    // The tables loaded before the crash were not loaded again.
    for t in &done_before {
        let at: String = target.value(&format!("select loaded_at < (select updated_at from pgdms_apply.migration) from pgdms_apply.load_progress where table_name = '{}'", t.replace('\'', "''")));
        assert_eq!(at, "t", "{t} was loaded again");
    }
    let tables: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    assert_same_rows(&source, &target, &tables.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn cdc_starts_where_asked_and_refuses_what_decoding_cannot_give() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key)");
    source.copy_schema_to(&target);
    source.create_slot("s");
    source.execute("insert into t values (1)");
    std::thread::sleep(Duration::from_millis(1100));
    let after_first = source.value("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    source.execute("insert into t values (2)");
    let until = source.current_lsn();
    let out =
        pgdms_tests::cdc(&source, &target, "s", &["--until", &until, "--start-time", &after_first]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(target.query("select id from t order by 1"), vec![vec![Some("2".into())]]);

    // Before the slot's confirmed position: decoding cannot go back.
    let out = pgdms_tests::cdc(&source, &target, "s", &["--until", &until, "--start-lsn", "0/10"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("before the slot's confirmed_flush_lsn"), "{stderr}");
    let out = pgdms_tests::cdc(&source, &target, "s", &["--start-time", "yesterday"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a time"));
}

#[test]
fn table_mappings_select_rename_and_remove_in_full_load_and_cdc() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute(
        "create extension pgdms;
         create table \"Orders\" (id int primary key, qty int, ssn text, note text);
         insert into \"Orders\" select i, i, 'secret' || i, 'n' from generate_series(1, 1000) i;
         create table keep1 (id int primary key, v text); insert into keep1 values (1, 'a');
         create table audit_log (id int primary key, what text); insert into audit_log values (1, 'x');",
    );
    let rules = r#"{"rules": [
        {"rule-type": "selection", "rule-id": "1", "rule-name": "1", "rule-action": "include",
         "object-locator": {"schema-name": "public", "table-name": "%"}},
        {"rule-type": "selection", "rule-id": "2", "rule-name": "2", "rule-action": "exclude",
         "object-locator": {"schema-name": "public", "table-name": "audit%"}},
        {"rule-type": "transformation", "rule-id": "3", "rule-name": "3", "rule-target": "table",
         "object-locator": {"schema-name": "public", "table-name": "Orders"}, "rule-action": "rename", "value": "Sales"},
        {"rule-type": "transformation", "rule-id": "4", "rule-name": "4", "rule-target": "schema",
         "object-locator": {"schema-name": "public"}, "rule-action": "rename", "value": "app"},
        {"rule-type": "transformation", "rule-id": "5", "rule-name": "5", "rule-target": "column",
         "object-locator": {"schema-name": "%", "table-name": "%", "column-name": "ssn"}, "rule-action": "remove-column"},
        {"rule-type": "transformation", "rule-id": "6", "rule-name": "6", "rule-target": "column",
         "object-locator": {"schema-name": "public", "table-name": "Orders", "column-name": "qty"},
         "rule-action": "rename", "value": "quantity"}
    ]}"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mappings.json");
    std::fs::write(&file, rules).unwrap();
    let file = file.display().to_string();

    let until = source.current_lsn();
    let out = migrate(&source, &target, "mapped", &["--table-mappings", &file, "--until", &until]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Changes after the load: to a renamed table, a kept one, and an excluded one.
    source.execute(
        "update \"Orders\" set qty = qty * 10, ssn = 'changed' where id <= 5; delete from \"Orders\" where id = 6;
         insert into \"Orders\" values (5000, 1, 'x', 'new'); insert into keep1 values (2, 'b');
         insert into audit_log values (2, 'y'); alter table \"Orders\" add column extra int default 1",
    );
    let out = cutover(&source, &target, "mapped", &["--table-mappings", &file]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("\"public\".\"Orders\" -> \"app\".\"Sales\"") && report.contains("0 differ"), "{report}");

    let columns = target.query(
        "select table_schema || '.' || table_name || '.' || column_name from information_schema.columns
          where table_schema in ('public', 'app') order by 1",
    );
    let columns: Vec<String> = columns.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        columns,
        ["app.Sales.extra", "app.Sales.id", "app.Sales.note", "app.Sales.quantity", "app.keep1.id", "app.keep1.v"],
        "excluded table gone, ssn removed, qty renamed, tables in schema app"
    );
    assert_eq!(
        target.rows("app.\"Sales\""),
        source.rows("(select id, qty, note, extra from \"Orders\")"),
        "rows of the renamed table, without the removed column"
    );
    assert_eq!(target.rows("app.keep1"), source.rows("keep1"));
}
