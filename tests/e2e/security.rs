//! The security model, attack by attack, on real clusters: each test performs an attack a
//! source role (an application, a table owner, the database owner) could try, and checks it
//! gains nothing on the target or on the source.

use pgdms_tests::{cdc, of_type, pgdms_apply, Cluster, TARGET_ROLE};
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

/// A DDL message as pgdms's capture would write it: CREATE TABLE public.`name` (a `ty`),
/// the column's default `default`.
fn create_table_message(name: &str, ty: &str, default: Option<&str>) -> String {
    json!({
        "command_tag": "CREATE TABLE", "object_identity": format!("public.{name}"), "query": "",
        "object": {"Table": {"before": null, "after": {
            "oid": 1, "schema": "public", "name": name, "kind": "Table", "persistence": "p",
            "replica_identity": "Default", "primary_key": null, "partition_key": null, "partition_of": null,
            "columns": [{"attnum": 1, "name": "a", "type_oid": 23, "type_sql": ty, "type_name": ty,
                         "type_modifier": -1, "not_null": false, "default": default, "generated": null,
                         "identity": "None", "collation": null}]}}}
    })
    .to_string()
}

fn table_def(name: &str) -> serde_json::Value {
    json!({"oid": 2, "schema": "public", "name": name, "kind": "Table", "persistence": "p",
           "replica_identity": "Default", "columns": [], "primary_key": null, "partition_key": null,
           "partition_of": null})
}

fn is_superuser(c: &Cluster, role: &str) -> String {
    c.value(&format!("select rolsuper from pg_roles where rolname = '{role}'"))
}

fn exists(c: &Cluster, table: &str) -> bool {
    c.value(&format!("select to_regclass('{table}') is not null")) == "t"
}

#[test]
fn forged_ddl_messages_are_dropped_reported_and_change_nothing() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute(
        "create table t (id int primary key, v text);
         create table secret (id int primary key);
         create role mallory login; create schema ms authorization mallory;",
    );
    target.execute("create role mallory login");
    source.copy_schema_to(&target);
    source.execute("create extension pgdms");
    source.create_slot("forged");
    source.create_slot("seen");

    // mallory may connect, and nothing else: no REPLICATION, no right on t or secret. Anyone
    // may call pg_logical_emit_message.
    let mut mallory = source.connect_as("postgres", "mallory");
    let emit = "select pg_logical_emit_message(true, 'pgdms.ddl', $1::text)";
    let injected = create_table_message("evil", "int); ALTER ROLE mallory SUPERUSER; --", None);
    let mut tx = mallory.transaction().unwrap();
    let xid: i64 = tx.query_one("select txid_current()", &[]).unwrap().get(0);
    tx.execute(emit, &[&injected]).unwrap();
    tx.commit().unwrap();
    let drop_secret = json!({"command_tag": "DROP TABLE", "object_identity": "public.secret", "query": "",
                             "object": {"Table": {"before": table_def("secret"), "after": null}}});
    mallory.execute(emit, &[&drop_secret.to_string()]).unwrap();
    let rewrite = json!({"command_tag": "ALTER TABLE", "object_identity": "public.t", "query": "",
                         "object": {"Rewrite": {"oid": 3, "schema": "public", "name": "t", "reason": 4}}});
    let failed = json!({"command_tag": "ALTER TABLE", "object_identity": "", "query": "",
                        "object": {"CaptureFailed": {"error": "forged"}}});
    mallory
        .batch_execute(&format!(
            "begin; select pg_logical_emit_message(true, 'pgdms.ddl', '{rewrite}');
             select pg_logical_emit_message(true, 'pgdms.ddl', '{failed}'); commit"
        ))
        .unwrap();
    // Next to a genuine capture of her own DDL, in the same transaction: that one passes,
    // the forged one does not.
    let mut tx = mallory.transaction().unwrap();
    tx.batch_execute("create table ms.m (id int primary key)").unwrap();
    tx.execute(emit, &[&create_table_message("evil2", "int); DROP TABLE public.secret; --", None)]).unwrap();
    tx.commit().unwrap();
    mallory.execute("select pg_logical_emit_message(false, 'pgdms.ddl', $1::text)", &[&injected]).unwrap();
    source.execute("insert into t values (1, 'after')");

    let until = source.current_lsn();
    let out = cdc(&source, &target, "forged", &["--until", &until]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!exists(&target, "public.evil") && !exists(&target, "public.evil2"), "a forged CREATE was applied");
    assert!(exists(&target, "public.secret"), "a forged DROP was applied");
    assert_eq!(is_superuser(&target, "mallory"), "f");
    assert_eq!(target.value("select count(*) from pgdms_apply.apply_reload_needed"), "0", "a forged rewrite was taken");
    assert!(exists(&target, "ms.m"), "the genuine DDL must still replicate");
    assert_eq!(target.rows("t"), ["(1,after)"]);

    // Reported by the apply, with the transaction that sent it, and on the source.
    let reports: Vec<&str> = stderr.lines().filter(|l| l.contains("dropped a forged record")).collect();
    assert_eq!(reports.len(), 6, "{stderr}");
    assert!(reports[0].contains(&format!("xid={xid}")) && reports[0].contains("public.evil"), "{}", reports[0]);
    assert!(reports.iter().any(|l| l.contains("xid=none")), "the non-transactional one: {stderr}");
    assert!(source.log().contains("dropped a forged logical message with prefix \"pgdms.ddl\""));
    // And to any consumer of the stream.
    let records = source.dump("seen", &[]);
    assert_eq!(of_type(&records, "rejected").len(), 6, "{records:#?}");
    let ddl = of_type(&records, "ddl");
    assert_eq!(ddl.len(), 1, "only the genuine capture: {ddl:#?}");
    assert_eq!(ddl[0]["object_identity"], "ms.m");
}

