//! The one retry policy (`pgdms_apply::apply::retry`), exercised around a real target: a
//! wrapper makes a chosen call of a real SQLite target fail, while a real source streams
//! real changes. A transient failure is tried again from the last committed group and loses
//! or repeats nothing; a refused change is not tried again and commits nothing of its group;
//! a damaged control record is an error that names it, not a silent replay.

use pgdms_apply::apply::{self, ApplyOptions, Finished};
use pgdms_apply::error::ErrorKind;
use pgdms_apply::model::batch::Batch;
use pgdms_apply::model::RelInfo;
use pgdms_apply::pgconn::ConnInfo;
use pgdms_apply::sink::sqlite::SqliteTarget;
use pgdms_apply::sink::typemap::MapOptions;
use pgdms_apply::sink::{OnError, SourceSettings, Target, TargetError};
use pgdms_proto::{Ddl, Lsn};
use pgdms_tests::Cluster;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fail the n-th call (counted from 1 over every session) of this method, with this error.
type Fault = (&'static str, usize, fn() -> TargetError);

/// Which call fails, and how; and what the wrapper saw.
#[derive(Default)]
struct Faults {
    fail_at: Option<Fault>,
    calls: Vec<&'static str>,
    connects: usize,
}

/// A real SQLite target, with one call made to fail.
struct Faulty {
    inner: SqliteTarget,
    faults: Arc<Mutex<Faults>>,
}

impl Faulty {
    fn call(&self, method: &'static str) -> Result<(), TargetError> {
        let mut f = self.faults.lock().unwrap();
        f.calls.push(method);
        let n = f.calls.iter().filter(|m| **m == method).count();
        match f.fail_at {
            Some((m, at, error)) if m == method && at == n => Err(error()),
            _ => Ok(()),
        }
    }
}

impl Target for Faulty {
    async fn start(&mut self, slot: &str) -> Result<Option<Lsn>, TargetError> {
        self.inner.start(slot).await
    }
    async fn configure(&mut self, settings: &SourceSettings) -> Result<(), TargetError> {
        self.inner.configure(settings).await
    }
    async fn apply(&mut self, batch: &Batch) -> Result<(), TargetError> {
        self.inner.apply(batch).await?;
        self.call("apply")
    }
    async fn truncate(&mut self, rels: &[Arc<RelInfo>], restart_identity: bool, lsn: Lsn) -> Result<(), TargetError> {
        self.inner.truncate(rels, restart_identity, lsn).await
    }
    async fn ddl(&mut self, ddl: &Ddl, lsn: Lsn) -> Result<(), TargetError> {
        self.inner.ddl(ddl, lsn).await
    }
    async fn ensure_table(&mut self, rel: &RelInfo, lsn: Lsn) -> Result<(), TargetError> {
        self.inner.ensure_table(rel, lsn).await
    }
    async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), TargetError> {
        // Fails before the commit: the group is rolled back, as a lost connection does.
        self.call("commit")?;
        self.inner.commit(end_lsn, commit_time).await
    }
    async fn rollback(&mut self) -> Result<(), TargetError> {
        self.inner.rollback().await
    }
    async fn described(&mut self, rel: &RelInfo, lsn: Lsn) -> Result<(), TargetError> {
        self.inner.described(rel, lsn).await
    }
}

/// A source with table `t` and a slot, then 20 transactions of 50 rows each.
fn source_with_changes(slot: &str) -> (Cluster, Lsn) {
    let source = Cluster::start();
    source.execute("create table t (id int primary key, v text)");
    source.create_slot(slot);
    for i in 0..20 {
        source.execute(&format!(
            "insert into t select g, 'v' || g from generate_series({}, {}) g",
            i * 50 + 1,
            i * 50 + 50
        ));
    }
    let until: Lsn = source.current_lsn().parse().unwrap();
    (source, until)
}

