//! Table-level error handling: a table the target refuses stops the migration naming it
//! (keeping what was loaded), or with `--on-table-error suspend` is set aside while every
//! other table loads and streams on; `--reload-table` then brings it back, handing over to
//! CDC exactly, while the source is written.

use pgdms_tests::{assert_same_rows, between, pgdms_apply, wait_until, Cluster, Running};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SLOT: &str = "picky";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `migrate` of the test's migration, with `extra` options.
fn migrate(source: &Cluster, target: &Cluster, extra: &[&str]) -> Command {
    let mut c = between("migrate", source, target, SLOT, &["--target-prep", "truncate", "--jobs", "1"]);
    c.args(extra);
    c
}

/// Stops a streaming migrate with SIGTERM; its output.
fn stop(mut running: Running) -> (std::process::ExitStatus, String) {
    Command::new("kill").args(["-TERM", &running.id().to_string()]).status().unwrap();
    let status = running.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(running.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn validate(source: &Cluster, target: &Cluster) -> Output {
    pgdms_apply()
        .args(["validate", "--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
        .output()
        .unwrap()
}

fn suspended(target: &Cluster) -> Vec<Vec<Option<String>>> {
    target.query(&format!(
        "select table_name, suspended_in, changes_passed_over::text from pgdms_apply.suspended_table
          where slot_name = '{SLOT}' order by 1"
    ))
}

/// Waits until the target holds what the source holds in `table`.
fn wait_same(source: &Cluster, target: &Cluster, table: &str) {
    wait_until(Duration::from_secs(60), &format!("{table} to catch up"), || source.rows(table) == target.rows(table));
}

#[test]
fn a_refused_table_stops_or_is_suspended_and_a_reload_brings_it_back() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    // `good` is the largest, so one job loads it first; `picky` has rows the target's check
    // refuses; `refs` has a foreign key to `picky`, so a reload cannot truncate it.
    source.execute(
        "create table good (id int primary key, v text);
         create table picky (id int primary key, n int);
         create table refs (id int primary key, picky_id int references picky);
         insert into good select i, repeat('g', 200) from generate_series(1, 3000) i;
         insert into picky select i, i from generate_series(1, 100) i;
         insert into refs select i, i from generate_series(1, 50) i;",
    );
    source.copy_schema_to(&target);
    source.execute("create extension pgdms");
    target.execute_as_target("alter table picky add constraint n_small check (n < 90)");

    // Stop (the default): the table is named, what was loaded stays.
    let out = migrate(&source, &target, &[]).output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("\"public\".\"picky\"") && said.contains("n_small"), "names the table and why: {said}");
    assert!(said.contains("run the same command"), "says how to go on: {said}");
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(target.value("select count(*) from good"), "3000", "what was loaded stays");
    assert_eq!(
        target.value("select count(*) from pgdms_apply.load_progress where table_name = '\"public\".\"good\"'"),
        "1"
    );

    // Suspend: the rerun resumes the load, sets picky aside, loads the rest and streams.
    let running = Running::spawn(
        migrate(&source, &target, &["--on-table-error", "suspend"]).stdout(Stdio::null()).stderr(Stdio::piped()),
    );
    wait_until(Duration::from_secs(60), "the load to finish", || {
        target.migration_phase(SLOT).as_deref() == Some("cdc")
    });
    source.execute(
        "insert into good values (5001, 'new'); update good set v = 'u' where id = 1;
         insert into picky values (1001, 1); update picky set n = 2 where id = 2; delete from picky where id = 95;
         insert into refs values (1001, 1001);",
    );
    wait_same(&source, &target, "good");
    wait_same(&source, &target, "refs");
    let (status, stderr) = stop(running);
    assert_eq!(status.code(), Some(3), "the exit status says tables are suspended: {stderr}");
    assert!(stderr.contains("1 table of migration") && stderr.contains("\"public\".\"picky\""), "{stderr}");
    assert!(stderr.contains("--reload-table"), "says how to recover: {stderr}");
    let rows = suspended(&target);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][1].as_deref(), Some("load"));
    assert_eq!(rows[0][2].as_deref(), Some("3"), "its three changes were passed over and counted");

    let out = validate(&source, &target);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("SUSPENDED  \"public\".\"picky\""), "{report}");
    assert!(report.contains("ok       \"public\".\"good\""), "{report}");

    // A reload cannot run beside the apply that streams from the slot.
    let running = Running::spawn(
        migrate(&source, &target, &["--on-table-error", "suspend"]).stdout(Stdio::null()).stderr(Stdio::piped()),
    );
    wait_until(Duration::from_secs(30), "the apply to stream", || {
        source.value(&format!("select active from pg_replication_slots where slot_name = '{SLOT}'")) == "t"
    });
    let out = migrate(&source, &target, &["--reload-table", "public.picky"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("Stop it"), "{}", text(&out));
    let (status, _) = stop(running);
    assert_eq!(status.code(), Some(3));
    // A name that matches nothing reloads nothing.
    let out = migrate(&source, &target, &["--reload-table", "public.pciky"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("no table of that name"), "{}", text(&out));

    // Fixed on the target, then reloaded while the source is written: handed over exactly.
    target.execute_as_target("alter table picky drop constraint n_small");
    let running = Running::spawn(
        migrate(&source, &target, &["--on-table-error", "suspend", "--reload-table", "public.pick%"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    for round in 0..40 {
        source.execute(&format!(
            "insert into picky values ({id}, {round}); update picky set n = n + 1 where id = {round} + 10;
             delete from picky where id = {round} + 60; insert into refs values ({id}, {id});",
            id = 2000 + round
        ));
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_until(Duration::from_secs(60), "the reload to finish", || suspended(&target).is_empty());
    wait_same(&source, &target, "picky");
    let (status, stderr) = stop(running);
    assert!(status.success(), "nothing is suspended any more: {status}: {stderr}");
    assert_same_rows(&source, &target, &["good", "picky", "refs"]);

    // A change the target refuses during CDC suspends its table there; the rest streams on.
    let running = Running::spawn(
        migrate(&source, &target, &["--on-table-error", "suspend"]).stdout(Stdio::null()).stderr(Stdio::piped()),
    );
    target.execute_as_target("alter table good add constraint no_bad check (v <> 'bad') not valid");
    source.execute("insert into good values (6001, 'fine'), (6002, 'bad'); insert into refs values (6001, 1)");
    source.execute("update good set v = 'later' where id = 2; insert into picky values (6001, 1)");
    wait_same(&source, &target, "picky");
    wait_same(&source, &target, "refs");
    let (status, stderr) = stop(running);
    assert_eq!(status.code(), Some(3), "{stderr}");
    let rows = suspended(&target);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Two inserts in the refused transaction, one update after it.
    assert_eq!((rows[0][1].as_deref(), rows[0][2].as_deref()), (Some("cdc"), Some("3")), "{rows:?}");
    assert!(rows[0][0].as_deref().is_some_and(|n| n.contains("good")), "{rows:?}");
    assert_eq!(target.value("select count(*) from good where id in (6001, 6002)"), "0", "its group rolled back whole");

    target.execute_as_target("alter table good drop constraint no_bad");
    let until = source.current_lsn();
    let out = migrate(&source, &target, &["--reload-table", "public.good", "--until", &until]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_same_rows(&source, &target, &["good", "picky", "refs"]);
    let out = validate(&source, &target);
    assert!(out.status.success() && text(&out).contains("3 tables compared, 0 differ"), "{}", text(&out));
}