#[test]
fn a_vouched_for_message_still_gets_no_sql_past_the_apply() {
    // Even a message the plugin passes on (a superuser on the source wrote its audit row)
    // cannot steer the apply: type names are resolved on the target, expressions checked.
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key); create role mallory login");
    target.execute("create role mallory login");
    source.copy_schema_to(&target);
    source.execute("create extension pgdms");
    source.create_slot("vouched");
    let vouch = |message: &str| {
        source.execute(&format!(
            "do $do$ declare m bytea := convert_to($m${message}$m$, 'UTF8'); begin
               insert into pgdms.ddl_audit (c_tag, c_object_type, c_digest) values ('CREATE TABLE', 'table', sha256(m));
               perform pg_logical_emit_message(true, 'pgdms.ddl', m);
             end $do$"
        ))
    };
    vouch(&create_table_message("evil_type", "int); ALTER ROLE mallory SUPERUSER; --", None));
    vouch(&create_table_message("evil_default", "integer", Some("1) , b int DEFAULT (pg_read_file('/etc/passwd')")));
    source.execute("insert into t values (1)");
    let until = source.current_lsn();

    let out = cdc(&source, &target, "vouched", &["--until", &until]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused DDL stops the apply");
    assert!(stderr.contains("the source sent a type name that is not one"), "{stderr}");
    let out = cdc(&source, &target, "vouched", &["--until", &until, "--on-error", "log"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let errors = target.query("select error from pgdms_apply.apply_exceptions where operation = 'ddl' order by id");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0][0].as_deref().unwrap().contains("a type name that is not one"), "{errors:?}");
    assert!(errors[1][0].as_deref().unwrap().contains("an expression that is not one"), "{errors:?}");
    assert!(!exists(&target, "public.evil_type") && !exists(&target, "public.evil_default"));
    assert_eq!(is_superuser(&target, "mallory"), "f");
    assert_eq!(target.rows("t"), ["(1)"]);
}

/// alice owns schema app on the source; on the target the same role exists and the target
/// role may become it.
fn alice_setup(source: &Cluster, target: &Cluster, extra_source: &str) {
    source.execute("create role alice login; create schema app authorization alice");
    let mut alice = source.connect_as("postgres", "alice");
    alice.batch_execute(extra_source).unwrap();
    target.execute(&format!("create role alice; grant alice to {TARGET_ROLE}"));
}

