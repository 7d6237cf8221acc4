//! Operator mistakes and bad input: each is refused with a message that says what to do,
//! a non-zero exit, and no panic; none loses data. The same database as source and target,
//! out-of-range numbers, unknown target kinds, wrong connection strings, and a stop (SIGINT)
//! in the middle of a long table copy.

use pgdms_tests::{assert_same_rows, pgdms_apply, wait_until, Cluster, Running};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_same_database_on_both_sides_is_refused_before_anything_is_created() {
    let db = Cluster::start();
    db.execute("create extension pgdms; create table t (id int primary key); insert into t values (1)");
    // Reached by two paths: the socket and TCP.
    let tcp = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", db.port);
    for sub in ["migrate", "cdc"] {
        let out = pgdms_apply()
            .args([sub, "--source", &db.conninfo("postgres"), "--target", &tcp, "--slot", "self"])
            .output()
            .unwrap();
        let said = text(&out);
        assert!(!out.status.success(), "{sub}: {said}");
        assert!(said.contains("the target is the source itself") && !said.contains("panicked"), "{sub}: {said}");
    }
    assert_eq!(db.value("select count(*) from pg_replication_slots"), "0", "no slot created");
    assert_eq!(
        db.value(
            "select to_regclass('pgdms_apply.migration') is null and to_regclass('pgdms_apply.apply_progress') is null"
        ),
        "t"
    );
    // Another database of the same server is another database.
    db.make_target();
    db.execute(&format!("create database other owner {}", pgdms_tests::TARGET_ROLE));
    let out = pgdms_apply()
        .args(["migrate", "--source", &db.conninfo("postgres"), "--target", &db.target_conninfo("other")])
        .args(["--slot", "to_other", "--mode", "full-load"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.connect("other").query_one("select count(*) from t", &[]).unwrap().get::<_, i64>(0), 1);
}

#[test]
fn bad_command_lines_and_connection_strings_say_what_to_do() {
    let db = Cluster::start();
    let source = db.conninfo("postgres");
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // nothing listens there once the listener is gone
    let refused = format!("host=127.0.0.1 port={closed_port} user=postgres dbname=postgres");
    let no_db = format!("host={} port={} user=postgres dbname=postgress", db.socket_dir().display(), db.port);
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["migrate", "--source", &source, "--target", "sqlite:x.db", "--slot", "s", "--jobs", "0"],
            &["--jobs", "1 or more"],
        ),
        (
            vec!["migrate", "--source", &source, "--target", "sqlite:x.db", "--slot", "s", "--jobs", "many"],
            &["--jobs", "not a whole number"],
        ),
        (
            vec!["cdc", "--source", &source, "--target", "sqlite:x.db", "--slot", "s", "--group-max-rows", "0"],
            &["--group-max-rows", "1 or more"],
        ),
        (
            vec!["cdc", "--source", &source, "--target", "sqlite:x.db", "--slot", "s", "--batch-max-rows", "0"],
            &["--batch-max-rows"],
        ),
        (
            vec!["cdc", "--source", &source, "--target", "sqlite:x.db", "--slot", "s", "--group-max-ms", "0"],
            &["--group-max-ms"],
        ),
        (vec!["migrate", "--source", &source, "--target", "sqllite:app.db", "--slot", "s"], &["sqlite:", "mysql://"]),
        (
            vec!["migrate", "--source", &source, "--target", "dbname=x bogus=1", "--slot", "s"],
            &["invalid connection option"],
        ),
        (
            vec!["migrate", "--source", "hots=db", "--target", "sqlite:x.db", "--slot", "s"],
            &["--source", "did you mean \"host\""],
        ),
        (
            vec!["migrate", "--source", &no_db, "--target", "sqlite:x.db", "--slot", "s"],
            &["the source", "\"postgress\" does not exist"],
        ),
        (
            vec!["migrate", "--source", &source, "--target", &no_db, "--slot", "s"],
            &["the target", "\"postgress\" does not exist"],
        ),
        (
            vec!["cdc", "--source", &refused, "--target", "sqlite:x.db", "--slot", "s"],
            &["the source", "onnection refused"],
        ),
        (vec!["slot", "list", "--source", &refused], &["the source", "onnection refused"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (args, wanted) in cases {
        let started = Instant::now();
        let out = pgdms_apply().args(&args).current_dir(dir.path()).output().unwrap();
        eprintln!("{args:?}: {:?}", started.elapsed());
        let said = text(&out);
        assert!(!out.status.success(), "{args:?} must fail: {said}");
        assert!(!said.contains("panicked at"), "{args:?} panicked: {said}");
        for w in wanted {
            assert!(said.contains(w), "{args:?}: the message must say {w:?}: {said}");
        }
        // Each cause once: no line says the same thing twice over.
        for line in said.lines() {
            for part in line.split(": ").filter(|p| p.len() > 12) {
                assert_eq!(line.matches(part).count(), 1, "{args:?}: {part:?} said twice in {line:?}");
            }
        }
    }
}

#[test]
fn a_stop_during_a_long_table_copy_exits_within_seconds_and_the_rerun_resumes_exactly() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute(
        "create extension pgdms;
         create table small (id int primary key, v text); insert into small select i, 's' from generate_series(1, 100) i;
         create table big (id int primary key, v text, w text);
         insert into big select i, md5(i::text), repeat(md5(i::text), 4) from generate_series(1, 3000000) i;",
    );
    let mut running = Running::spawn(
        pgdms_tests::between("migrate", &source, &target, "stop", &["--jobs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_until(Duration::from_secs(60), "the copy of big to start", || {
        target.value("select count(*) from pg_stat_activity where query ilike 'copy%big%'") != "0"
    });
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    Command::new("kill").args(["-INT", &running.id().to_string()]).status().unwrap();
    let status = loop {
        if let Some(status) = running.try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "still running 5 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(running.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "a stop is not a failure: {status}: {stderr}");
    assert_eq!(target.migration_phase("stop").as_deref(), Some("load"), "stopped inside the load: {stderr}");
    assert_eq!(target.value("select count(*) from big"), "0", "the interrupted copy rolled back");

    source.execute("update big set v = 'changed' where id <= 10; delete from small where id = 1");
    let until = source.current_lsn();
    let out = pgdms_tests::between("migrate", &source, &target, "stop", &["--until", &until]).output().unwrap();
    assert!(out.status.success(), "rerun: {}", text(&out));
    assert_same_rows(&source, &target, &["small", "big"]);
}

#[test]
fn a_dump_of_a_migrations_slot_leaves_it_where_it_was_unless_asked() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key)");
    source.copy_schema_to(&target);
    source.create_slot("owned");
    let confirmed =
        || source.value("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'owned'");
    let before = confirmed();
    source.execute("insert into t values (1)");
    // Looked at: printed, not confirmed.
    let records = source.dump("owned", &[]);
    assert!(records.iter().any(|r| r["type"] == "insert"), "{records:?}");
    assert_eq!(confirmed(), before, "a dump without --ack moved the slot");
    // The migration's apply still gets the change.
    pgdms_tests::catch_up(&source, &target, "owned", &[]);
    assert_eq!(target.value("select count(*) from t"), "1");
    // With --ack, the slot moves past what was printed.
    let caught_up = confirmed();
    source.execute("insert into t values (2)");
    let _ = source.dump("owned", &["--ack"]);
    let after = confirmed();
    assert!(!pgdms_tests::lsn_ge(&caught_up, &after), "--ack confirms what it printed: {caught_up} then {after}");
}

#[test]
fn a_cutover_while_the_source_is_still_written_says_so() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create extension pgdms; create table t (id bigserial primary key, v text)");
    let until = source.current_lsn();
    let out = pgdms_tests::between("migrate", &source, &target, "busy", &["--until", &until]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // A writer that does not stop for the cutover.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, mut client) = (stop.clone(), source.connect("postgres"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.batch_execute("insert into t (v) select 'late' from generate_series(1, 100)").unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = pgdms_apply()
        .args(["cutover", "--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
        .args(["--slot", "busy"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "the tables differ: {said}");
    assert!(said.contains("the source was written while the cutover ran"), "{said}");
}

#[test]
fn a_slot_advanced_behind_the_applys_back_is_refused_and_an_idle_stream_is_not_taken_for_that() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key)");
    source.execute("create database other");
    source.copy_schema_to(&target);
    source.create_slot("s");
    let confirmed = || source.value("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 's'");
    source.execute("insert into t values (1)");
    pgdms_tests::catch_up(&source, &target, "s", &[]);
    let caught_up = confirmed();

    // An idle stream: the WAL moves on (another database is written) with nothing to apply.
    // The apply confirms that idle position, and records it on the target first.
    let mut running = Running::spawn(pgdms_tests::cdc(&source, &target, "s", &[]).stderr(Stdio::piped()));
    let mut other = source.connect("other");
    other.batch_execute("create table x (a int)").unwrap();
    wait_until(Duration::from_secs(30), "the idle position confirmed", || {
        other.batch_execute("insert into x select generate_series(1, 100)").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        !pgdms_tests::lsn_ge(&caught_up, &confirmed())
    });
    Command::new("kill").args(["-TERM", &running.id().to_string()]).status().unwrap();
    assert!(running.wait().unwrap().success());
    // ...which a restart does not take for someone else's doing.
    source.execute("insert into t values (2)");
    pgdms_tests::catch_up(&source, &target, "s", &[]);
    assert_eq!(target.value("select count(*) from t"), "2");

    // Changes confirmed behind the apply's back, by dump --ack and by SQL, are refused.
    for (n, advance) in [(3, "dump"), (4, "sql")] {
        source.execute(&format!("insert into t values ({n})"));
        match advance {
            "dump" => {
                source.dump("s", &["--ack"]);
            }
            _ => source.execute("select count(*) from pg_logical_slot_get_binary_changes('s', null, null)"),
        }
        let until = source.current_lsn();
        let out = pgdms_tests::cdc(&source, &target, "s", &["--until", &until]).output().unwrap();
        let said = text(&out);
        assert!(!out.status.success(), "{advance}: {said}");
        assert!(said.contains("was advanced past what the target holds"), "{advance}: {said}");
        assert_eq!(target.value("select count(*) from t"), "2", "{advance}: nothing changed on the target");
        // The way on that the message gives, for a user who knows what was skipped.
        let at = confirmed();
        let out = pgdms_tests::cdc(&source, &target, "s", &["--until", &until, "--start-lsn", &at]).output().unwrap();
        assert!(out.status.success(), "{advance}: {}", text(&out));
    }
}

#[test]
fn a_migrations_slot_advanced_before_its_first_change_was_applied_is_refused() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key, n int); insert into t values (1, 100)");
    source.copy_schema_to(&target);
    source.execute("create extension pgdms");
    // The load stops on a row the target refuses: the slot exists, nothing was streamed.
    target.execute_as_target("alter table t add constraint small check (n < 10)");
    let migrate = || pgdms_tests::between("migrate", &source, &target, "first", &["--target-prep", "truncate"]);
    let out = migrate().output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(target.migration_phase("first").as_deref(), Some("load"));
    // A change, consumed behind the migration's back before its first session.
    source.execute("insert into t values (2, 1)");
    source.dump("first", &["--ack"]);
    target.execute_as_target("alter table t drop constraint small");
    let until = source.current_lsn();
    let out = migrate().args(["--until", &until]).output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("was advanced past what the target holds"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn a_slot_advanced_behind_a_sqlite_targets_back_is_refused() {
    let source = Cluster::start();
    source.execute("create extension pgdms; create table t (id int primary key); insert into t values (1)");
    let dir = tempfile::tempdir().unwrap();
    let target = format!("sqlite:{}", dir.path().join("t.db").display());
    let migrate = |until: &str| {
        pgdms_apply()
            .args(["migrate", "--source", &source.conninfo("postgres"), "--target", &target, "--slot", "lite"])
            .args(["--until", until])
            .output()
            .unwrap()
    };
    let out = migrate(&source.current_lsn());
    assert!(out.status.success(), "{}", text(&out));
    // Caught up and idle: a rerun is not refused.
    let out = migrate(&source.current_lsn());
    assert!(out.status.success(), "{}", text(&out));
    source.execute("insert into t values (2)");
    source.dump("lite", &["--ack"]);
    let out = migrate(&source.current_lsn());
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("was advanced past what the target holds"), "{said}");
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let rows: i64 = db.query_row("select count(*) from t", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 1, "nothing changed on the target");
}
