//! Heterogeneous targets: SQLite and the JSON-lines stream, full load and CDC through the
//! DMS type mapping, on real clusters.

use pgdms_tests::matrix::{setup_matrix, MATRIX, ROWS};
use pgdms_tests::{pgdms_apply, wait_until, Cluster};
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
    let mut client = source.connect("postgres");
    client.batch_execute("set timezone = 'UTC'").unwrap();
    let rows =
        pgdms_tests::query_text(&mut client, &format!("select {} from {table} where id = {id}", exprs.join(", ")));
    rows[0]
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
         insert into plain values ('a', 1), ('b', 2);",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let target = format!("sqlite:{}", path.display());
    let mut run = migrate(&source, &target, "to_sqlite", &[]).spawn().unwrap();
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
         insert into plain values ('d');",
    );
    let lsn = source.current_lsn();
    wait_until(Duration::from_secs(60), "CDC to catch up", || {
        db.query_row("select end_lsn from pgdms_apply_progress", [], |r| r.get::<_, String>(0))
            .map(|l| pgdms_tests::lsn_ge(&l, &lsn))
            .unwrap_or(false)
    });
    // Kill it mid-stream, write more, restart: nothing lost, nothing twice.
    kill(&mut run, "-KILL");
    source.execute(
        "insert into \"Orders\" select g, 'r' || g, '{}', null from generate_series(600, 699) g;
         update \"Orders\" set remark = 'restarted' where id = 400;",
    );
    let mut run = migrate(&source, &target, "to_sqlite", &[]).spawn().unwrap();
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

/// The stream's messages, parsed.
fn messages(path: &std::path::Path) -> Vec<Json> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.jsonl");
    let target = format!("jsonl:{}", path.display());
    let mut run = migrate(&source, &target, "to_stream", &[]).spawn().unwrap();
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
    kill(&mut run, "-KILL");
    source.execute("insert into t (id, v) select g, 'late' from generate_series(300, 349) g; update t set v = 'last' where id = 4;");
    let mut run = migrate(&source, &target, "to_stream", &[]).spawn().unwrap();
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
    // The load: 200 + 2 rows, values through the mapping.
    let load: Vec<&&Json> = unique.iter().filter(|m| m["metadata"]["operation"] == "load").collect();
    assert_eq!(load.len(), 202);
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