#[test]
fn ddl_is_replayed_as_the_owner_and_never_as_a_superuser() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(
        &source,
        &target,
        "create table app.t (id int primary key); insert into app.t values (1);
         -- Takes back the login's rights if it can, and uses them if they are a superuser's.
         create function app.probe() returns text language plpgsql as $$
         begin
             begin reset role; exception when others then null; end;
             if (select rolsuper from pg_roles where rolname = current_user) then
                 execute 'alter role alice superuser';
             end if;
             return current_user;
         end $$;",
    );
    source.copy_schema_to(&target);
    target.execute(
        "alter schema app owner to alice; alter table app.t owner to alice; alter function app.probe() owner to alice;
         insert into app.t values (1)",
    );
    source.execute("create extension pgdms");
    source.create_slot("owner");
    // Defaults the source evaluated as alice; a superuser would give other values.
    source
        .connect_as("postgres", "alice")
        .batch_execute(
            "alter table app.t add column who text default current_user;
             alter table app.t add column su text default current_setting('is_superuser');
             insert into app.t (id) values (2);",
        )
        .unwrap();
    let until = source.current_lsn();

    // A superuser login is refused, saying why and what to do...
    let superuser = target.conninfo("postgres");
    let run = |target_conninfo: &str, extra: &[&str]| {
        pgdms_apply()
            .args(["cdc", "--source", &source.conninfo("postgres"), "--target", target_conninfo, "--slot", "owner"])
            .args(["--until", &until])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&superuser, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the target role \"postgres\" is a superuser") && stderr.contains("--target-role"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = run(&superuser, &["--target-role", "postgres"]);
    assert!(!out.status.success(), "--target-role may not name a superuser either");
    // Nor a role that may run programs on the server (COPY ... TO PROGRAM).
    target.execute("create role powerful; grant pg_execute_server_program to powerful");
    let out = run(&superuser, &["--target-role", "powerful"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("may become pg_execute_server_program"), "{stderr}");

    // ...and with --target-role the DDL runs as the table's owner, alice.
    let out = run(&superuser, &["--target-role", TARGET_ROLE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pgdms_tests::assert_same_rows(&source, &target, &["app.t"]);
    assert_eq!(target.rows("app.t"), ["(1,alice,off)", "(2,alice,off)"]);

    // Code that tries to take back the login's rights cannot: it runs in alice's gate.
    // A table created during CDC in alice's schema is hers.
    source
        .connect_as("postgres", "alice")
        .batch_execute(
            "alter table app.t add column p text default app.probe(); insert into app.t (id) values (3);
             create table app.t2 (id int primary key); insert into app.t2 values (1);",
        )
        .unwrap();
    pgdms_tests::catch_up(&source, &target, "owner", &[]);
    assert_eq!(is_superuser(&target, "alice"), "f");
    assert_eq!(is_superuser(&target, TARGET_ROLE), "f");
    assert_eq!(target.value("select p from app.t where id = 1"), "alice");
    assert_eq!(target.value("select relowner::regrole from pg_class where oid = 'app.t2'::regclass"), "alice");
    pgdms_tests::assert_same_rows(&source, &target, &["app.t", "app.t2"]);
}

#[test]
fn an_always_trigger_runs_with_its_owners_rights_only() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(
        &source,
        &target,
        "create table app.t (id int primary key, v text);
         create unlogged table app.seen (who text, su boolean);
         create function app.trig() returns trigger language plpgsql as $$
         begin
             insert into app.seen values (current_user, (select rolsuper from pg_roles where rolname = current_user));
             if (select rolsuper from pg_roles where rolname = current_user) then
                 execute 'alter role alice superuser';
             end if;
             -- Back to the login's rights, and through them to another owner's table.
             begin reset role; exception when others then null; end;
             begin perform set_config('role', 'none', false); exception when others then null; end;
             insert into app.seen values (current_user, (select rolsuper from pg_roles where rolname = current_user));
             begin
                 insert into public.bobs values (new.id);
             exception when others then null;
             end;
             return new;
         end $$;
         create trigger tr after insert on app.t for each row execute function app.trig();
         alter table app.t enable always trigger tr;
         insert into app.t values (1, 'loaded');",
    );
    // bob's table on the target only: the target role may write it (it may become bob).
    target.execute("create role bob; grant bob to pgdms_target; create table public.bobs (id int); alter table public.bobs owner to bob");
    source.execute("create extension pgdms");
    let mut migrate = pgdms_tests::Running::spawn(
        pgdms_apply()
            .args([
                "migrate",
                "--source",
                &source.conninfo("postgres"),
                "--target",
                &target.target_conninfo("postgres"),
            ])
            .args(["--slot", "always"])
            .stderr(Stdio::piped()),
    );
    pgdms_tests::wait_until(Duration::from_secs(60), "the migration to reach CDC", || {
        target.value("select to_regclass('pgdms_apply.migration') is not null") == "t"
            && target
                .query("select phase from pgdms_apply.migration where slot_name = 'always'")
                .first()
                .and_then(|r| r[0].clone())
                == Some("cdc".into())
    });
    source.connect_as("postgres", "alice").batch_execute("insert into app.t values (2, 'streamed')").unwrap();
    pgdms_tests::wait_until(Duration::from_secs(30), "the row on the target", || {
        target.value("select count(*) from app.t") == "2"
    });
    migrate.kill().unwrap();

    // pg_dump carried the trigger's state; the table is alice's on the target too.
    assert_eq!(target.value("select tgenabled from pg_trigger where tgname = 'tr'"), "A");
    assert_eq!(target.value("select relowner::regrole from pg_class where oid = 'app.t'::regclass"), "alice");
    // The trigger fired for the replicated row as alice, and stayed alice: it could neither
    // take the target role's rights back nor reach bob's table through them.
    let seen = target.query("select who, su::text from app.seen");
    assert_eq!(seen, vec![vec![Some("alice".into()), Some("false".into())]; 2]);
    assert_eq!(is_superuser(&target, "alice"), "f");
    assert_eq!(target.value("select count(*) from public.bobs"), "0");
}

#[test]
fn an_owner_cannot_turn_its_gate_into_a_function_that_runs_as_the_caller() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(&source, &target, "create table app.t (id int primary key)");
    source.copy_schema_to(&target);
    // On the target, alice's table has a trigger (the target's own, say) that tries to make
    // her gate SECURITY INVOKER, so that what goes through it would run as the target role.
    target.execute(
        "alter schema app owner to alice; alter table app.t owner to alice;
         create function app.tamper() returns trigger language plpgsql as $$
         begin
             execute format('alter function pgdms_gate.%I(text, text[]) security invoker',
                            'as_' || (select oid from pg_roles where rolname = current_user));
             return new;
         end $$;
         alter function app.tamper() owner to alice;
         create trigger tamper after insert on app.t for each row execute function app.tamper();
         alter table app.t enable always trigger tamper;",
    );
    source.execute("create extension pgdms");
    source.create_slot("tamper");
    source.execute("insert into app.t values (1)");
    source.execute("insert into app.t values (2)");
    let until = source.current_lsn();
    // One change per group: the first goes through the gate (which the trigger then
    // alters), the second is refused before it runs: nothing ever runs through an altered
    // gate (a new session makes the gate again, and checks it at every call).
    let one_by_one = ["--until", &until, "--batch-max-rows", "1", "--group-max-rows", "1"];
    let out = cdc(&source, &target, "tamper", &one_by_one).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("was altered"), "{stderr}");
    assert_eq!(target.rows("app.t"), ["(1)"], "the refused change's group is not committed");
}

