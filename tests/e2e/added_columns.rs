//! ADD COLUMN ... DEFAULT during CDC, on every target kind: the rows already there get the
//! value the source gave them (a constant of each type, and now() evaluated once by the
//! source), NOT NULL comes back, and rows written later carry their own values.

use pgdms_tests::mariadb::MariaDb;
use pgdms_tests::{assert_same_rows, pgdms_apply, Cluster};
use rusqlite::types::Value;
use serde_json::Value as Json;
use std::process::Stdio;

const ADDED: &str = r"
    alter table p add column disc boolean not null default false,
                  add column n int not null default 42,
                  add column amount numeric(8,2) not null default 1.10,
                  add column label text not null default 'it''s',
                  add column born date not null default '2024-02-29',
                  add column stamp timestamptz not null default now(),
                  add column raw bytea not null default '\x00ff',
                  add column ratio double precision not null default 0.1;
    alter table p add column later int default 7;
    insert into p (id, name) values (4, 'after');
    update p set n = 43 where id = 2;";

/// The columns `ADDED` gives `p` with NOT NULL.
const NOT_NULL: [&str; 8] = ["disc", "n", "amount", "label", "born", "stamp", "raw", "ratio"];

/// A source with `p` (three rows) and the extension, after the DDL's session moved to a
/// zone of its own: the value of now() must not depend on the session that added it.
fn source() -> Cluster {
    let source = Cluster::start();
    source.execute(
        "create extension pgdms;
         create table p (id int primary key, name text);
         insert into p values (1, 'n1'), (2, 'n2'), (3, 'n3');",
    );
    source
}

fn migrate_until(source: &Cluster, target: &str, slot: &str) {
    let until = source.current_lsn();
    let out = pgdms_apply()
        .args(["migrate", "--source", &source.conninfo("postgres"), "--target", target, "--slot", slot])
        .args(["--until", &until])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Loads `p`, then adds the columns on the source during CDC and applies that.
fn load_then_add_columns(source: &Cluster, target: &str, slot: &str) {
    migrate_until(source, target, slot);
    let mut client = source.connect("postgres");
    client.batch_execute(&format!("set timezone = 'Asia/Kolkata'; set datestyle = 'SQL, DMY'; {ADDED}")).unwrap();
    migrate_until(source, target, slot);
}

/// Source texts of row `id`, in UTC.
fn source_row(source: &Cluster, exprs: &str, id: i32) -> Vec<Option<String>> {
    let mut client = source.connect("postgres");
    client.batch_execute("set timezone = 'UTC'; set extra_float_digits = 1").unwrap();
    pgdms_tests::query_text(&mut client, &format!("select {exprs} from p where id = {id}")).swap_remove(0)
}

#[test]
fn a_postgres_target_gets_the_source_values_not_its_own_evaluation() {
    let source = source();
    let target = Cluster::start_target();
    load_then_add_columns(&source, &target.target_conninfo("postgres"), "added_pg");
    // Every value, now()'s included, to the microsecond.
    assert_same_rows(&source, &target, &["p"]);
    let shape = "select column_name, column_default, is_nullable from information_schema.columns
                  where table_name = 'p' order by ordinal_position";
    assert_eq!(target.query(shape), source.query(shape), "defaults and NOT NULL as on the source");
}

#[test]
fn a_sqlite_target_gives_the_rows_there_the_source_values_and_not_null() {
    let source = source();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    load_then_add_columns(&source, &format!("sqlite:{}", path.display()), "added_sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    for id in 1..=4 {
        let s = source_row(&source, "name, n::text, stamp::text, later::text", id);
        let got: Vec<Value> = db
            .query_row(
                "select name, disc, n, amount, label, born, stamp, raw, ratio, later from p where id = ?1",
                [id],
                |r| (0..10).map(|i| r.get::<_, Value>(i)).collect(),
            )
            .unwrap();
        let text = |s: &str| Value::Text(s.into());
        let n: i64 = s[1].as_deref().unwrap().parse().unwrap();
        let want = vec![
            text(s[0].as_deref().unwrap()),
            text("false"),
            Value::Integer(n),
            text("1.10"),
            text("it's"),
            text("2024-02-29"),
            text(s[2].as_deref().unwrap()),
            Value::Blob(vec![0, 255]),
            Value::Real(0.1),
            s[3].as_deref().map_or(Value::Null, |v| Value::Integer(v.parse().unwrap())),
        ];
        assert_eq!(got, want, "row {id}");
    }
    let not_null: Vec<String> = db
        .prepare("select name from pragma_table_info('p') where \"notnull\" = 1 and pk = 0 order by cid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(not_null, NOT_NULL);
}

#[test]
fn a_mysql_target_gives_the_rows_there_the_source_values_and_not_null() {
    let source = source();
    let my = MariaDb::start();
    load_then_add_columns(&source, &my.url(""), "added_mysql");
    for id in 1..=4 {
        let want = source_row(
            &source,
            "name, 'false', n::text, '1.10', label, '2024-02-29',
             to_char(stamp at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '00FF', '0.1', later::text",
            id,
        );
        let got = my.query(&format!(
            "select name, disc, n, amount, label, born, stamp, hex(raw), ratio, later from `public`.`p` where id = {id}"
        ));
        assert_eq!(got, [want], "row {id}");
    }
    let nullable = my.query(
        "select column_name from information_schema.columns
          where table_schema = 'public' and table_name = 'p' and is_nullable = 'NO' and column_key <> 'PRI'
          order by ordinal_position",
    );
    let want: Vec<Vec<Option<String>>> = NOT_NULL.iter().map(|c| vec![Some(c.to_string())]).collect();
    assert_eq!(nullable, want);
}

#[test]
fn the_json_stream_says_what_the_rows_there_hold_in_an_added_column() {
    let source = source();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    load_then_add_columns(&source, &format!("jsonl:{}", path.display()), "added_jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let added: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|m| m["metadata"]["operation"] == "add-column")
        .collect();
    let stamp = source_row(&source, "stamp::text", 1).swap_remove(0).unwrap();
    let got: Vec<(String, Json, Json)> = added
        .iter()
        .map(|m| {
            let d = &m["data"];
            (d["column"].as_str().unwrap().to_string(), d["existing-rows-value"].clone(), d["not-null"].clone())
        })
        .collect();
    let want: Vec<(String, Json, Json)> = [
        ("disc", Json::from("false"), true),
        ("n", Json::from(42), true),
        ("amount", Json::from("1.10"), true),
        ("label", Json::from("it's"), true),
        ("born", Json::from("2024-02-29"), true),
        ("stamp", Json::from(stamp), true),
        ("raw", Json::from("AP8="), true),
        ("ratio", Json::from(0.1), true),
        ("later", Json::from(7), false),
    ]
    .into_iter()
    .map(|(c, v, nn)| (c.to_string(), v, Json::from(nn)))
    .collect();
    assert_eq!(got, want);
}