/// Streams `slot` into a SQLite file through the wrapper until `until`.
fn run(
    source: &Cluster,
    slot: &str,
    until: Lsn,
    db: &std::path::Path,
    faults: &Arc<Mutex<Faults>>,
) -> Result<Finished, apply::ApplyError> {
    let opts = ApplyOptions {
        slot: slot.to_string(),
        // Small groups: several commits, so the failure falls between committed groups.
        group_max_rows: 100,
        group_max_age: Duration::from_secs(1),
        batch_max_rows: 100,
        plugin_options: pgdms_proto::Options::default(),
        until: Some(until),
        reloaded: Default::default(),
        start_lsn: None,
        start_time: None,
        mapping: None,
        on_table_error: Default::default(),
    };
    let info = ConnInfo::parse(&source.conninfo("postgres")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    runtime.block_on(apply::run(
        &info,
        || {
            faults.lock().unwrap().connects += 1;
            let inner = SqliteTarget::open(db, MapOptions::default(), OnError::Stop);
            std::future::ready(inner.map(|inner| Faulty { inner, faults: faults.clone() }))
        },
        &opts,
        shutdown,
    ))
}

/// Rows, distinct keys and the sum of the keys of the target's `t` (zeros without it).
fn rows(db: &std::path::Path) -> (i64, i64, i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    let exists: i64 = c.query_row("select count(*) from sqlite_master where name = 't'", [], |r| r.get(0)).unwrap();
    if exists == 0 {
        return (0, 0, 0);
    }
    c.query_row("select count(*), count(distinct id), coalesce(sum(id), 0) from t", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
}

#[test]
fn a_transient_failure_is_retried_and_loses_or_repeats_nothing() {
    let (source, until) = source_with_changes("retry_transient");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let faults = Arc::new(Mutex::new(Faults {
        fail_at: Some(("commit", 2, || TargetError::Transient("injected: connection lost".into()))),
        ..Default::default()
    }));
    let finished = run(&source, "retry_transient", until, &db, &faults).expect("the transient failure is retried");
    assert_eq!(finished, Finished::Reached);
    let f = faults.lock().unwrap();
    assert_eq!(f.connects, 2, "one reconnect after the injected failure; calls: {:?}", f.calls);
    // Groups of 100 rows over 20 transactions of 50: at least 10 groups, however the stream
    // was chunked on arrival, plus the one that failed.
    assert!(
        f.calls.iter().filter(|c| **c == "commit").count() >= 11,
        "commits went on after the failure: {:?}",
        f.calls
    );
    assert_eq!(rows(&db), (1000, 1000, 1000 * 1001 / 2), "every row once");
}

#[test]
fn a_refused_change_is_not_retried() {
    let (source, until) = source_with_changes("retry_refused");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let refused = || TargetError::Change {
        table: "public.t".into(),
        source_oid: None,
        operation: "insert",
        lsn: Lsn(0),
        key: "id=1".into(),
        error: "injected: refused".into(),
    };
    let faults = Arc::new(Mutex::new(Faults { fail_at: Some(("apply", 1, refused)), ..Default::default() }));
    let error = run(&source, "retry_refused", until, &db, &faults).expect_err("a refused change stops the apply");
    assert_eq!(error.kind(), ErrorKind::RefusedChange, "{error}");
    assert!(error.to_string().contains("injected: refused"), "{error}");
    let f = faults.lock().unwrap();
    assert_eq!(f.connects, 1, "not retried");
    assert_eq!(f.calls.iter().filter(|c| **c == "commit").count(), 0, "nothing of the group committed");
    assert_eq!(rows(&db).0, 0, "no row of the refused group on the target");
}

#[test]
fn a_damaged_applied_position_is_an_error_naming_table_and_value() {
    let (source, until) = source_with_changes("retry_corrupt");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    // A first run records how far it got; then the record is damaged.
    let faults = Arc::new(Mutex::new(Faults::default()));
    run(&source, "retry_corrupt", until, &db, &faults).expect("the first run applies everything");
    assert_eq!(rows(&db).0, 1000);
    let c = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(c.execute("update pgdms_apply_progress set end_lsn = 'garbage'", []).unwrap(), 1);
    drop(c);
    let error = run(&source, "retry_corrupt", until, &db, &faults).expect_err("a damaged position stops the apply");
    assert_eq!(error.kind(), ErrorKind::Corruption, "{error}");
    let text = error.to_string();
    assert!(text.contains("pgdms_apply_progress.end_lsn") && text.contains("\"garbage\""), "{text}");
    assert_eq!(faults.lock().unwrap().connects, 2, "not retried");
    assert_eq!(rows(&db), (1000, 1000, 1000 * 1001 / 2), "nothing replayed");
}