#[test]
fn a_gate_ends_the_session_when_the_owners_code_leaves_something_in_it() {
    // What a SECURITY DEFINER function does not undo: a prepared statement made with SQL
    // (which could replace one of pgdms-apply's by name), a temporary object (which could
    // stand in for its staging table), a changed setting its statements depend on.
    let (source, target) = (Cluster::start(), Cluster::start_target());
    // And what runs at COMMIT, as the role current then (the target role): a cursor WITH
    // HOLD's query, and (before PostgreSQL 18) a deferred trigger.
    let tampers = [
        ("prepared", "execute 'prepare pgdms_s0 as select 1'"),
        ("temporary", "create temp table if not exists lookalike (id int)"),
        ("setting", "perform set_config('extra_float_digits', '0', false)"),
        ("cursor", "execute 'declare later cursor with hold for select current_user'"),
        ("deferred", "insert into app.ran_as values (current_user)"),
    ];
    let tables: String = tampers.iter().map(|(t, _)| format!("create table app.{t} (id int primary key);")).collect();
    alice_setup(&source, &target, &tables);
    source.copy_schema_to(&target);
    let mut setup = String::from(
        "alter schema app owner to alice; create table app.ran_as (who text); alter table app.ran_as owner to alice;",
    );
    for (t, tamper) in &tampers {
        let when = if *t == "deferred" { "constraint trigger" } else { "trigger" };
        let deferred = if *t == "deferred" { "deferrable initially deferred" } else { "" };
        setup += &format!(
            "alter table app.{t} owner to alice;
             create function app.{t}() returns trigger language plpgsql as $$ begin {tamper}; return new; end $$;
             alter function app.{t}() owner to alice;
             create {when} {t} after insert on app.{t} {deferred} for each row execute function app.{t}();
             alter table app.{t} enable always trigger {t};"
        );
    }
    target.execute(&setup);
    source.execute("create extension pgdms");
    source.create_slot("left");
    for (t, _) in &tampers {
        source.execute(&format!("insert into app.{t} values (1)"));
    }
    let until = source.current_lsn();
    for (t, _) in &tampers {
        // Even with --on-error=log: not a change to pass over, the session is not to be trusted.
        let out = cdc(&source, &target, "left", &["--until", &until, "--on-error", "log"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{t}: {stderr}");
        assert!(stderr.contains("the session was tampered with"), "{t}: {stderr}");
        assert_eq!(target.value(&format!("select count(*) from app.{t}")), "0", "{t}");
        target.execute(&format!("alter table app.{t} disable trigger {t}"));
    }
    assert_eq!(target.value("select count(*) from app.ran_as"), "0", "a deferred trigger ran");
    pgdms_tests::catch_up(&source, &target, "left", &[]);
    pgdms_tests::assert_same_rows(
        &source,
        &target,
        &["app.prepared", "app.temporary", "app.setting", "app.cursor", "app.deferred"],
    );
}

#[test]
fn code_running_as_the_target_role_cannot_act_as_an_owner_through_its_gate() {
    // The target role owns what the schema copy made (public.mine), so code on it runs as
    // the target role, which may act as alice: through her gate it could write her tables.
    // The gate serves only pgdms-apply's own call, as the statement it sends.
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(&source, &target, "create table app.t (id int primary key)");
    source.execute("create table public.mine (id int primary key)");
    source.copy_schema_to(&target);
    target.execute(
        "alter schema app owner to alice; alter table app.t owner to alice;
         create table app.victim (id int); alter table app.victim owner to alice;",
    );
    target.execute_as_target(&format!(
        "{VIA_ALICES_GATE}
         create trigger via_gate after insert on public.mine for each row execute function public.via_gate();
         alter table public.mine enable always trigger via_gate;"
    ));
    source.execute("create extension pgdms");
    source.create_slot("gate");
    source.execute("insert into app.t values (1)");
    source.execute("insert into public.mine values (1)");
    pgdms_tests::catch_up(&source, &target, "gate", &[]);
    assert_eq!(target.rows("app.t"), ["(1)"], "alice's row went through her gate");
    assert_eq!(target.value("select count(*) from app.victim"), "0", "the target role's code acted as alice");
    let outcome = target.value("select string_agg(error, '; ') from public.outcome");
    assert!(outcome.contains("may be called only by pgdms-apply"), "{outcome}");
}

/// A trigger function, the target role's, that tries to write alice's table app.victim
/// through her gate, and records the error it gets in public.outcome.
const VIA_ALICES_GATE: &str = "create table public.outcome (error text);
     create function public.via_gate() returns trigger language plpgsql as $$
     begin
         begin
             execute format('select pgdms_gate.%I($1, $2)', 'as_' || (select oid from pg_roles where rolname = 'alice'))
                 using 'insert into app.victim values (666)', '{}'::text[];
         exception when others then
             insert into public.outcome values (sqlerrm);
         end;
         return new;
     end $$;";

#[test]
fn a_commit_with_no_statement_text_is_no_call_of_pgdms_apply() {
    // A statement sent outside BEGIN commits at the protocol's Sync, when the server has no
    // statement text: a deferred trigger the target role's code put on a table of its own
    // (pgdms_apply.load_progress) fires then, and tries alice's gate.
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(&source, &target, "create table app.t (id int primary key); insert into app.t values (1)");
    source.copy_schema_to(&target);
    target.execute(
        "alter schema app owner to alice; alter table app.t owner to alice;
         create table app.victim (id int); alter table app.victim owner to alice;",
    );
    source.execute("create extension pgdms");
    let load = |slot: &str| {
        pgdms_apply()
            .args(["migrate", "--mode", "full-load", "--target-prep", "truncate", "--slot", slot])
            .args(["--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
            .output()
            .unwrap()
    };
    let first = load("first");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    target.execute_as_target(&format!(
        "{VIA_ALICES_GATE}
         create constraint trigger via_gate after insert or update on pgdms_apply.load_progress
             deferrable initially deferred for each row execute function public.via_gate();
         alter table pgdms_apply.load_progress enable always trigger via_gate;"
    ));
    let second = load("second");
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(target.value("select count(*) from app.victim"), "0", "the target role's code acted as alice");
    let outcome = target.value("select string_agg(error, '; ') from public.outcome");
    assert!(outcome.contains("may be called only by pgdms-apply"), "{outcome}");
}

#[test]
fn a_truncate_of_several_owners_tables_runs_no_trigger_of_theirs() {
    // --target-prep truncate empties every table in one TRUNCATE (foreign keys may want
    // that), which runs as the target role: alice's ALWAYS trigger for TRUNCATE would run
    // with the target role's rights, which reach bob's table.
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(&source, &target, "create table app.t (id int primary key); insert into app.t values (1)");
    source.execute("create table public.b (id int primary key); insert into public.b values (1)");
    source.copy_schema_to(&target);
    target.execute(
        "create role bob; grant bob to pgdms_target;
         alter schema app owner to alice; alter table app.t owner to alice; alter table public.b owner to bob;
         create table app.ran_as (who text); alter table app.ran_as owner to alice;
         create function app.on_truncate() returns trigger language plpgsql as $$
         begin insert into app.ran_as values (current_user); return null; end $$;
         alter function app.on_truncate() owner to alice;
         create trigger on_truncate after truncate on app.t for each statement execute function app.on_truncate();
         alter table app.t enable always trigger on_truncate;",
    );
    source.execute("create extension pgdms");
    let out = pgdms_apply()
        .args(["migrate", "--mode", "full-load", "--target-prep", "truncate", "--slot", "trunc"])
        .args(["--source", &source.conninfo("postgres"), "--target", &target.target_conninfo("postgres")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("a trigger of theirs fires for TRUNCATE") && stderr.contains("on_truncate"), "{stderr}");
    assert_eq!(target.value("select count(*) from app.ran_as"), "0", "alice's trigger ran as the target role");
}

#[test]
fn a_domains_check_runs_as_its_owner_in_a_large_batch_too() {
    // A batch this large goes through COPY into a staging table, which the target role
    // fills: the staging table's columns are text, so alice's domain checks run only inside
    // her gate.
    let (source, target) = (Cluster::start(), Cluster::start_target());
    alice_setup(
        &source,
        &target,
        "create unlogged table app.seen (who text);
         create function app.ok(v int) returns boolean language plpgsql as $$
         begin
             begin reset role; exception when others then null; end;
             insert into app.seen values (current_user);
             return v > 0;
         end $$;
         create domain app.positive as int check (app.ok(value));
         create table app.t (id int primary key, p app.positive);",
    );
    source.copy_schema_to(&target);
    target.execute(
        "alter schema app owner to alice; alter table app.t owner to alice; alter table app.seen owner to alice;
         alter function app.ok(int) owner to alice; alter domain app.positive owner to alice",
    );
    source.execute("create extension pgdms");
    source.create_slot("domain");
    source.execute("insert into app.t select i, i from generate_series(1, 6000) i");
    source.execute("update app.t set p = p + 1");
    pgdms_tests::catch_up(&source, &target, "domain", &[]);
    pgdms_tests::assert_same_rows(&source, &target, &["app.t"]);
    assert_eq!(target.query("select distinct who from app.seen"), vec![vec![Some("alice".to_string())]]);
}

#[test]
fn a_target_role_with_an_open_search_path_or_an_owner_it_cannot_act_as_is_refused() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create table t (id int primary key); create table c (id int primary key)");
    source.copy_schema_to(&target);
    source.execute("create extension pgdms");
    source.create_slot("refused");
    source.execute("insert into t values (1); insert into c values (1)");
    let until = source.current_lsn();
    let run = || cdc(&source, &target, "refused", &["--until", &until]).output().unwrap();

    // Anyone may create functions in public: they could shadow what the apply's statements call.
    target.execute("grant create on schema public to public");
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("schema public on the target role's search_path"), "{stderr}");
    assert!(stderr.contains("open to CREATE by PUBLIC"), "{stderr}");
    target.execute("revoke create on schema public from public");

    // A table whose owner the target role may not become: refused, as PostgreSQL 16 refuses it.
    target.execute(&format!("create role carol; alter table c owner to carol; grant all on c to {TARGET_ROLE}"));
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("may not act as \"carol\""), "{stderr}");
    assert_eq!(target.value("select count(*) from c"), "0");
    target.execute(&format!("grant carol to {TARGET_ROLE}"));
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pgdms_tests::assert_same_rows(&source, &target, &["t", "c"]);
}

#[test]
fn enum_labels_with_backslashes_replicate_intact_under_standard_conforming_strings_off() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    target.execute("alter database postgres set standard_conforming_strings = off");
    target.execute_as_target("create table canary (id int primary key)");
    source.execute("create extension pgdms");
    source.create_slot("labels");
    source.execute(
        r#"create type lbl as enum ('plain', 'a\', 'b''\c');
           create table e (id int primary key, l lbl);
           alter type lbl add value 'x\''); drop table canary; --';
           alter type lbl add value 'back\slash' before 'plain';"#,
    );
    source.execute(r#"insert into e values (1, 'a\'), (2, 'x\''); drop table canary; --'), (3, 'back\slash')"#);
    pgdms_tests::catch_up(&source, &target, "labels", &[]);
    let labels =
        "select string_agg(enumlabel, '|' order by enumsortorder) from pg_enum where enumtypid = 'lbl'::regtype";
    assert_eq!(target.value(labels), source.value(labels));
    assert_eq!(source.value(labels), r#"back\slash|plain|a\|b'\c|x\'); drop table canary; --"#);
    pgdms_tests::assert_same_rows(&source, &target, &["e"]);
    assert!(exists(&target, "public.canary"));
}

/// What CREATE EXTENSION says, as `user` in `db`.
fn install_error(source: &Cluster, db: &str, sql: &str) -> String {
    let err = source.connect(db).batch_execute(sql).expect_err(sql);
    let db_error = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    format!("{} {}", db_error.message(), db_error.hint().unwrap_or_default())
}

#[test]
fn the_capture_cannot_be_redirected_by_a_schema_its_owner_controls() {
    let source = Cluster::start();
    source.execute("create role dbo login");
    source.execute("create database app owner dbo");

    // PostgreSQL 15 gives "public" to the database owner: installing there is refused, and
    // so is any schema a role other than a superuser owns or may create in.
    let err = install_error(&source, "app", "create extension pgdms");
    assert!(err.contains("schema public is not safe") && err.contains("owned by dbo"), "{err}");
    assert!(err.contains("CREATE SCHEMA pgdms_audit; CREATE EXTENSION pgdms SCHEMA pgdms_audit"), "{err}");
    source
        .connect("app")
        .batch_execute("create schema x authorization dbo; create schema y; grant create on schema y to public")
        .unwrap();
    assert!(install_error(&source, "app", "create extension pgdms schema x").contains("owned by dbo"));
    assert!(install_error(&source, "app", "create extension pgdms schema y").contains("open to CREATE by PUBLIC"));
    source.connect("app").batch_execute("create schema pgdms authorization dbo").unwrap();
    let err = install_error(&source, "app", "create extension pgdms schema y");
    assert!(err.contains("the schema \"pgdms\" that exists here is not safe"), "{err}");
    source.connect("app").batch_execute("drop schema pgdms").unwrap();

    // In a schema only superusers control, it installs; the database owner then tries the
    // swap: rename the schemas, put look-alike tables with a trigger in their place.
    source
        .connect("app")
        .batch_execute("create schema pgdms_audit; create extension pgdms schema pgdms_audit")
        .unwrap();
    let mut dbo = source.connect_as("app", "dbo");
    for attempt in [
        "alter schema pgdms rename to old_pgdms",
        "alter schema pgdms_audit rename to old_audit",
        "create table pgdms.ddl_state_x (id int)",
    ] {
        let err = dbo.batch_execute(attempt).expect_err(attempt);
        assert!(
            format!("{err:?}").contains("must be owner") || format!("{err:?}").contains("permission denied"),
            "{err:?}"
        );
    }
    dbo.batch_execute(
        "alter schema public rename to old_public; create schema public; create schema pgdms_x;
         create function public.escalate() returns trigger language plpgsql as $$
         begin
             if (select rolsuper from pg_roles where rolname = current_user) then execute 'alter role dbo superuser'; end if;
             return new;
         end $$;
         create table public.pgdms_ddl_state (kind text, objid oid, definition jsonb, primary key (kind, objid));
         create table public.pgdms_ddl_audit (c_key bigserial primary key, c_tag text, c_object_type text, c_digest bytea);
         create trigger t before insert on public.pgdms_ddl_state for each row execute function public.escalate();
         create trigger t before insert on public.pgdms_ddl_audit for each row execute function public.escalate();
         create table public.captured (id int);",
    )
    .unwrap();
    assert_eq!(is_superuser(&source, "dbo"), "f");
    let audited =
        source.connect("app").query_one("select count(*) from pgdms.ddl_audit where c_name = 'captured'", &[]);
    assert_eq!(audited.unwrap().get::<_, i64>(0), 1, "the DDL is captured where the extension keeps it");
}

/// A function that makes `role` a superuser when a superuser calls it; returns NULL.
fn escalation_body(role: &str) -> String {
    format!(
        "language plpgsql as $$ begin
             if (select rolsuper from pg_roles where rolname = current_user) then execute 'alter role {role} superuser'; end if;
             return null;
         end $$"
    )
}

#[test]
fn what_a_database_owner_leaves_in_schema_pgdms_never_runs_as_the_installing_superuser() {
    let source = Cluster::start();
    source.execute("create role dbo login");
    source.execute("create database app owner dbo");
    source.connect("app").batch_execute("create schema pgdms_audit").unwrap();

    // The install's own check is called by name: a look-alike taking regnamespace would be
    // chosen over it (an exact match of the argument's type) and run as the superuser. And
    // an overload of a capture function the event triggers call.
    source
        .connect_as("app", "dbo")
        .batch_execute(&format!(
            "create schema pgdms;
             create function pgdms.schema_unsafe_because(nsp regnamespace) returns text {};
             create function pgdms.capture(kind text, objid regclass, tag text, identity text) returns void {}",
            escalation_body("dbo"),
            escalation_body("dbo").replace("return null", "return")
        ))
        .unwrap();
    let install = "create extension pgdms schema pgdms_audit";
    let err = install_error(&source, "app", install);
    assert_eq!(is_superuser(&source, "dbo"), "f", "the install ran the database owner's function");
    assert!(err.contains("the schema \"pgdms\" that exists here is not safe"), "{err}");

    // The schema given to a superuser, as one might, with dbo's functions still in it.
    source.connect("app").batch_execute("alter schema pgdms owner to postgres").unwrap();
    let err = install_error(&source, "app", install);
    assert_eq!(is_superuser(&source, "dbo"), "f", "the install ran the database owner's function");
    assert!(err.contains("holds a function pgdms.schema_unsafe_because that is not pgdms's"), "{err}");
    source.connect("app").batch_execute("drop function pgdms.schema_unsafe_because(regnamespace)").unwrap();
    let err = install_error(&source, "app", install);
    assert!(err.contains("holding function pgdms.capture(text,regclass,text,text) owned by dbo"), "{err}");
    assert_eq!(is_superuser(&source, "dbo"), "f");
}

#[test]
fn an_update_resolves_no_name_through_the_schema_a_0_1_0_install_used() {
    let source = Cluster::start();
    source.execute("create role dbo login");
    source.execute("create database app owner dbo");
    // 0.1.0 installed in "public", which PostgreSQL 15 gives to the database owner.
    source.connect("app").batch_execute("create extension pgdms version '0.1.0'").unwrap();
    // An `=` of exactly oid and regclass, which the update's catalog queries would pick over
    // pg_catalog's oid = oid.
    source
        .connect_as("app", "dbo")
        .batch_execute(&format!(
            "create function public.oid_is(a oid, b regclass) returns boolean {};
             create operator public.= (leftarg = oid, rightarg = regclass, function = public.oid_is);",
            escalation_body("dbo")
        ))
        .unwrap();
    source.connect("app").batch_execute("alter extension pgdms update").unwrap();
    assert_eq!(is_superuser(&source, "dbo"), "f", "the update ran the database owner's operator");
    let version = source.connect("app").query_one("select extversion from pg_extension where extname = 'pgdms'", &[]);
    assert_eq!(version.unwrap().get::<_, String>(0), env!("CARGO_PKG_VERSION"));
}

/// The server's message of an error.
fn db_message(err: &pgdms_tests::postgres::Error) -> String {
    err.as_db_error().map_or_else(|| err.to_string(), |e| e.message().to_string())
}

#[test]
fn a_role_that_may_write_every_table_cannot_vouch_for_a_ddl_message() {
    let source = Cluster::start();
    source.execute(
        "create table victim (id int primary key);
         create role writer login; grant pg_write_all_data to writer;
         create extension pgdms",
    );
    source.create_slot("seen");
    let drop_victim = json!({"command_tag": "DROP TABLE", "object_identity": "public.victim", "query": "",
                             "object": {"Table": {"before": table_def("victim"), "after": null}}})
    .to_string();
    let mut writer = source.connect_as("postgres", "writer");
    // The capture's own way: a row with the message's digest, then the message.
    let mut forge = |voucher: &str| -> Result<(), String> {
        let mut tx = writer.transaction().unwrap();
        tx.execute(voucher, &[&drop_victim]).map_err(|e| db_message(&e))?;
        tx.execute("select pg_logical_emit_message(true, 'pgdms.ddl', convert_to($1::text, 'UTF8'))", &[&drop_victim])
            .unwrap();
        tx.commit().unwrap();
        Ok(())
    };
    let via_audit = forge(
        "insert into pgdms.ddl_audit (c_tag, c_object_type, c_digest)
         values ('DROP TABLE', 'table', sha256(convert_to($1::text, 'UTF8')))",
    );
    let via_failures = forge(
        "insert into pgdms.capture_failures (c_tag, c_error, c_digest)
         values ('DROP TABLE', 'none', sha256(convert_to($1::text, 'UTF8')))",
    );
    // The "before" of the next genuine change, chosen by the writer.
    let state = writer.batch_execute("update pgdms.ddl_state set definition = '{}'").map_err(|e| db_message(&e));
    let pruned = writer.batch_execute("delete from pgdms.ddl_state").map_err(|e| db_message(&e));

    let records = source.dump("seen", &[]);
    assert!(of_type(&records, "ddl").is_empty(), "a forged message was vouched for: {records:#?}");
    for (what, outcome) in
        [("ddl_audit", via_audit), ("capture_failures", via_failures), ("ddl_state", state), ("ddl_state", pruned)]
    {
        let err = outcome.expect_err(what);
        assert!(err.contains(&format!("only superusers may write pgdms.{what}")), "{err}");
    }
    assert!(exists(&source, "public.victim"));
}

/// Every member of the pgdms extension with what defines it.
const MEMBERS: &str = r#"
select pg_describe_object(d.classid, d.objid, 0) || ' ' || coalesce(
    (select md5(p.prosrc || coalesce(p.proconfig::text, '') || coalesce(p.proacl::text, '') || p.prosecdef::text || pg_get_function_arguments(p.oid)
                || pg_get_function_result(p.oid) || coalesce(obj_description(p.oid, 'pg_proc'), ''))
       from pg_proc p where d.classid = 'pg_proc'::regclass and p.oid = d.objid),
    (select c.relkind::text || coalesce(pg_get_viewdef(c.oid), '') || coalesce(obj_description(c.oid, 'pg_class'), '')
            || coalesce((select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || a.attnotnull::text
                                           || coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''), ', ' order by a.attnum)
                           from pg_attribute a left join pg_attrdef ad on ad.adrelid = a.attrelid and ad.adnum = a.attnum
                          where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '')
            || coalesce((select string_agg(conname || ' ' || pg_get_constraintdef(k.oid), ', ' order by conname)
                           from pg_constraint k where k.conrelid = c.oid), '')
            || coalesce(c.relacl, acldefault(case c.relkind when 'S' then 's' else 'r' end::"char", c.relowner))::text
            || coalesce((select string_agg(t.tgenabled::text || pg_get_triggerdef(t.oid), ', ' order by t.tgname)
                           from pg_trigger t where t.tgrelid = c.oid), '')
       from pg_class c where d.classid = 'pg_class'::regclass and c.oid = d.objid),
    (select e.evtevent || ' ' || e.evtfoid::regproc::text || ' ' || e.evtenabled::text || coalesce(e.evttags::text, '')
       from pg_event_trigger e where d.classid = 'pg_event_trigger'::regclass and e.oid = d.objid),
    (select coalesce(nspacl::text, '') from pg_namespace n where d.classid = 'pg_namespace'::regclass and n.oid = d.objid),
    '')
  from pg_depend d
 where d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
   and d.refobjid = (select oid from pg_extension where extname = 'pgdms')
order by 1"#;

#[test]
fn an_install_of_0_1_0_is_fixed_by_alter_extension_update() {
    let source = Cluster::start();
    source.execute("create database fresh");
    source.execute("create role mig login; create table t (id int primary key)");
    source.create_slot("across");
    source.execute(
        "create extension pgdms version '0.1.0';
         select pgdms.grant_migration_role('mig');
         alter table t add column before_update text;
         alter extension pgdms update;
         alter table t add column after_update text;",
    );
    assert_eq!(source.value("select pgdms.version()"), env!("CARGO_PKG_VERSION"));
    assert_eq!(source.value("select extversion from pg_extension where extname = 'pgdms'"), env!("CARGO_PKG_VERSION"));
    let mut fresh = source.connect("fresh");
    fresh
        .batch_execute(
            "create table t (id int primary key); create extension pgdms; select pgdms.grant_migration_role('mig')",
        )
        .unwrap();
    let members = |db: &mut pgdms_tests::postgres::Client| pgdms_tests::query_text(db, MEMBERS);
    assert_eq!(
        members(&mut source.connect("postgres")),
        members(&mut fresh),
        "the update must give what a new install has"
    );

    // The capture writes where the extension keeps it now, and vouches for its messages. A
    // DDL message of 0.1.0 (no digest) cannot be told from a forged one: it is neither
    // replayed nor passed over silently, but reported as a capture failure, which stops a
    // consumer; one captured since is passed on.
    assert_eq!(source.value("select count(*) from pgdms.ddl_audit where c_digest is not null"), "1");
    let records = source.dump("across", &[]);
    let ddl = of_type(&records, "ddl");
    assert_eq!(ddl.len(), 2, "{ddl:#?}");
    let failed = ddl[0]["object"]["CaptureFailed"]["error"].as_str().unwrap_or_default();
    assert!(failed.contains("before pgdms 0.2"), "{ddl:#?}");
    assert!(ddl[1]["query"].as_str().unwrap().contains("after_update"), "{ddl:#?}");
    assert!(of_type(&records, "rejected").is_empty());
}

#[test]
fn no_password_is_shown_in_help_errors_or_logs() {
    let secret = "s3cr3t-pw";
    let url = format!("postgresql://bob:{secret}@127.0.0.1:1/db?connect_timeout=2");
    let help =
        pgdms_apply().args(["cdc", "--help"]).env("PGDMS_TARGET", &url).env("PGDMS_SOURCE", &url).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.contains("--target"), "{text}");
    assert!(!text.contains(secret), "{text}");
    for target in [url.clone(), format!("postgresql://bob:{secret}@[::1/db"), format!("host=db {secret}")] {
        let out = pgdms_apply()
            .args(["cdc", "--source", &url, "--target", &target, "--slot", "s", "--log", "debug"])
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{all}");
        assert!(!all.contains(secret) && !all.contains("panicked"), "{target}: {all}");
    }
}

