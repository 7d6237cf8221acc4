//! Heterogeneous targets: MySQL (a real MariaDB server), SQLite and the JSON-lines stream,
//! full load and CDC through the DMS type mapping, on real clusters.

use pgdms_tests::mariadb::MariaDb;
use pgdms_tests::matrix::{setup_matrix, MATRIX, ROWS};
use pgdms_tests::{pgdms_apply, wait_until, Cluster, Running};
use rusqlite::types::Value;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn migrate(source: &Cluster, target: &str, slot: &str, extra: &[&str]) -> Command {
    let mut c = pgdms_apply();
    c.args(["migrate", "--source", &source.conninfo("postgres"), "--target", target, "--slot", slot]);
    c.args(extra);
    c.stdout(Stdio::null());
    c
}

fn kill(child: &mut Child, signal: &str) {
    Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
}

/// The texts of `exprs` over row `id` of `table` on the source, timestamptz in UTC.
fn source_texts(source: &Cluster, table: &str, id: i32, exprs: &[String]) -> Vec<Option<String>> {
    let mut client = source.connect("postgres");
    client.batch_execute("set timezone = 'UTC'; set datestyle = 'ISO'").unwrap();
    let mut rows =
        pgdms_tests::query_text(&mut client, &format!("select {} from {table} where id = {id}", exprs.join(", ")));
    rows.swap_remove(0)
}

