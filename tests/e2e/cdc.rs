//! `pgdms-apply cdc` into a PostgreSQL target: exactly once, through crashes, restarts and
//! disconnects, on real clusters.

use pgdms_tests::matrix::{setup_matrix, ROWS};
use pgdms_tests::{assert_same_rows, catch_up, cdc, wait_until, Cluster};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn progress(target: &Cluster) -> Option<String> {
    target.query("select end_lsn::text from pgdms_apply.apply_progress").into_iter().next().and_then(|r| r[0].clone())
}

const MIXED_TABLES: &[&str] = &["matrix", "accounts", "docs", "events", "ident", "swap", "gone"];

fn mixed_schema(source: &Cluster) {
    setup_matrix(source);
    source.execute(
        "create table accounts (id int primary key, balance numeric(12,2), note text);
         create table docs (id int primary key, rev int, body text);
         alter table docs alter column body set storage external;
         create table events (at timestamptz, kind text, payload jsonb, code char(5), span tstzrange);
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
         insert into events values ('2024-01-01', 'a', '{\"x\": 1}', 'ab', '[2024-01-01 10:00+02,)'),
                                   ('2024-01-01', 'a', '{\"x\": 1}', 'ab', '[2024-01-01 10:00+02,)'),
                                   ('2024-01-02', 'b', null, 'c', null);
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
    let (source, target, one_by_one) = (Cluster::start(), Cluster::start_target(), Cluster::start_target());
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
    let (source, target) = (Cluster::start(), Cluster::start_target());
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
fn a_terminated_walsender_and_restarted_servers_are_survived_and_sigterm_stops_cleanly() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
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
        if i == 750 {
            source.restart();
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
    let (source, target) = (Cluster::start(), Cluster::start_target());
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
        target.query("select table_name, operation, key::text, error from pgdms_apply.apply_exceptions order by id");
    assert_eq!(exceptions.len(), 2, "{exceptions:?}");
    assert_eq!(exceptions[0][0].as_deref(), Some("\"public\".\"t\""));
    assert_eq!(exceptions[0][2].as_deref(), Some("{\"id\": \"5\"}"));
    assert_eq!(exceptions[1][1].as_deref(), Some("update"));
    assert!(exceptions[1][3].as_deref().unwrap().contains("REPLICA IDENTITY FULL"));
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tls_verify_full_and_a_scram_replication_role_that_is_not_a_superuser() {
    // A CA, a server certificate for "localhost" only, and a CA the client does not trust.
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    let ca = ["req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=pgdms test CA"];
    openssl(dir, &[&ca[..], &["-keyout", "ca.key", "-out", "ca.crt"]].concat());
    openssl(dir, &[&ca[..], &["-keyout", "other.key", "-out", "other.crt"]].concat());
    openssl(dir, &["req", "-new", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        ],
    );

    let source = Cluster::builder()
        .setting("ssl", "on")
        .setting("ssl_cert_file", "'server.crt'")
        .setting("ssl_key_file", "'server.key'")
        .file("server.crt", std::fs::read(dir.join("server.crt")).unwrap())
        .file("server.key", std::fs::read(dir.join("server.key")).unwrap())
        .hba(&[
            "local all all trust",
            "local replication all trust",
            "hostnossl all all 127.0.0.1/32 reject",
            "hostssl all repl 127.0.0.1/32 scram-sha-256",
        ])
        .start();
    let target = Cluster::start_target();
    source.execute("create role repl login replication password 'secret'; create table t (id int primary key, v text)");
    source.copy_schema_to(&target);
    source.create_slot("tls");
    source.execute(
        "insert into t select i, md5(i::text) from generate_series(1, 100) i; update t set v = 'u' where id < 10",
    );

    let ca_crt = dir.join("ca.crt").display().to_string();
    let other_crt = dir.join("other.crt").display().to_string();
    let conn = |host: &str, extra: &str| {
        format!(
            "host={host} port={} user=repl dbname=postgres sslmode=verify-full sslrootcert={ca_crt} {extra}",
            source.port
        )
    };
    let run = |src: &str, password: Option<&str>| {
        let until = source.current_lsn();
        let mut c = pgdms_tests::pgdms_apply();
        c.args([
            "cdc",
            "--source",
            src,
            "--target",
            &target.target_conninfo("postgres"),
            "--slot",
            "tls",
            "--until",
            &until,
        ]);
        if let Some(p) = password {
            c.env("PGPASSWORD", p);
        }
        c.output().unwrap()
    };
    let failure = |src: &str, password: Option<&str>| {
        let out = run(src, password);
        assert!(!out.status.success(), "{src} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // verify-full against the certificate's name, SCRAM with PGPASSWORD.
    let out = run(&conn("localhost", ""), Some("secret"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_rows(&source, &target, &["t"]);

    // The name does not match: verify-full refuses, verify-ca (chain only) accepts.
    assert!(failure(&conn("127.0.0.1", ""), Some("secret")).contains("TLS"));
    let ca_only = conn("127.0.0.1", "").replace("verify-full", "verify-ca");
    assert!(run(&ca_only, Some("secret")).status.success());
    // A CA that did not sign the server's certificate.
    let untrusted = conn("localhost", "").replace(&ca_crt, &other_crt);
    assert!(failure(&untrusted, Some("secret")).contains("TLS"));
    // A wrong password, and no TLS at all.
    assert!(failure(&conn("localhost", "password=wrong"), None).contains("password authentication failed"));
    let plain = conn("localhost", "").replace("sslmode=verify-full", "sslmode=disable");
    assert!(failure(&plain, Some("secret")).contains("no encryption"));
    // require and prefer encrypt without checking the certificate (no root certificate).
    for mode in ["require", "prefer"] {
        let unchecked = format!("host=127.0.0.1 port={} user=repl dbname=postgres sslmode={mode}", source.port);
        assert!(run(&unchecked, Some("secret")).status.success(), "sslmode={mode}");
    }
}

#[test]
fn password_and_md5_authentication() {
    let source = Cluster::builder()
        .hba(&[
            "local all all trust",
            "host all md5user 127.0.0.1/32 md5",
            "host all pwuser 127.0.0.1/32 password",
            "host all all 127.0.0.1/32 reject",
        ])
        .start();
    source.execute(
        "set password_encryption = 'md5'; create role md5user login replication password 'm5';
         reset password_encryption; create role pwuser login replication password 'pw';",
    );
    for (user, password) in [("md5user", "m5"), ("pwuser", "pw")] {
        let src = format!("postgresql://{user}:{password}@127.0.0.1:{}/postgres?sslmode=disable", source.port);
        let out = pgdms_tests::pgdms_apply().args(["slot", "list", "--source", &src]).output().unwrap();
        assert!(out.status.success(), "{user}: {}", String::from_utf8_lossy(&out.stderr));
        let bad = src.replace(&format!(":{password}@"), ":nope@");
        let out = pgdms_tests::pgdms_apply().args(["slot", "list", "--source", &bad]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"), "{user}");
    }
}

#[test]
fn a_5m_row_transaction_applies_in_bounded_memory() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table big (id int primary key, v text)");
    source.copy_schema_to(&target);
    source.create_slot("big");
    source.execute("insert into big select i, 'row ' || i from generate_series(1, 5000000) i");
    let until = source.current_lsn();
    let mut child = cdc(&source, &target, "big", &["--until", &until]).stderr(Stdio::piped()).spawn().unwrap();
    // VmHWM: the peak resident size so far; read until the process exits.
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)) {
                peak_kb = peak_kb.max(kb.parse().unwrap_or(0));
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(peak_kb > 0, "the peak resident size was read");
    eprintln!("5M-row transaction: peak resident size {} MB", peak_kb / 1024);
    assert!(peak_kb < 200 * 1024, "peak resident size {} MB", peak_kb / 1024);
    assert_eq!(target.value("select count(*) from big"), "5000000");
    assert_eq!(
        target.value("select md5(string_agg(v, ',' order by id)) from big"),
        source.value("select md5(string_agg(v, ',' order by id)) from big")
    );
}

#[test]
fn an_invalidated_slot_is_a_fatal_error_that_says_what_to_do() {
    let source =
        Cluster::builder().setting("max_slot_wal_keep_size", "'1MB'").setting("max_wal_size", "'32MB'").start();
    let target = Cluster::start_target();
    source.execute("create table t (id int, pad text)");
    source.copy_schema_to(&target);
    source.create_slot("lost");
    // Far more WAL than the slot may keep, then a checkpoint invalidates it.
    for _ in 0..3 {
        source.execute("insert into t select i, repeat('x', 500) from generate_series(1, 20000) i; select pg_switch_wal(); checkpoint;");
    }
    assert_eq!(source.value("select wal_status from pg_replication_slots where slot_name = 'lost'"), "lost");
    let out = cdc(&source, &target, "lost", &["--until", &source.current_lsn()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("was invalidated by the source"), "{stderr}");
    assert!(stderr.contains("max_slot_wal_keep_size"), "{stderr}");
    assert!(stderr.contains("load the target again"), "{stderr}");
}

#[test]
fn slot_commands_create_list_and_drop() {
    let source = Cluster::start();
    let src = source.conninfo("postgres");
    let run = |args: &[&str]| {
        let out = pgdms_tests::pgdms_apply().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        pgdms_tests::parse_json_lines(&out.stdout)
    };
    let out =
        pgdms_tests::pgdms_apply().args(["slot", "create", "--source", &src, "--slot", "Mixed Case"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("may only contain lower case letters"));
    let created = run(&["slot", "create", "--source", &src, "--slot", "mig_1"]);
    assert_eq!(created[0]["slot"], "mig_1");
    assert!(created[0]["consistent_point"].as_str().unwrap().contains('/'));
    let listed = run(&["slot", "list", "--source", &src]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["slot"], "mig_1");
    assert_eq!(listed[0]["active"], false);
    assert!(listed[0]["retained_wal_bytes"].as_i64().unwrap() >= 0);
    run(&["slot", "drop", "--source", &src, "--slot", "mig_1"]);
    assert!(run(&["slot", "list", "--source", &src]).is_empty());
    let out = pgdms_tests::pgdms_apply().args(["slot", "drop", "--source", &src, "--slot", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn a_row_missing_on_the_target_is_named_and_the_group_undone() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key, v text); insert into t values (1, 'old'), (2, 'old')");
    source.copy_schema_to(&target);
    target.execute("insert into t values (2, 'old')"); // row 1 is missing on the target
    source.create_slot("m");
    source.execute("begin; insert into t values (3, 'new'); update t set v = 'upd' where id in (1, 2); commit");
    let until = source.current_lsn();
    // The set-wise update finds one row of two: the batch is undone and replayed, which names
    // the missing row; nothing of the group stays.
    let out = cdc(&source, &target, "m", &["--until", &until]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot apply update on \"public\".\"t\""), "{stderr}");
    assert!(stderr.contains("(key id=1): the row was not found on the target"), "{stderr}");
    assert_eq!(target.rows("t"), ["(2,old)"]);
    let out = cdc(&source, &target, "m", &["--until", &until, "--on-error", "log"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(target.rows("t"), ["(2,upd)", "(3,new)"]);
    assert_eq!(target.value("select count(*) from pgdms_apply.apply_exceptions where key = '{\"id\": \"1\"}'"), "1");
}

#[test]
fn with_on_error_log_a_table_missing_on_the_target_loses_no_other_change() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table a (id int primary key); create table b (id int primary key)");
    target.execute_as_target("create table a (id int primary key)");
    source.create_slot("l");
    source.execute("begin; insert into a values (1); insert into b values (1); insert into a values (2); commit");
    let until = source.current_lsn();
    let out = cdc(&source, &target, "l", &["--until", &until, "--on-error", "log"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(target.rows("a"), ["(1)", "(2)"]);
    let errors = target.query("select table_name, error from pgdms_apply.apply_exceptions");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0][0].as_deref(), Some("\"public\".\"b\""));
    assert!(errors[0][1].as_deref().unwrap().contains("does not exist"));
}