/// A source role forges pgdms-apply's control tables on the source, in the schema the
/// target keeps them in (`pgdms_apply`): a migration recorded as done, an applied position
/// far ahead. Neither the full load, nor the schema, nor CDC may carry them into the
/// target's own, where they would make the apply skip or replay changes.
#[test]
fn a_source_role_cannot_write_the_targets_control_tables_through_the_stream() {
    let (source, target) = (Cluster::start(), Cluster::start_target());
    source.execute("create extension pgdms; create role app login; grant create on database postgres to app");
    let forge = |sql: &str| source.connect_as("postgres", "app").batch_execute(sql).unwrap();
    forge(
        "create schema pgdms_apply;
         create table pgdms_apply.migration (slot_name text primary key, phase text, consistent_point pg_lsn);
         insert into pgdms_apply.migration values ('forged', 'done', 'FFFF/0');",
    );
    source.execute(
        "create table public.t (id int primary key); insert into public.t values (1); grant insert on t to app",
    );
    let until = source.current_lsn();
    let out = pgdms_tests::between("migrate", &source, &target, "forged", &["--until", &until]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // During CDC: the table made, then written, with the position of the running migration.
    forge(
        "create table pgdms_apply.apply_progress (slot_name text primary key, end_lsn pg_lsn, commit_time timestamptz);
         insert into pgdms_apply.apply_progress values ('forged', 'FFFF/0', now());
         update pgdms_apply.migration set phase = 'schema';
         insert into public.t values (2);",
    );
    let until = source.current_lsn();
    let out = pgdms_tests::between("migrate", &source, &target, "forged", &["--until", &until]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(target.value("select string_agg(id::text, ',' order by id) from t"), "1,2", "the real changes applied");
    assert_eq!(target.value("select phase from pgdms_apply.migration where slot_name = 'forged'"), "cdc");
    let applied = target.value("select end_lsn::text from pgdms_apply.apply_progress where slot_name = 'forged'");
    assert!(!applied.starts_with("FFFF"), "the forged position reached the target: {applied}");
    assert!(pgdms_tests::lsn_ge(&until, &applied), "applied {applied} is the source's, at most {until}");
    // The forged tables' columns are not the target's: nothing of their layout arrived.
    assert_eq!(
        target.value("select count(*) from pg_attribute where attrelid = 'pgdms_apply.migration'::regclass and attname = 'updated_at'"),
        "1"
    );
}