/// What SQLite must hold for a source value, as the README's mapping says: the source's
/// own text for everything stored as TEXT (numerics keep their digits, timestamptz in UTC).
fn expected_sqlite(source: &Cluster, table: &str, id: i32) -> Vec<Value> {
    let mut exprs = vec!["id::text".to_string()];
    let mut kinds = vec!["int"];
    for (col, ty, _, cast) in MATRIX {
        let (expr, kind) = match *ty {
            "smallint" | "integer" | "bigint" | "smallserial" | "serial" | "bigserial" | "posint" => {
                // The domain falls back to its text (NCLOB).
                if *ty == "posint" {
                    (format!("{col}::text"), "text")
                } else {
                    (format!("{col}::text"), "int")
                }
            }
            "real" | "double precision" => (format!("{col}::text"), "real"),
            "boolean" => (format!("case when {col} then 'true' when not {col} then 'false' end"), "text"),
            "bytea" => (format!("encode({col}, 'hex')"), "blob"),
            // The output function's text (char(n) keeps its padding, which ::text trims).
            _ => (format!("case when {col} is not null then format('%s', {col}{cast}) end"), "text"),
        };
        exprs.push(expr);
        kinds.push(kind);
    }
    source_texts(source, table, id, &exprs)
        .iter()
        .zip(kinds)
        .map(|(v, kind)| match (v, kind) {
            (None, _) => Value::Null,
            (Some(s), "int") => Value::Integer(s.parse().unwrap()),
            (Some(s), "real") => match s.parse::<f64>() {
                Ok(f) if f.is_finite() => Value::Real(f),
                _ => Value::Text(s.clone()),
            },
            (Some(s), "blob") => {
                Value::Blob((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect())
            }
            (Some(s), _) => Value::Text(s.clone()),
        })
        .collect()
}

fn sqlite_row(db: &rusqlite::Connection, table: &str, id: i32) -> Option<Vec<Value>> {
    let mut stmt = db.prepare(&format!("select * from \"{table}\" where id = ?1")).unwrap();
    let n = stmt.column_count();
    stmt.query_row([id], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect()).ok()
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // Floats through their shortest text: 3.14159::real is 3.14159 on both sides.
        (Value::Real(x), Value::Real(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(1.0) * 4.0,
        _ => a == b,
    }
}

#[test]
fn sqlite_full_load_and_cdc_follow_the_dms_mapping() {
    let source = Cluster::start();
    source.execute("create extension pgdms");
    setup_matrix(&source);
    for r in ROWS {
        source.execute(&format!("insert into matrix values ({r})"));
    }
    source.execute(
        "create table \"Orders\" (id int primary key, note varchar(10) not null, doc jsonb not null, flag boolean);
         create table plain (k text primary key, v int);
         insert into \"Orders\" select g, 'n' || g, jsonb_build_object('g', g), g % 2 = 0 from generate_series(1, 500) g;
         insert into plain values ('a', 1), ('b', 2);
         -- SQLite cannot hold a table without columns to write: named as not migrated, passed over.
         create table nocols (); insert into nocols default values;
         create table gen_only (nb int generated always as (7) stored); insert into gen_only default values;",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let target = format!("sqlite:{}", path.display());
    let mut run = Running::spawn(&mut migrate(&source, &target, "to_sqlite", &[]));
    let db = rusqlite::Connection::open(&path).unwrap();
    let loaded = |db: &rusqlite::Connection| {
        db.query_row("select count(*) from pgdms_migration where phase = 'cdc'", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0)
            == 1
    };
    wait_until(Duration::from_secs(60), "the full load", || loaded(&db));
    // Full load: every matrix row as the mapping says.
    for id in 1..=ROWS.len() as i32 {
        let want = expected_sqlite(&source, "matrix", id);
        let got = sqlite_row(&db, "matrix", id).expect("row loaded");
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let col = if i == 0 { "id" } else { MATRIX[i - 1].0 };
            assert!(same(w, g), "matrix row {id} column {col}: want {w:?}, got {g:?}");
        }
    }
    // JSONB NOT NULL is restored after the load.
    let doc_not_null: i64 = db
        .query_row("select \"notnull\" from pragma_table_info('Orders') where name = 'doc'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(doc_not_null, 1);

    // CDC: inserts, updates (a TOASTed value untouched), key updates, deletes, truncate, DDL.
    source.execute(
        "update matrix set c_text = 'changed', c_int4 = c_int4 + 1 where id = 1;
         update matrix set id = 10 where id = 2;
         delete from matrix where id = 3;
         insert into \"Orders\" values (501, 'new', '{\"x\": 1}', true);
         update \"Orders\" set id = id + 1000 where id <= 10;
         delete from \"Orders\" where id between 100 and 199;
         update \"Orders\" set flag = null where id between 200 and 210;
         truncate plain;
         insert into plain values ('c', 3);
         alter table \"Orders\" add column extra numeric(6,2);
         update \"Orders\" set extra = 1.10 where id = 300;
         alter table \"Orders\" rename column note to remark;
         alter table plain drop column v;
         insert into plain values ('d');
         create table created_empty (id int primary key);
         insert into nocols default values; create table nocols_later (); insert into nocols_later default values;
         insert into gen_only default values;",
    );
    let lsn = source.current_lsn();
    wait_until(Duration::from_secs(60), "CDC to catch up", || {
        db.query_row("select end_lsn from pgdms_apply_progress", [], |r| r.get::<_, String>(0))
            .map(|l| pgdms_tests::lsn_ge(&l, &lsn))
            .unwrap_or(false)
    });
    let created: i64 =
        db.query_row("select count(*) from sqlite_master where name = 'created_empty'", [], |r| r.get(0)).unwrap();
    assert_eq!(created, 1, "a table created on the source exists on SQLite before its first row");
    let columnless: i64 = db
        .query_row("select count(*) from sqlite_master where name in ('nocols', 'nocols_later', 'gen_only')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(columnless, 0, "tables without columns to write are not migrated to SQLite");
    // Kill it mid-stream, write more, restart: nothing lost, nothing twice.
    kill(&mut run, "-KILL");
    source.execute(
        "insert into \"Orders\" select g, 'r' || g, '{}', null from generate_series(600, 699) g;
         update \"Orders\" set remark = 'restarted' where id = 400;",
    );
    let mut run = Running::spawn(&mut migrate(&source, &target, "to_sqlite", &[]));
    let lsn = source.current_lsn();
    wait_until(Duration::from_secs(60), "CDC after the restart", || {
        db.query_row("select end_lsn from pgdms_apply_progress", [], |r| r.get::<_, String>(0))
            .map(|l| pgdms_tests::lsn_ge(&l, &lsn))
            .unwrap_or(false)
    });
    kill(&mut run, "-TERM");

    for id in [1, 10] {
        let want = expected_sqlite(&source, "matrix", id);
        let got = sqlite_row(&db, "matrix", id).unwrap_or_else(|| panic!("matrix row {id} missing"));
        assert!(want.iter().zip(&got).all(|(w, g)| same(w, g)), "matrix row {id}: want {want:?}, got {got:?}");
    }
    assert!(sqlite_row(&db, "matrix", 2).is_none() && sqlite_row(&db, "matrix", 3).is_none());
    let source_orders = source.query(
        "select id::text, remark, doc::text, case when flag then 'true' when not flag then 'false' end, extra::text
           from \"Orders\" o order by o.id",
    );
    let mut stmt = db.prepare("select id, remark, doc, flag, extra from \"Orders\" order by id").unwrap();
    let target_orders: Vec<Vec<Option<String>>> = stmt
        .query_map([], |r| Ok(vec![Some(r.get::<_, i64>(0)?.to_string()), r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(target_orders.len(), source_orders.len());
    for (t, s) in target_orders.iter().zip(&source_orders) {
        assert_eq!(t, s, "Orders differ between source and SQLite");
    }
    let plain: Vec<String> = db
        .prepare("select k from plain order by k")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(plain, ["c", "d"]);
    let plain_cols: i64 = db.query_row("select count(*) from pragma_table_info('plain')", [], |r| r.get(0)).unwrap();
    assert_eq!(plain_cols, 1, "the dropped column is gone");
}

/// The stream's messages, parsed (a last line still being written is left for later).
fn messages(path: &std::path::Path) -> Vec<Json> {
    let text = std::fs::read_to_string(path).unwrap();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn jsonl_stream_carries_every_change_once_per_key_across_a_restart() {
    let source = Cluster::start();
    source.execute(
        "create extension pgdms;
         create table t (id int primary key, v text, n numeric(10,2), b bytea, ok boolean);
         create table keyless (a int, b text);
         alter table keyless replica identity full;
         insert into t select g, 'v' || g, g / 100.0, '\\x00ff', true from generate_series(1, 200) g;
         insert into keyless values (1, 'x'), (1, 'x');",
    );
    setup_matrix(&source);
    for r in ROWS {
        source.execute(&format!("insert into matrix values ({r})"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.jsonl");
    let target = format!("jsonl:{}", path.display());
    let mut run = Running::spawn(&mut migrate(&source, &target, "to_stream", &[]));
    let progress = dir.path().join("stream.jsonl.progress");
    wait_until(Duration::from_secs(60), "the full load", || {
        std::fs::read_to_string(&progress).is_ok_and(|p| p.contains("\"cdc\""))
    });
    source.execute(
        "update t set v = 'changed' where id = 1;
         update t set id = 1000 where id = 2;
         delete from t where id = 3;
         delete from keyless where ctid = (select min(ctid) from keyless);
         truncate keyless;
         alter table t add column extra int;
         insert into t (id, v, extra) values (201, 'new', 7);",
    );
    wait_until(Duration::from_secs(60), "the changes", || messages(&path).iter().any(|m| m["data"]["id"] == 201));
    // A transaction larger than what the stream holds in memory (it spills to a file).
    source.execute("insert into t (id, v) select g, 'big' from generate_series(100000, 124999) g");
    wait_until(Duration::from_secs(60), "the large transaction", || {
        messages(&path).iter().any(|m| m["data"]["id"] == 124999)
    });
    kill(&mut run, "-KILL");
    source.execute("insert into t (id, v) select g, 'late' from generate_series(300, 349) g; update t set v = 'last' where id = 4;");
    let mut run = Running::spawn(&mut migrate(&source, &target, "to_stream", &[]));
    wait_until(Duration::from_secs(60), "the changes after the restart", || {
        messages(&path).iter().any(|m| m["data"]["id"] == 4 && m["data"]["v"] == "last")
    });
    kill(&mut run, "-TERM");

    let all = messages(&path);
    // Every message has the reference's shape.
    for m in &all {
        let md = &m["metadata"];
        for field in
            ["timestamp", "record-type", "operation", "partition-key-type", "schema-name", "table-name", "commit-lsn"]
        {
            assert!(md[field].is_string(), "{field} missing in {m}");
        }
        assert!(md["change-index"].is_u64());
    }
    // Duplicates only with a key already seen, and then the same message.
    let mut seen: BTreeMap<(String, u64), &Json> = BTreeMap::new();
    let mut unique = Vec::new();
    for m in &all {
        let key = (
            m["metadata"]["commit-lsn"].as_str().unwrap().to_string(),
            m["metadata"]["change-index"].as_u64().unwrap(),
        );
        match seen.get(&key) {
            Some(prev) => assert_eq!(prev["data"], m["data"], "a repeated key must repeat its message"),
            None => {
                seen.insert(key, m);
                unique.push(m);
            }
        }
    }
    // The load: 200 + 2 rows + the matrix, values through the mapping.
    let load: Vec<&&Json> = unique.iter().filter(|m| m["metadata"]["operation"] == "load").collect();
    assert_eq!(load.len(), 202 + ROWS.len());
    for m in load.iter().filter(|m| m["metadata"]["table-name"] == "matrix") {
        let id = m["data"]["id"].as_i64().unwrap() as i32;
        let want = expected_sqlite(&source, "matrix", id);
        for (i, w) in want.iter().enumerate() {
            let col = if i == 0 { "id" } else { MATRIX[i - 1].0 };
            let got = &m["data"][col];
            let ok = match w {
                Value::Null => got.is_null(),
                Value::Integer(n) => got.as_i64() == Some(*n),
                Value::Real(f) => got.as_f64().is_some_and(|g| same(&Value::Real(*f), &Value::Real(g))),
                Value::Text(s) => got.as_str() == Some(s.as_str()),
                Value::Blob(b) => {
                    use base64::Engine as _;
                    got.as_str() == Some(base64::engine::general_purpose::STANDARD.encode(b).as_str())
                }
            };
            assert!(ok, "matrix row {id} column {col}: want {w:?}, got {got}");
        }
    }
    // The large transaction: one commit-lsn, its changes numbered 0.. in source order.
    let big: Vec<&&Json> = unique.iter().filter(|m| m["data"]["v"] == "big").collect();
    assert_eq!(big.len(), 25_000);
    for (i, m) in big.iter().enumerate() {
        assert_eq!(m["metadata"]["commit-lsn"], big[0]["metadata"]["commit-lsn"]);
        assert_eq!(m["metadata"]["change-index"], i as u64);
        assert_eq!(m["data"]["id"], 100_000 + i as i64);
    }
    let first = load.iter().find(|m| m["data"]["id"] == 1 && m["metadata"]["table-name"] == "t").unwrap();
    assert_eq!(first["data"]["n"], "0.01", "numerics travel as strings");
    assert_eq!(first["data"]["b"], "AP8=", "bytea as base64");
    assert_eq!(first["data"]["ok"], "true", "booleans as CHAR(5) unless mapped as booleans");
    // Replaying the unique messages of t gives the source's rows.
    let mut model: BTreeMap<i64, Json> = BTreeMap::new();
    for m in unique.iter().filter(|m| m["metadata"]["table-name"] == "t") {
        let id = |d: &Json| d["id"].as_i64().unwrap();
        match m["metadata"]["operation"].as_str().unwrap() {
            "load" | "insert" => {
                model.insert(id(&m["data"]), m["data"]["v"].clone());
            }
            "update" => {
                if let Some(b) = m.get("before-image").filter(|b| b.get("id").is_some()) {
                    model.remove(&id(b));
                }
                model.insert(id(&m["data"]), m["data"]["v"].clone());
            }
            "delete" => {
                model.remove(&id(&m["before-image"]));
            }
            _ => {}
        }
    }
    let want: BTreeMap<i64, Json> = source
        .query("select id, v from t")
        .into_iter()
        .map(|r| (r[0].as_ref().unwrap().parse().unwrap(), r[1].clone().map_or(Json::Null, Json::String)))
        .collect();
    assert_eq!(model, want, "replaying the stream must give the source's table");
    // Control records: truncate and the added column; a full before-image for the keyless delete.
    let ops: HashSet<&str> = unique.iter().map(|m| m["metadata"]["operation"].as_str().unwrap()).collect();
    for op in ["truncate", "add-column", "delete", "update", "insert", "create-table"] {
        assert!(ops.contains(op), "no {op} message");
    }
    let keyless_delete = unique
        .iter()
        .find(|m| m["metadata"]["table-name"] == "keyless" && m["metadata"]["operation"] == "delete")
        .unwrap();
    assert_eq!(keyless_delete["before-image"], serde_json::json!({"a": 1, "b": "x"}));
    let key_update = unique.iter().find(|m| m["metadata"]["operation"] == "update" && m["data"]["id"] == 1000).unwrap();
    assert_eq!(key_update["before-image"]["id"], 2, "a key update carries the old key");
}

/// What MySQL must hold for a source value under the README's mapping: its text as the
/// server returns it, or `Exception` for a value MySQL cannot hold (NULL on the target and
/// a row in pgdms_value_exceptions).
#[derive(Debug, PartialEq)]
enum MyExpect {
    Value(Option<String>),
    Exception,
}

/// The MySQL select list reading the matrix in MATRIX order (blobs as hex).
fn mysql_matrix_select() -> String {
    let mut cols = vec!["id".to_string()];
    for (col, ty, _, _) in MATRIX {
        cols.push(if *ty == "bytea" { format!("HEX({col})") } else { col.to_string() });
    }
    cols.join(", ")
}

/// A time's fraction written to six digits, as TIME(6) and DATETIME(6) print it.
fn six_digits(t: &str) -> String {
    match t.split_once('.') {
        Some((whole, frac)) => format!("{whole}.{frac:0<6}"),
        None => format!("{t}.000000"),
    }
}

fn expected_mysql(source: &Cluster, table: &str, id: i32) -> Vec<MyExpect> {
    let mut exprs = vec!["id::text".to_string()];
    let mut kinds = vec!["text"];
    for (col, ty, dms, cast) in MATRIX {
        let in_range = format!("(isfinite({col}) and {col} >= '0001-01-01' and {col} < '10000-01-01')");
        let (expr, kind) = match *ty {
            "real" | "double precision" => (format!("{col}::text"), "real"),
            "boolean" => (format!("case when {col} then 'true' when not {col} then 'false' end"), "text"),
            "bytea" => (format!("upper(encode({col}, 'hex'))"), "text"),
            "timestamp" | "timestamp(3)" | "timestamptz" | "date" => (
                format!("case when {col} is null then null when {in_range} then {col}::text else 'EXCEPTION' end"),
                "ts",
            ),
            "time" => (format!("{col}::text"), "ts"),
            "timetz" => (format!("({col} at time zone 'UTC')::time::text"), "ts"),
            _ if dms.starts_with("NUMERIC(") => {
                // DECIMAL(p,s) prints every digit of its scale.
                let ps = &dms["NUMERIC".len()..];
                (format!("({col}{cast})::numeric{ps}::text"), "text")
            }
            _ => (format!("case when {col} is not null then format('%s', {col}{cast}) end"), "text"),
        };
        exprs.push(expr);
        kinds.push(kind);
    }
    source_texts(source, table, id, &exprs)
        .iter()
        .zip(kinds)
        .map(|(v, kind)| match (v.as_deref(), kind) {
            (None, _) => MyExpect::Value(None),
            (Some("NaN" | "Infinity" | "-Infinity"), "real") => MyExpect::Exception,
            (Some("EXCEPTION"), _) => MyExpect::Exception,
            (Some(s), "ts") => {
                let s = s.strip_suffix("+00").unwrap_or(s);
                MyExpect::Value(Some(if s.len() == 10 { s.to_string() } else { six_digits(s) }))
            }
            (Some(s), _) => MyExpect::Value(Some(s.to_string())),
        })
        .collect()
}

/// Compares one matrix row on MySQL with the mapping; returns the columns expected as
/// value exceptions.
fn check_mysql_matrix_row(source: &Cluster, my: &MariaDb, id: i32) -> Vec<String> {
    let want = expected_mysql(source, "matrix", id);
    let got = my.query(&format!("select {} from `public`.`matrix` where id = {id}", mysql_matrix_select()));
    assert_eq!(got.len(), 1, "matrix row {id} on MySQL");
    let mut exceptions = Vec::new();
    for (i, (w, g)) in want.iter().zip(&got[0]).enumerate() {
        let (col, ty) = if i == 0 { ("id", "integer") } else { (MATRIX[i - 1].0, MATRIX[i - 1].1) };
        match w {
            MyExpect::Exception => {
                assert_eq!(g, &None, "matrix row {id} column {col}: a value MySQL cannot hold must be NULL");
                exceptions.push(col.to_string());
            }
            MyExpect::Value(Some(w)) if ty == "real" || ty == "double precision" => {
                let (x, y): (f64, f64) = (w.parse().unwrap(), g.as_deref().unwrap_or("NaN").parse().unwrap());
                assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "matrix row {id} column {col}: want {w}, got {g:?}");
            }
            MyExpect::Value(w) => assert_eq!(g, w, "matrix row {id} column {col}"),
        }
    }
    exceptions
}

fn mysql_caught_up(my: &MariaDb, slot: &str, lsn: &str) -> bool {
    my.query(&format!("select end_lsn from pgdms.pgdms_apply_progress where slot_name = '{slot}'"))
        .first()
        .and_then(|r| r[0].clone())
        .is_some_and(|l| pgdms_tests::lsn_ge(&l, lsn))
}

fn exits_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn mysql_full_load_and_cdc_follow_the_dms_mapping_exactly_once() {
    let source = Cluster::start();
    let my = MariaDb::start();
    source.execute("create extension pgdms");
    setup_matrix(&source);
    for r in ROWS {
        source.execute(&format!("insert into matrix values ({r})"));
    }
    source.execute(
        "create table \"Orders\" (id int primary key, note varchar(10) not null, doc jsonb not null, flag boolean);
         insert into \"Orders\" select g, 'n' || g, jsonb_build_object('g', g), g % 2 = 0 from generate_series(1, 500) g;
         create schema \"Sales\";
         create table \"Sales\".items (sku text primary key, qty int, price numeric(8,2));
         insert into \"Sales\".items values ('x', 1, 9.90);
         create table keyless (a int, b text);
         alter table keyless replica identity full;
         insert into keyless values (1, 'x'), (1, 'x'), (2, 'y');
         create table plain (k int primary key, v text);
         insert into plain values (1, 'one');
         -- MySQL cannot hold a table without columns to write: named as not migrated, passed over.
         create table nocols (); insert into nocols default values;
         create table gen_only (nb int generated always as (7) stored); insert into gen_only default values;",
    );
    let target = my.url("");
    let slot = "to_mysql";
    let mut run = Running::spawn(&mut migrate(&source, &target, slot, &[]));
    wait_until(Duration::from_secs(90), "the full load", || {
        my.value("select count(*) from information_schema.tables where table_schema = 'pgdms' and table_name = 'pgdms_migration'")
            == Some("1".into())
            && my.value(&format!("select phase from pgdms.pgdms_migration where slot_name = '{slot}'"))
                == Some("cdc".into())
    });

    // The load: every matrix row as the mapping says, values MySQL cannot hold reported.
    let mut want_exceptions = Vec::new();
    for id in 1..=ROWS.len() as i32 {
        for col in check_mysql_matrix_row(&source, &my, id) {
            want_exceptions.push(format!("{id}:{col}"));
        }
    }
    assert!(!want_exceptions.is_empty(), "the matrix has values MySQL cannot hold");
    let got_exceptions: Vec<String> = my
        .query("select row_key, column_name, source_value from pgdms.pgdms_value_exceptions where table_name = 'public.matrix' order by id")
        .into_iter()
        .map(|r| format!("{}:{}", r[0].as_deref().unwrap().trim_start_matches("id="), r[1].as_deref().unwrap()))
        .collect();
    let mut sorted = got_exceptions.clone();
    sorted.sort();
    want_exceptions.sort();
    assert_eq!(sorted, want_exceptions, "each value MySQL cannot hold is reported once");
    // Types of the mapping, and NOT NULL back on the jsonb column after the load.
    let types: BTreeMap<String, String> = my
        .query("select column_name, column_type from information_schema.columns where table_schema = 'public' and table_name = 'Orders'")
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(types["note"], "varchar(10)");
    assert_eq!(types["doc"], "longtext");
    assert_eq!(types["flag"], "char(5)");
    assert_eq!(
        my.value("select is_nullable from information_schema.columns where table_schema = 'public' and table_name = 'Orders' and column_name = 'doc'"),
        Some("NO".into())
    );
    assert_eq!(
        my.value("select column_type from information_schema.columns where table_schema = 'Sales' and table_name = 'items' and column_name = 'sku'"),
        Some("varchar(768)".into()),
        "a text key is a VARCHAR within InnoDB's key bytes"
    );

    // CDC, all in one source transaction: DML, DDL (implicit commits on MySQL), DML.
    source.execute(
        "update matrix set c_text = 'changed', c_int4 = c_int4 + 1 where id = 1;
         update matrix set id = 10 where id = 2;
         delete from matrix where id = 3;
         insert into \"Orders\" values (501, 'new', '{\"x\": 1}', true);
         update \"Orders\" set id = id + 1000 where id <= 10;
         delete from \"Orders\" where id between 100 and 199;
         update \"Orders\" set flag = null where id between 200 and 210;
         insert into \"Sales\".items values ('a', 1, 1), ('A', 2, 2), ('a ', 3, 3);
         update \"Sales\".items set qty = 20 where sku = 'A';
         truncate plain;
         insert into plain values (2, 'two');
         delete from keyless where ctid = (select min(ctid) from keyless);
         alter table \"Orders\" add column extra numeric(6,2) not null default 1.5;
         update \"Orders\" set extra = 1.10 where id = 300;
         alter table \"Orders\" rename column note to remark;
         alter table \"Sales\".items drop column price;
         alter table \"Sales\".items alter column qty set not null;
         create table created_empty (id int primary key, at timestamptz);
         create table newt (id bigint primary key, t timestamptz);
         insert into newt values (1, '2024-01-01 00:00:00+02');
         insert into nocols default values; insert into gen_only default values;
         create table nocols_later (); insert into nocols_later default values;",
    );
    let lsn = source.current_lsn();
    wait_until(Duration::from_secs(60), "CDC to catch up", || mysql_caught_up(&my, slot, &lsn));
    assert_eq!(
        my.value("select count(*) from information_schema.tables where table_schema = 'public' and table_name = 'created_empty'"),
        Some("1".into()),
        "a table created on the source exists on MySQL before its first row"
    );
    assert_eq!(
        my.value("select count(*) from information_schema.tables where table_schema = 'public' and table_name in ('nocols', 'gen_only', 'nocols_later')"),
        Some("0".into()),
        "tables without columns to write are not migrated to MySQL"
    );
    assert_eq!(
        my.value("select is_nullable from information_schema.columns where table_schema = 'Sales' and table_name = 'items' and column_name = 'qty'"),
        Some("NO".into()),
        "SET NOT NULL reaches MySQL"
    );

    // A transaction MySQL commits in parts (DDL in the middle), refused after its DDL: the
    // part before the DDL is on the target, and after the cause is removed the rerun
    // applies the rest, not the first part again (keyless rows would show it twice).
    my.execute("alter table `public`.`keyless` add constraint no_poison check (b <> 'poison')");
    source.execute(
        "insert into keyless values (7, 'before');
         alter table keyless add column c int;
         alter table plain rename column v to w;
         update plain set w = 'renamed' where k = 2;
         insert into keyless values (8, 'poison', 1);",
    );
    let status = exits_within(&mut run, Duration::from_secs(60)).expect("the apply stops on the refused row");
    assert!(!status.success());
    assert_eq!(my.value("select count(*) from `public`.`keyless` where b = 'before'"), Some("1".into()));
    my.execute("alter table `public`.`keyless` drop constraint no_poison");
    let mut run = Running::spawn(&mut migrate(&source, &target, slot, &[]));
    let lsn = source.current_lsn();
    wait_until(Duration::from_secs(60), "the rerun", || mysql_caught_up(&my, slot, &lsn));

    // Kill it, write more, restart: nothing lost, nothing twice.
    kill(&mut run, "-KILL");
    source.execute(
        "insert into \"Orders\" select g, 'r' || g, '{}', null from generate_series(600, 699) g;
         update \"Orders\" set remark = 'restarted' where id = 400;
         insert into keyless values (9, 'after', 2);",
    );
    let mut run = Running::spawn(&mut migrate(&source, &target, slot, &[]));
    let lsn = source.current_lsn();
    wait_until(Duration::from_secs(60), "CDC after the restart", || mysql_caught_up(&my, slot, &lsn));
    kill(&mut run, "-TERM");

    for id in [1, 10] {
        check_mysql_matrix_row(&source, &my, id);
    }
    assert_eq!(my.value("select count(*) from `public`.`matrix` where id in (2, 3)"), Some("0".into()));
    let same_rows = |pg: &str, mysql: &str| {
        assert_eq!(my.query(mysql), source.query(pg), "{mysql}");
    };
    same_rows(
        "select id::text, remark, doc::text, case when flag then 'true' when not flag then 'false' end, extra::text
           from \"Orders\" o order by o.id",
        "select id, remark, doc, flag, extra from `public`.`Orders` order by id",
    );
    same_rows(
        "select sku, qty::text from \"Sales\".items order by convert_to(sku, 'UTF8')",
        "select sku, qty from `Sales`.`items` order by binary sku",
    );
    same_rows("select k::text, w from plain p order by p.k", "select k, w from `public`.`plain` order by k");
    same_rows(
        "select a::text, b, c::text from keyless t order by t.a, t.b",
        "select a, b, c from `public`.`keyless` order by a, b",
    );
    same_rows(
        "select id::text, to_char(t at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') from newt",
        "select id, t from `public`.`newt`",
    );
}
