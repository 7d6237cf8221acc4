//! Targets that are sources too: a chain A -> B -> C with the pgdms extension installed on
//! B, changes flowing through both hops, and the way back (B -> A) after a cutover. Each
//! target keeps its own state in `pgdms_apply`, apart from the extension's `pgdms` schema,
//! and a source's `pgdms_apply` (the state of the migration into it) is never migrated.

use pgdms_tests::{assert_same_rows, Cluster, TARGET_ROLE};

fn migrate(source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) {
    let until = source.current_lsn();
    let out = pgdms_tests::between("migrate", source, target, slot, &["--until", &until]).args(extra).output().unwrap();
    assert!(out.status.success(), "migrate {slot}: {}", String::from_utf8_lossy(&out.stderr));
}

fn slots_recorded(target: &Cluster) -> Vec<String> {
    target
        .query("select slot_name from pgdms_apply.migration order by 1")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

#[test]
fn a_chain_through_a_target_with_the_extension_and_back_after_cutover() {
    let (a, b, c) = (Cluster::start_target(), Cluster::start_target(), Cluster::start_target());
    a.execute("create schema pgdms_audit; create extension pgdms schema pgdms_audit");
    // Owned by the role each side writes as, so that the way back may empty them.
    a.execute_as_target(
        "create table t (id int primary key, v text); insert into t select i, 'a' || i from generate_series(1, 1000) i;
         create table u (id int primary key); insert into u select generate_series(1, 10)",
    );
    // B has the extension before anything arrives: it will be a source too.
    b.execute("create schema pgdms_audit; create extension pgdms schema pgdms_audit");

    migrate(&a, &b, "a_b", &[]);
    assert_same_rows(&a, &b, &["t", "u"]);
    assert_eq!(b.value("select count(*) from pg_extension where extname = 'pgdms'"), "1");
    assert_eq!(slots_recorded(&b), ["a_b"]);

    migrate(&b, &c, "b_c", &[]);
    assert_same_rows(&a, &c, &["t", "u"]);
    // C holds its own migration's state, not B's copy of the A -> B one.
    assert_eq!(slots_recorded(&c), ["b_c"]);

    // Changes on A travel through B to C, while B's apply writes its own state on B.
    a.execute(
        "update t set v = 'changed' where id <= 10; delete from t where id = 11; insert into u values (11);
               alter table t add column w int default 5",
    );
    migrate(&a, &b, "a_b", &[]);
    migrate(&b, &c, "b_c", &[]);
    assert_same_rows(&a, &b, &["t", "u"]);
    assert_same_rows(&a, &c, &["t", "u"]);
    assert_eq!(slots_recorded(&c), ["b_c"]);
    assert_eq!(c.value("select count(*) from pgdms_apply.apply_progress"), "1", "only C's own progress");

    // Cut A -> B over, then write on B and replicate back into A, which has the extension.
    let out = pgdms_tests::pgdms_apply()
        .args(["cutover", "--source", &a.conninfo("postgres"), "--target", &b.target_conninfo("postgres")])
        .args(["--slot", "a_b", "--drop-slot"])
        .output()
        .unwrap();
    assert!(out.status.success(), "cutover: {}", String::from_utf8_lossy(&out.stderr));
    b.execute_as_target("insert into t values (5000, 'written on b', 1); delete from u where id = 1");
    migrate(&b, &a, "b_a", &["--target-prep", "truncate"]);
    assert_same_rows(&b, &a, &["t", "u"]);
    assert_eq!(a.value("select count(*) from t where v = 'written on b'"), "1");
    assert_eq!(slots_recorded(&a), ["b_a"]);
    assert_eq!(a.value("select count(*) from pg_extension where extname = 'pgdms'"), "1");
    let owner: String = a.value("select nspowner::regrole::text from pg_namespace where nspname = 'pgdms_apply'");
    assert_eq!(owner, TARGET_ROLE, "the control schema is the target role's");
}
