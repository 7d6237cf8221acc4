//! The pgdms output plugin, decoded through `pgdms-apply dump` and pg_recvlogical on real
//! clusters.

use pgdms_tests::matrix::{setup_matrix, MATRIX, ROWS};
use pgdms_tests::{of_type, pgdms_apply, Cluster};
use serde_json::Value as Json;

/// Each column as its type's output function writes it (the simple-query protocol returns
/// exactly that), with money as its numeric value.
fn source_text(db: &Cluster) -> Vec<Vec<Option<String>>> {
    let exprs: Vec<String> = MATRIX.iter().map(|(c, _, _, cast)| format!("{c}{cast}")).collect();
    let mut client = db.connect("postgres");
    client.batch_execute("set timezone = 'UTC'; set extra_float_digits = 1").unwrap();
    pgdms_tests::query_text(&mut client, &format!("select {} from matrix order by id", exprs.join(", ")))
}

fn text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => panic!("a value is text or null, not {other}"),
    }
}

#[test]
fn every_type_of_the_reference_table_decodes_to_the_sources_own_text() {
    let db = Cluster::start();
    setup_matrix(&db);
    // Huge numeric: 1000 digits before and after the point.
    let big = format!("{}.{}", "9".repeat(1000), "1".repeat(1000));
    let records = db.dump_new_slot(|db| {
        for row in ROWS {
            db.execute(&format!("insert into matrix values ({row})"));
        }
        db.execute(&format!(
            "insert into matrix (id, c_numfree, c_serial, c_smallserial, c_bigserial) values (4, '{big}', 0, 0, 0)"
        ));
    });

    // The relation record maps every column to the DMS type of the reference table.
    let relation = of_type(&records, "relation");
    assert_eq!(relation.len(), 1, "one relation record for one table: {relation:?}");
    let columns = relation[0]["columns"].as_array().unwrap();
    for (name, ty, dms, _) in MATRIX {
        let col = columns.iter().find(|c| c["name"] == *name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(col["dms_type"], *dms, "DMS type of {name} {ty}");
    }
    let col = |n: &str| columns.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(col("c_tstz")["dms_utc"], true);
    assert_eq!(col("c_timetz")["dms_with_offset"], true);
    assert_eq!(col("c_domain")["dms_fallback"], true, "a domain falls back to NCLOB text");
    assert_eq!(col("c_text")["dms_fallback"], false);
    assert_eq!(col("id")["primary_key"], true);
    assert_eq!(col("id")["key"], true);
    assert_eq!(col("id")["not_null"], true);
    assert_eq!(col("c_serial")["default"], "nextval('matrix_c_serial_seq'::regclass)");
    assert_eq!(col("c_varchar")["type_sql"], "character varying(20)");
    assert_eq!(col("c_enum")["type"], "public.mood");

    // Every value equals the source's text of it.
    let inserts = of_type(&records, "insert");
    let expected = source_text(&db);
    assert_eq!(inserts.len(), expected.len());
    for (insert, want) in inserts.iter().zip(&expected) {
        for ((name, ty, _, _), want) in MATRIX.iter().zip(want) {
            let got = text(&insert["new"][*name]);
            assert_eq!(&got, want, "{name} ({ty}) of row {}", insert["new"]["id"]);
        }
    }
    assert_eq!(inserts[3]["new"]["c_numfree"], big.as_str());
}

#[test]
fn pg_recvlogical_decodes_with_the_plugin() {
    let db = Cluster::start();
    db.execute("create table t (id int primary key, v text)");
    let recvlogical = pgdms_tests::pg_bindir().join("pg_recvlogical");
    let conn = db.conninfo("postgres");
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new(&recvlogical).args(["-d", &conn, "--slot", "rl"]).args(args).output().unwrap();
        assert!(out.status.success(), "pg_recvlogical {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["--create-slot", "-P", "pgdms"]);
    db.execute("insert into t values (1, 'one'), (2, 'two')");
    db.execute("delete from t where id = 1");
    let endpos = db.current_lsn();
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let proto = format!("proto_version={}", pgdms_proto::PROTO_VERSION);
    run(&["--start", "--no-loop", "-o", &proto, "-o", "origin=any", "--endpos", &endpos, "-f", path]);

    // pg_recvlogical writes each message followed by a newline. A message holds a
    // transaction's records, which delimit themselves and end with its Commit.
    let bytes = std::fs::read(path).unwrap();
    let mut rest = &bytes[..];
    let mut kinds = Vec::new();
    let mut inserted = Vec::new();
    let mut messages = 0;
    while !rest.is_empty() {
        let (record, tail) = pgdms_proto::Record::decode_prefix(rest).expect("a pgdms record");
        if let pgdms_proto::Record::Insert(i) = &record {
            inserted.push(i.new[1].to_pg_text().unwrap().into_owned());
        }
        let ends_message = matches!(record, pgdms_proto::Record::Commit(_));
        kinds.push(format!("{record:?}").split(['(', ' ']).next().unwrap().to_string());
        rest = tail;
        if ends_message {
            assert_eq!(rest.first(), Some(&b'\n'), "a message per transaction");
            rest = &rest[1..];
            messages += 1;
        }
    }
    assert_eq!(kinds, ["Startup", "Begin", "Relation", "Insert", "Insert", "Commit", "Begin", "Delete", "Commit"]);
    assert_eq!(messages, 2);
    assert_eq!(inserted, ["one", "two"]);
}

#[test]
fn a_10mb_value_arrives_whole_and_untouched_it_arrives_as_unchanged() {
    let db = Cluster::start();
    db.execute(
        "create table big (id int primary key, n int, doc text); alter table big alter column doc set storage external",
    );
    let records = db.dump_new_slot(|db| {
        db.execute("insert into big select 1, 0, string_agg(md5(i::text), '') from generate_series(1, 327680) i");
        db.execute("update big set n = 1");
        db.execute("update big set doc = doc || 'x'");
        db.execute("delete from big");
    });
    let want = db.value("select string_agg(md5(i::text), '') from generate_series(1, 327680) i");
    assert_eq!(want.len(), 10 * 1024 * 1024);
    let inserts = of_type(&records, "insert");
    assert_eq!(inserts[0]["new"]["doc"].as_str().unwrap(), want, "the inserted 10 MB value");
    let updates = of_type(&records, "update");
    assert_eq!(updates[0]["new"]["doc"], serde_json::json!({"unchanged_toast": true}));
    assert_eq!(updates[0]["new"]["n"], "1");
    assert_eq!(
        updates[1]["new"]["doc"].as_str().unwrap().len(),
        want.len() + 1,
        "a changed TOASTed value is sent whole"
    );
    assert_eq!(of_type(&records, "delete")[0]["old"], serde_json::json!({"id": "1"}));
}

#[test]
fn old_images_follow_the_replica_identity() {
    let db = Cluster::start();
    db.execute(
        "create table r_default (id int primary key, v text);
         create table r_full (id int primary key, v text); alter table r_full replica identity full;
         create table r_index (a int not null, b int not null, v text); create unique index r_index_ab on r_index (a, b);
         alter table r_index replica identity using index r_index_ab;
         create table r_nothing (id int primary key, v text); alter table r_nothing replica identity nothing;
         create table r_nokey (id int, v text);",
    );
    let records = db.dump_new_slot(|db| {
        db.execute(
            "insert into r_default values (1, 'a'); update r_default set v = 'b'; update r_default set id = 2; delete from r_default;
             insert into r_full values (1, 'a'); update r_full set v = 'b'; delete from r_full;
             insert into r_index values (1, 1, 'a'); update r_index set v = 'b'; update r_index set b = 2; delete from r_index;
             insert into r_nothing values (1, 'a'); update r_nothing set v = 'b'; delete from r_nothing;
             insert into r_nokey values (1, 'a'); update r_nokey set v = 'b'; delete from r_nokey;",
        );
    });
    let changes = |table: &str, kind: &str| -> Vec<(Json, Json)> {
        records
            .iter()
            .filter(|r| r["table"] == table && r["type"] == kind)
            .map(|r| (r["old"].clone(), r["old_kind"].clone()))
            .collect()
    };
    let relation =
        |table: &str| records.iter().find(|r| r["type"] == "relation" && r["name"] == table).unwrap().clone();
    use serde_json::json;
    let none = (Json::Null, Json::Null);

    assert_eq!(relation("r_default")["replica_identity"], "default");
    assert_eq!(
        changes("r_default", "update"),
        [none.clone(), (json!({"id": "1"}), json!("key"))],
        "old key only when the key changed"
    );
    assert_eq!(changes("r_default", "delete"), [(json!({"id": "2"}), json!("key"))]);

    assert_eq!(relation("r_full")["replica_identity"], "full");
    assert_eq!(changes("r_full", "update"), [(json!({"id": "1", "v": "a"}), json!("full"))]);
    assert_eq!(changes("r_full", "delete"), [(json!({"id": "1", "v": "b"}), json!("full"))]);

    let idx = relation("r_index");
    assert_eq!(idx["replica_identity"], "index");
    let keys: Vec<_> =
        idx["columns"].as_array().unwrap().iter().filter(|c| c["key"] == true).map(|c| c["name"].clone()).collect();
    assert_eq!(keys, [json!("a"), json!("b")]);
    assert_eq!(changes("r_index", "update"), [none.clone(), (json!({"a": "1", "b": "1"}), json!("key"))]);
    assert_eq!(changes("r_index", "delete"), [(json!({"a": "1", "b": "2"}), json!("key"))]);

    // Without an identity the change is still sent, without an old image: the consumer can
    // report it instead of silently missing it.
    assert_eq!(relation("r_nothing")["replica_identity"], "nothing");
    assert_eq!(changes("r_nothing", "update"), std::slice::from_ref(&none));
    assert_eq!(changes("r_nothing", "delete"), std::slice::from_ref(&none));
    assert_eq!(changes("r_nokey", "update"), std::slice::from_ref(&none));
    assert_eq!(changes("r_nokey", "delete"), [none]);
    assert!(relation("r_nokey")["columns"].as_array().unwrap().iter().all(|c| c["key"] == false));
}

#[test]
fn names_keep_their_case_spaces_quotes_and_unicode() {
    let db = Cluster::start();
    let tables = [
        r#""Sch Ema"."MyTable""#,
        r#""Sch Ema"."my table""#,
        r#"public."we""ird""#,
        r#"public."tåble ü""#,
        r#"public."Case""#,
        r#"public."case""#,
    ];
    db.execute(r#"create schema "Sch Ema""#);
    for (i, t) in tables.iter().enumerate() {
        db.execute(&format!(
            r#"create table {t} ("Id" int primary key, "a ""b"" ü" text); insert into {t} values (0, 'before')"#
        ));
        let _ = i;
    }
    let records = db.dump_new_slot(|db| {
        for (i, t) in tables.iter().enumerate() {
            db.execute(&format!(
                r#"insert into {t} values ({}, 'x'); update {t} set "Id" = -"Id" where "Id" = 0"#,
                i + 1
            ));
        }
    });
    let names: Vec<(String, String)> = of_type(&records, "relation")
        .iter()
        .map(|r| (r["schema"].as_str().unwrap().to_string(), r["name"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("Sch Ema", "MyTable"),
        ("Sch Ema", "my table"),
        ("public", "we\"ird"),
        ("public", "tåble ü"),
        ("public", "Case"),
        ("public", "case"),
    ]
    .iter()
    .map(|(s, n)| (s.to_string(), n.to_string()))
    .collect();
    assert_eq!(names, expected);
    let oids: std::collections::HashSet<_> = of_type(&records, "relation").iter().map(|r| r["oid"].clone()).collect();
    assert_eq!(oids.len(), 6, "tables differing only by case are distinct relations");
    for (i, insert) in of_type(&records, "insert").iter().enumerate() {
        assert_eq!(insert["schema"], expected[i].0.as_str());
        assert_eq!(insert["table"], expected[i].1.as_str());
        assert_eq!(insert["new"]["Id"], (i + 1).to_string());
        assert_eq!(insert["new"]["a \"b\" ü"], "x");
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_the_server_keeps_running() {
    let db = Cluster::builder().setting("output_plugin_libraries", "'pgoutput, test_decoding'").start();
    let started = db.postmaster_start_time();
    // A superuser may allow the plugin for its own session, to create the slot.
    db.execute("set output_plugin_libraries = 'pgdms'; select pg_create_logical_replication_slot('s', 'pgdms')");

    let err = db
        .connect("postgres")
        .batch_execute("set output_plugin_libraries = 'pgdms'; select * from pg_logical_slot_peek_binary_changes('s', null, null, 'colour', 'blue')")
        .unwrap_err();
    let e = err.as_db_error().expect("a server error");
    assert_eq!(e.message(), "unknown pgdms option \"colour\"");
    assert_eq!(e.hint(), Some("The pgdms output plugin accepts: proto_version, origin."));

    let err = db
        .connect("postgres")
        .batch_execute("set output_plugin_libraries = 'pgdms'; select * from pg_logical_slot_peek_binary_changes('s', null, null, 'origin', 'some')")
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("invalid value \"some\" for pgdms option \"origin\""));

    // A wrong protocol version through pgdms-apply: a clear message and a non-zero exit.
    let out = pgdms_apply()
        .args(["dump", "--source", &db.conninfo("postgres"), "--slot", "s", "--proto-version", "99", "--endpos", "0/1"])
        .env("PGOPTIONS", "-c output_plugin_libraries=pgdms")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pgdms proto_version 99 is not supported"), "{stderr}");
    assert!(stderr.contains("HINT: Use a pgdms-apply of the same release"), "{stderr}");

    // A REPLICATION role that is not a superuser cannot widen output_plugin_libraries.
    db.execute("create role repl login replication");
    let out = pgdms_apply()
        .args(["dump", "--source", &db.conninfo_as("postgres", "repl"), "--slot", "s", "--endpos", "0/1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("output_plugin_libraries"), "the error names the setting to change: {stderr}");

    // A malformed connection string and an unknown slot.
    let out = pgdms_apply().args(["dump", "--source", "port=notanumber", "--slot", "s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid port value \"notanumber\""));
    let out = pgdms_apply().args(["dump", "--source", &db.conninfo("postgres"), "--slot", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replication slot \"nope\" does not exist"));

    assert_eq!(db.postmaster_start_time(), started, "the server did not restart");
    assert_eq!(db.value("select 1"), "1");
}

#[test]
fn truncate_lists_every_table_it_emptied_and_its_options() {
    let db = Cluster::start();
    db.execute(
        "create table parent (id int primary key); create table child (id int primary key, p int references parent);
         create table lone (id serial primary key); insert into parent values (1); insert into child values (1, 1);",
    );
    let records = db.dump_new_slot(|db| {
        db.execute("truncate parent cascade");
        db.execute("truncate lone restart identity");
    });
    let truncates = of_type(&records, "truncate");
    assert_eq!(truncates.len(), 2);
    let mut tables: Vec<_> =
        truncates[0]["tables"].as_array().unwrap().iter().map(|t| t["table"].as_str().unwrap()).collect();
    tables.sort();
    assert_eq!(tables, ["child", "parent"]);
    assert_eq!(truncates[0]["cascade"], true);
    assert_eq!(truncates[0]["restart_identity"], false);
    assert_eq!(truncates[1]["tables"], serde_json::json!([{"schema": "public", "table": "lone"}]));
    assert_eq!(truncates[1]["restart_identity"], true);
}

#[test]
fn logical_messages_are_passed_on() {
    let db = Cluster::start();
    let records = db.dump_new_slot(|db| {
        db.execute("select pg_logical_emit_message(false, 'pfx', 'outside'); begin; select pg_logical_emit_message(true, 'pfx', '\\x00ff'::bytea); commit;");
    });
    let messages = of_type(&records, "message");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["transactional"], false);
    assert_eq!(messages[0]["content"], "outside");
    assert_eq!(messages[1]["transactional"], true);
    assert_eq!(messages[1]["content_hex"], "00ff");
    let kinds: Vec<_> = records.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["startup", "message", "begin", "message", "commit"]);
}

#[test]
fn origin_none_skips_changes_applied_under_a_replication_origin() {
    let db = Cluster::start();
    db.execute("create table t (id int primary key); select pg_replication_origin_create('upstream')");
    db.create_slot("any");
    db.create_slot("local");
    db.execute("select pg_replication_origin_session_setup('upstream'); insert into t values (1)");
    db.execute("insert into t values (2)");
    let ids = |records: Vec<Json>| -> Vec<String> {
        of_type(&records, "insert").iter().map(|r| r["new"]["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(db.dump("any", &["--origin", "any"])), ["1", "2"]);
    assert_eq!(ids(db.dump("local", &["--origin", "none"])), ["2"]);
}

#[test]
fn the_extensions_own_tables_never_reach_a_consumer() {
    let db = Cluster::start();
    db.execute("create extension pgdms; create table ours (id int); alter extension pgdms add table ours; create table theirs (id int)");
    let records = db.dump_new_slot(|db| {
        db.execute("insert into ours values (1); insert into theirs values (2); insert into ours values (3)")
    });
    let tables: Vec<_> = records.iter().filter_map(|r| r["table"].as_str().or(r["name"].as_str())).collect();
    assert_eq!(tables, ["theirs", "theirs"], "only the relation record and insert of the user's table");
    // A transaction touching only our tables produces nothing at all.
    let records = db.dump_new_slot(|db| db.execute("insert into ours values (4)"));
    assert!(records.is_empty(), "{records:?}");
}

#[test]
fn relation_records_follow_schema_changes_and_partitions() {
    let db = Cluster::start();
    db.execute(
        "create table m (id int primary key, v text);
         create table p (id int, region text not null, primary key (id, region)) partition by list (region);
         create table p_eu partition of p for values in ('eu');",
    );
    let records = db.dump_new_slot(|db| {
        db.execute("insert into m values (1, 'a')");
        db.execute("vacuum analyze m");
        db.execute("insert into m values (2, 'b')");
        db.execute(
            "begin; alter table m add column n int default 7 not null; insert into m values (3, 'c'); commit;
             alter table m alter column v set default 'dflt'; insert into m (id) values (4);",
        );
        db.execute("insert into p values (1, 'eu')");
    });
    let relations: Vec<_> = of_type(&records, "relation").into_iter().filter(|r| r["name"] == "m").collect();
    assert_eq!(relations.len(), 3, "sent first, after ADD COLUMN, after SET DEFAULT; not after VACUUM ANALYZE");
    assert_eq!(relations[1]["columns"][2]["name"], "n");
    assert_eq!(relations[1]["columns"][2]["default"], "7");
    assert_eq!(relations[1]["columns"][2]["not_null"], true);
    assert_eq!(relations[2]["columns"][1]["default"], "'dflt'::text");
    let inserts = of_type(&records, "insert");
    assert_eq!(inserts[2]["new"], serde_json::json!({"id": "3", "v": "c", "n": "7"}));
    assert_eq!(inserts[3]["new"], serde_json::json!({"id": "4", "v": "dflt", "n": "7"}));

    let part = of_type(&records, "relation").into_iter().find(|r| r["name"] == "p_eu").unwrap().clone();
    assert_eq!(part["partition_parent"]["name"], "p");
    assert_eq!(part["partition_parent"]["schema"], "public");
    assert_eq!(inserts[4]["table"], "p_eu");
}

#[test]
fn column_attributes_are_described() {
    let db = Cluster::start();
    db.execute(
        r#"create table attrs (
             id bigint generated always as identity primary key,
             code int generated by default as identity,
             name text collate "C",
             twice int generated always as (code * 2) stored,
             dropped int,
             last int);
           alter table attrs drop column dropped;"#,
    );
    let records = db.dump_new_slot(|db| db.execute("insert into attrs (name, last) values ('x', 9)"));
    let cols = of_type(&records, "relation")[0]["columns"].as_array().unwrap().clone();
    let names: Vec<_> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["id", "code", "name", "twice", "last"], "dropped columns are left out");
    assert_eq!(cols[0]["identity"], "always");
    assert_eq!(cols[1]["identity"], "bydefault");
    assert_eq!(cols[2]["collation"], "\"C\"");
    assert_eq!(cols[3]["generated"], true);
    assert_eq!(cols[4]["attnum"], 6);
    assert_eq!(
        of_type(&records, "insert")[0]["new"],
        serde_json::json!({"id": "1", "code": "1", "name": "x", "twice": "2", "last": "9"})
    );
}

#[test]
fn transactions_without_published_changes_produce_no_output() {
    let db = Cluster::start();
    db.execute("create table t (id int)");
    let records = db.dump_new_slot(|db| {
        db.execute("create table scratch (id int)");
        db.execute("begin; select txid_current(); commit");
        db.execute("insert into t values (1)");
    });
    let kinds: Vec<_> = records.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["startup", "begin", "relation", "insert", "commit"]);
    let begin = &records[1];
    let commit = &records[4];
    assert_eq!(begin["xid"], commit["xid"]);
    assert_eq!(begin["commit_lsn"], commit["commit_lsn"]);
    assert!(commit["end_lsn"].as_str().unwrap() > "0/0");
    assert_eq!(begin["commit_time"], commit["commit_time"]);
}

#[test]
fn renaming_a_schema_a_type_or_a_partition_parent_resends_relation_records() {
    let db = Cluster::start();
    db.execute(
        "create schema app; create type app.color as enum ('red');
         create table app.t (id int primary key, c app.color);
         create table parent (id int, k int) partition by range (k);
         create table child partition of parent for values from (0) to (10);
         create schema xpg_catalog; create type xpg_catalog.flag as enum ('on');
         create table odd (id int primary key, f xpg_catalog.flag);",
    );
    let records = db.dump_new_slot(|db| {
        db.execute(
            "insert into app.t values (1, 'red'); insert into child values (1, 1); insert into odd values (1, 'on')",
        );
        db.execute("alter schema app rename to shop");
        db.execute("insert into shop.t values (2, 'red')");
        db.execute("alter type shop.color rename to colour");
        db.execute("insert into shop.t values (3, 'red')");
        db.execute("alter table parent rename to mother");
        db.execute("insert into child values (2, 2)");
    });
    let t: Vec<_> = of_type(&records, "relation").into_iter().filter(|r| r["name"] == "t").collect();
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!((t[0]["schema"].as_str(), t[0]["columns"][1]["type"].as_str()), (Some("app"), Some("app.color")));
    assert_eq!((t[1]["schema"].as_str(), t[1]["columns"][1]["type"].as_str()), (Some("shop"), Some("shop.color")));
    assert_eq!(t[2]["columns"][1]["type"], "shop.colour");
    let inserts = of_type(&records, "insert");
    assert_eq!(inserts[3]["schema"], "shop");
    let child: Vec<_> = of_type(&records, "relation").into_iter().filter(|r| r["name"] == "child").collect();
    assert_eq!(child.len(), 2);
    assert_eq!(child[1]["partition_parent"]["name"], "mother");
    let odd = of_type(&records, "relation").into_iter().find(|r| r["name"] == "odd").unwrap().clone();
    assert_eq!(odd["columns"][1]["type"], "xpg_catalog.flag", "only pg_catalog types are left unqualified");
}

#[test]
fn sessions_that_end_or_fail_in_one_backend_leave_the_server_healthy() {
    let db = Cluster::start();
    let started = db.postmaster_start_time();
    db.execute("create table t (id int primary key, v text)");
    db.create_slot("s");
    let mut client = db.connect("postgres");
    // The kinds of the records the SQL interface decodes.
    let decode = |client: &mut pgdms_tests::postgres::Client, sql: &str| -> Vec<String> {
        let mut kinds = Vec::new();
        for row in client.query(sql, &[]).unwrap() {
            let data: Vec<u8> = row.get(0);
            for record in pgdms_proto::Records::new(&data) {
                kinds.push(format!("{:?}", record.unwrap()).split(['(', ' ']).next().unwrap().to_string());
            }
        }
        kinds
    };
    let changes = format!(
        "select data from pg_logical_slot_get_binary_changes('s', null, null, 'proto_version', '{}')",
        pgdms_proto::PROTO_VERSION
    );
    for round in 0..20 {
        client
            .batch_execute(&format!("insert into t values ({round}, 'v'); alter table t add column c{round} int"))
            .unwrap();
        let kinds = decode(&mut client, &changes);
        assert_eq!(
            kinds,
            ["Startup", "Begin", "Relation", "Insert", "Commit"],
            "round {round}: each session starts afresh"
        );
        // A session that fails in its startup callback, in the same backend.
        assert!(client
            .batch_execute("select * from pg_logical_slot_peek_binary_changes('s', null, null, 'bad', 'x')")
            .is_err());
    }
    // Catalog churn with no decoding session running is not recorded anywhere.
    for i in 0..200 {
        client.batch_execute(&format!("create temp table tmp{i} (x int); drop table tmp{i}")).unwrap();
    }
    client.batch_execute("insert into t (id) values (1000)").unwrap();
    assert_eq!(decode(&mut client, &changes), ["Startup", "Begin", "Relation", "Insert", "Commit"]);
    assert_eq!(db.postmaster_start_time(), started);
}
