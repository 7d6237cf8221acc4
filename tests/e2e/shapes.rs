//! Every table shape a PostgreSQL database can hold, migrated live (full load, then CDC) into
//! a PostgreSQL target and validated: no columns, generated columns only, dropped columns,
//! 1,600 columns, names of 63 bytes full of quotes, dots, spaces and newlines, inheritance,
//! partitions three levels deep with default partitions, rules and triggers (which must not
//! fire on the target during the apply), and a table created, filled and dropped inside one
//! transaction during CDC. An unlogged table, whose changes never reach the WAL, is named as
//! not migrated rather than passed over in silence.

use pgdms_tests::{assert_same_rows, pgdms_apply, wait_until, Cluster, Running};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A name of NAMEDATALEN-1 (63) bytes, with every character that needs quoting.
fn long_name(tag: char) -> String {
    let base = format!("{tag} \"q\".dot\nline 'x' ");
    let mut name = base.clone();
    while name.len() < 63 {
        name.push(tag);
    }
    name.truncate(63);
    name
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The shapes, each with some rows.
fn create_shapes(source: &Cluster, schema: &str, table: &str, column: &str) {
    let wide_columns: Vec<String> = (1..=1600).map(|i| format!("c{i} int")).collect();
    source.execute(&format!(
        "create extension pgdms;
         create table nocols ();
         insert into nocols default values; insert into nocols default values; insert into nocols default values;
         create table gen_only (nb int generated always as (1) stored, twice int generated always as (2) stored);
         insert into gen_only default values; insert into gen_only default values;
         create table drop_first (a int, id int primary key, v text);
         create table drop_last (id int primary key, v text, z int);
         create table drop_all_but_one (a int, id int primary key, b text, c date);
         insert into drop_first select i, i, 'f' || i from generate_series(1, 100) i;
         insert into drop_last select i, 'l' || i, i from generate_series(1, 100) i;
         insert into drop_all_but_one select i, i, 'b', current_date from generate_series(1, 100) i;
         alter table drop_first drop column a;
         alter table drop_last drop column z;
         alter table drop_all_but_one drop column a, drop column b, drop column c;
         create table wide ({wide}, primary key (c1));
         insert into wide (c1, c800, c1600) select i, i * 2, i * 3 from generate_series(1, 50) i;
         create schema {schema};
         create table {schema}.{table} (id int primary key, {column} text);
         insert into {schema}.{table} select i, 'odd ' || i from generate_series(1, 20) i;
         create table parent (id int primary key, v text);
         create table child (extra int) inherits (parent); alter table child add primary key (id);
         insert into parent select i, 'p' from generate_series(1, 50) i;
         insert into child select i, 'c', i from generate_series(51, 100) i;
         create table m (id int, at date not null, device int not null, v text, primary key (id, at, device))
           partition by range (at);
         create table m_2024 partition of m for values from ('2024-01-01') to ('2025-01-01') partition by list (device);
         create table m_2024_low partition of m_2024 for values in (1, 2, 3) partition by range (id);
         create table m_2024_low_a partition of m_2024_low for values from (0) to (1000);
         create table m_2024_low_rest partition of m_2024_low default;
         create table m_2024_other partition of m_2024 default;
         create table m_default partition of m default;
         insert into m select i, date '2023-06-01' + (i % 900), i % 6, 'm' from generate_series(1, 3000) i;
         create table trig (id int primary key, v text);
         create table trig_log (n bigserial primary key, id int, what text);
         create function log_trig() returns trigger language plpgsql as
           $f$ begin insert into trig_log (id, what) values (new.id, tg_op); return new; end $f$;
         create trigger trig_logs after insert or update on trig for each row execute function log_trig();
         create table ruled (id int primary key, v text);
         create table rule_log (id int, v text);
         create rule ruled_logs as on insert to ruled do also insert into rule_log values (new.id, new.v);
         insert into trig select i, 't' from generate_series(1, 10) i;
         insert into ruled select i, 'r' from generate_series(1, 10) i;
         create unlogged table scratch (id int primary key, v text);
         insert into scratch select i, 's' from generate_series(1, 10) i;",
        wide = wide_columns.join(", ")
    ));
}

/// Changes to every shape: during the load, and again once CDC runs.
fn change_shapes(source: &Cluster, round: i32, schema: &str, table: &str, column: &str) {
    let k = 1000 * round;
    source.execute(&format!(
        "insert into nocols default values; delete from nocols where ctid = (select min(ctid) from nocols);
         insert into gen_only default values;
         insert into drop_first values ({k}, 'new'); update drop_first set v = 'u{round}' where id = {round};
         delete from drop_first where id = 10 + {round};
         insert into drop_last values ({k}, 'new'); update drop_last set v = 'u{round}' where id = {round};
         insert into drop_all_but_one values ({k}); delete from drop_all_but_one where id = 20 + {round};
         insert into wide (c1, c2, c1600) values ({k}, 2, 1600); update wide set c1599 = {round} where c1 = {round};
         delete from wide where c1 = 30 + {round};
         insert into {schema}.{table} values ({k}, 'new'); update {schema}.{table} set {column} = 'u' where id = {round};
         insert into parent values ({k}, 'p'); insert into child values ({k} + 1, 'c', 1);
         update parent set v = 'via parent {round}' where id in ({round}, 50 + {round});
         delete from parent where id in (20 + {round}, 70 + {round});
         insert into m values ({k}, '2024-02-01', 1, 'low a'), ({k} + 1, '2024-02-01', 2, 'low rest'),
                              ({k} + 2, '2024-03-01', 5, 'other'), ({k} + 3, '2030-01-01', 1, 'default');
         update m set v = 'moved', at = '2024-05-05' where id = {round} + 100;
         insert into trig values ({k}, 'new'); update trig set v = 'u' where id = {round};
         insert into ruled values ({k}, 'new');
         insert into scratch values ({k}, 'lost');"
    ));
}

#[test]
fn every_table_shape_loads_replicates_and_validates() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    let (schema, table, column) = (long_name('s'), long_name('t'), long_name('c'));
    let (qs, qt, qc) = (quoted(&schema), quoted(&table), quoted(&column));
    create_shapes(&source, &qs, &qt, &qc);

    let mut running = Running::spawn(
        pgdms_tests::between("migrate", &source, &target, "shapes", &["--jobs", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    change_shapes(&source, 1, &qs, &qt, &qc);
    wait_until(Duration::from_secs(120), "the full load to finish", || {
        if let Ok(Some(status)) = running.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(running.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("migrate exited with {status} during the load: {err}");
        }
        target.migration_phase("shapes").as_deref() == Some("cdc")
    });
    change_shapes(&source, 2, &qs, &qt, &qc);
    // Created, filled and dropped inside one transaction, while CDC runs.
    source.execute(
        "begin; create table fleeting (id int primary key, v text); insert into fleeting values (1, 'x');
         update fleeting set v = 'y'; insert into drop_last values (5000, 'beside fleeting'); drop table fleeting; commit",
    );
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill").args(["-TERM", &running.id().to_string()]).status().unwrap();
    let status = running.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(running.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "migrate: {status}: {stderr}");
    assert!(
        stderr.contains("not migrated") && stderr.contains("\"public\".\"scratch\"") && stderr.contains("unlogged"),
        "the migration names the unlogged table it does not migrate: {stderr}"
    );

    let out = pgdms_apply()
        .args(["cutover", "--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
        .args(["--slot", "shapes", "--drop-slot"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cutover: {report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains(", 0 differ"), "{report}");
    assert!(
        report.contains("NOT MIGRATED") && report.contains("\"public\".\"scratch\"") && report.contains("unlogged"),
        "validate names the unlogged table: {report}"
    );

    let long = format!("{qs}.{qt}");
    let tables = [
        "nocols",
        "gen_only",
        "drop_first",
        "drop_last",
        "drop_all_but_one",
        "wide",
        long.as_str(),
        "only parent",
        "child",
        "m",
        "m_2024_low_a",
        "m_2024_low_rest",
        "m_2024_other",
        "m_default",
        "trig",
        "trig_log",
        "ruled",
        "rule_log",
    ];
    assert_same_rows(&source, &target, &tables);
    // The counts that make the comparison mean something.
    assert_eq!(target.value("select count(*) from nocols"), "3");
    assert_eq!(target.value("select count(*) from gen_only"), "4");
    assert_eq!(target.value("select sum(twice) from gen_only"), "8");
    // The target's trigger and rule did not fire during the apply: their rows came from the
    // source, once.
    assert_eq!(target.value("select count(*) from trig_log"), source.value("select count(*) from trig_log"));
    assert_eq!(target.value("select count(*) from rule_log"), "12");
    assert_eq!(target.value("select to_regclass('fleeting') is null"), "t");
}
