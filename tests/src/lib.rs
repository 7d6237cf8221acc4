//! The test harness: throwaway PostgreSQL clusters, and `pgdms-apply` runs against them.
//!
//! ```no_run
//! let source = pgdms_tests::Cluster::start();
//! source.execute("create table t (id int primary key)");
//! let records = source.dump_new_slot(|db| db.execute("insert into t values (1)"));
//! ```
//!
//! A cluster is initdb'd from the system's PostgreSQL binaries (copied from a per-process
//! template, so each costs a file copy rather than an initdb), runs as the `postgres` OS user
//! when the tests run as root, listens on its own port and socket directory, has
//! `wal_level = logical` and lists `pgdms` in `output_plugin_libraries`. It is stopped and
//! removed when dropped, which also happens when a test panics.

#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub mod mariadb;
pub mod matrix;

pub use postgres;
use serde_json::Value as Json;

/// The directory of the PostgreSQL server binaries (`pg_config --bindir`).
pub fn pg_bindir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
        let out =
            Command::new(&pg_config).arg("--bindir").output().unwrap_or_else(|e| panic!("cannot run {pg_config}: {e}"));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

fn is_root() -> bool {
    // The effective uid, from /proc (no libc binding needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// A server-side command, run as `postgres` when we are root (PostgreSQL refuses root;
/// the MariaDB servers run as the same user).
pub(crate) fn as_server_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server program, run as the server's user.
fn server_command(program: &str) -> Command {
    as_server_user(pg_bindir().join(program))
}

/// Copies a template's data directory (`TEMPLATE/data`) to `to`.
pub(crate) fn copy_template_data(template: &Path, to: &Path, what: &str) {
    let mut c = Command::new("cp");
    c.arg("-a").arg(template.join("data")).arg(to);
    run_checked(c, what);
}

fn run_checked(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Makes `path` owned by (or at least writable for) the server's OS user.
fn give_to_server(path: &Path) {
    if is_root() {
        run_checked(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(path);
                c
            },
            "chown",
        );
    }
}

/// A server's freshly initialised data directory (in `DIR/data`), made once per server
/// version and kept in the system's temp directory for every later test process: copying
/// it costs a file copy where initialising costs seconds. (Made per test process, they were
/// never removed: statics are not dropped.)
pub(crate) fn shared_template(kind: &str, version: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let base = std::env::temp_dir().join("pgdms-test-templates");
    std::fs::create_dir_all(&base).expect("create the templates directory");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let version: String =
        version.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    let dir = base.join(format!("{kind}-{version}"));
    if dir.join("ready").exists() {
        return dir;
    }
    // Made aside and renamed into place: test processes running at once never see half of one.
    let making = tempfile::Builder::new().prefix(&format!("{kind}-making-")).tempdir_in(&base).expect("temp dir");
    std::fs::set_permissions(making.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    give_to_server(making.path());
    make(making.path());
    std::fs::write(making.path().join("ready"), version.as_bytes()).expect("mark the template ready");
    let making = making.keep();
    if std::fs::rename(&making, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&making); // another process put one there first
    }
    dir
}

/// An initdb'd data directory, copied for each cluster.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let out = Command::new(pg_bindir().join("postgres")).arg("--version").output().expect("postgres --version");
        shared_template("postgresql", &String::from_utf8_lossy(&out.stdout), |dir| {
            let mut initdb = server_command("initdb");
            initdb.arg("-D").arg(dir.join("data")).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]);
            run_checked(initdb, "initdb");
        })
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// How to set a cluster up.
#[derive(Clone)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            settings: vec![
                ("wal_level".into(), "logical".into()),
                ("max_replication_slots".into(), "20".into()),
                ("max_wal_senders".into(), "20".into()),
                ("output_plugin_libraries".into(), "'pgoutput, test_decoding, wal2json, pgdms'".into()),
                ("fsync".into(), "off".into()),
                ("shared_buffers".into(), "64MB".into()),
                ("max_connections".into(), "50".into()),
                ("logging_collector".into(), "off".into()),
                ("log_min_messages".into(), "warning".into()),
            ],
            hba: vec![
                "local all all trust".into(),
                "local replication all trust".into(),
                "host all all 127.0.0.1/32 trust".into(),
                "host replication all 127.0.0.1/32 trust".into(),
            ],
            files: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// A postgresql.conf setting (`value` as it would appear in the file).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.retain(|(n, _)| n != name);
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Replaces pg_hba.conf with these lines.
    pub fn hba(mut self, lines: &[&str]) -> Self {
        self.hba = lines.iter().map(|l| l.to_string()).collect();
        self
    }

    /// A file to write into the data directory (certificates, keys), mode 0600.
    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), content.into()));
        self
    }

    pub fn start(self) -> Cluster {
        let root = tempfile::Builder::new().prefix("pgdms-cluster-").tempdir().expect("temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = root.path().join("data");
        copy_template_data(template(), &data, "copy the template cluster");
        let port = free_port();
        let mut conf = format!(
            "\n# pgdms test cluster\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            root.path().display()
        );
        for (k, v) in &self.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let mut pgconf = std::fs::read_to_string(data.join("postgresql.conf")).expect("read postgresql.conf");
        pgconf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pgconf).expect("write postgresql.conf");
        std::fs::write(data.join("pg_hba.conf"), self.hba.join("\n") + "\n").expect("write pg_hba.conf");
        for (name, content) in &self.files {
            let p = data.join(name);
            std::fs::write(&p, content).expect("write cluster file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        give_to_server(root.path());
        let cluster = Cluster { root, data, port };
        cluster.pg_ctl_start();
        cluster
    }
}

/// The role targets are written as in the tests: no superuser, as pgdms-apply requires.
/// It owns the target's `postgres` database (so the schema `public` there too), may set
/// `session_replication_role`, and owns what the tests create on the target for it.
pub const TARGET_ROLE: &str = "pgdms_target";

/// A running throwaway cluster.
pub struct Cluster {
    root: tempfile::TempDir,
    data: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// A running source cluster with the default settings.
    pub fn start() -> Cluster {
        ClusterBuilder::default().start()
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A running cluster to migrate into: `TARGET_ROLE` set up as a target role needs.
    pub fn start_target() -> Cluster {
        let cluster = Cluster::start();
        cluster.make_target();
        cluster
    }

    /// Sets `TARGET_ROLE` up: a login without superuser that may set
    /// session_replication_role and owns the `postgres` database.
    pub fn make_target(&self) {
        self.execute(&format!(
            "create role {TARGET_ROLE} login;
             grant set on parameter session_replication_role to {TARGET_ROLE};
             alter database postgres owner to {TARGET_ROLE};"
        ));
    }

    /// The connection string pgdms-apply writes a target with: `TARGET_ROLE`.
    pub fn target_conninfo(&self, dbname: &str) -> String {
        self.conninfo_as(dbname, TARGET_ROLE)
    }

    /// Runs SQL in the `postgres` database as `TARGET_ROLE`: objects of the target that
    /// pgdms-apply writes or alters are that role's, as they would be in a migration.
    pub fn execute_as_target(&self, sql: &str) {
        self.connect_as("postgres", TARGET_ROLE).batch_execute(sql).unwrap_or_else(|e| panic!("{sql}\nfailed: {e:?}"));
    }

    fn pg_ctl_start(&self) {
        let mut c = server_command("pg_ctl");
        c.arg("-D").arg(&self.data).arg("-l").arg(self.log_path()).args(["-w", "-t", "60", "start"]);
        c.stdout(Stdio::null());
        let out = c.output().expect("run pg_ctl");
        if !out.status.success() {
            panic!("pg_ctl start failed:\n{}", self.log());
        }
    }

    /// Stops the server (fast shutdown) and starts it again.
    pub fn restart(&self) {
        let mut c = server_command("pg_ctl");
        c.arg("-D").arg(&self.data).args(["-w", "-m", "fast", "stop"]).stdout(Stdio::null());
        run_checked(c, "pg_ctl stop");
        self.pg_ctl_start();
    }

    pub fn socket_dir(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A libpq connection string for `dbname` as the superuser, over the Unix socket.
    pub fn conninfo(&self, dbname: &str) -> String {
        self.conninfo_as(dbname, "postgres")
    }

    pub fn conninfo_as(&self, dbname: &str, user: &str) -> String {
        format!("host={} port={} user={user} dbname={dbname}", self.socket_dir().display(), self.port)
    }

    /// A connection to `dbname` as the superuser.
    pub fn connect(&self, dbname: &str) -> postgres::Client {
        postgres::Client::connect(&self.conninfo(dbname), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the test cluster: {e}\n{}", self.log()))
    }

    /// A connection to `dbname` as `user`.
    pub fn connect_as(&self, dbname: &str, user: &str) -> postgres::Client {
        postgres::Client::connect(&self.conninfo_as(dbname, user), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect as {user}: {e}\n{}", self.log()))
    }

    /// Runs SQL (several statements allowed) in the `postgres` database.
    pub fn execute(&self, sql: &str) {
        self.connect("postgres").batch_execute(sql).unwrap_or_else(|e| panic!("{sql}\nfailed: {e:?}"));
    }

    /// Rows of a query in the `postgres` database, every value as text.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query_text(&mut self.connect("postgres"), sql)
    }

    /// The single value of a query.
    pub fn value(&self, sql: &str) -> String {
        self.query(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .unwrap_or_else(|| panic!("{sql} returned no value"))
    }

    /// The current WAL insert position.
    pub fn current_lsn(&self) -> String {
        self.value("select pg_current_wal_insert_lsn()")
    }

    pub fn create_slot(&self, name: &str) {
        self.execute(&format!("select pg_create_logical_replication_slot('{name}', 'pgdms')"));
    }

    /// Runs `pgdms-apply dump` on `slot` up to the current WAL position and returns its JSON
    /// records.
    pub fn dump(&self, slot: &str, extra: &[&str]) -> Vec<Json> {
        let endpos = self.current_lsn();
        let out = pgdms_apply()
            .args(["dump", "--source", &self.conninfo("postgres"), "--slot", slot, "--endpos", &endpos])
            .args(extra)
            .output()
            .expect("run pgdms-apply");
        if !out.status.success() {
            panic!("pgdms-apply dump failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        parse_json_lines(&out.stdout)
    }

    /// Creates a slot, runs `changes`, and returns what `dump` decodes of them.
    pub fn dump_new_slot(&self, changes: impl FnOnce(&Cluster)) -> Vec<Json> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let slot = format!("t{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.create_slot(&slot);
        changes(self);
        let records = self.dump(&slot, &[]);
        self.execute(&format!("select pg_drop_replication_slot('{slot}')"));
        records
    }

    /// Copies the schema of this cluster's `postgres` database to `target`'s (pg_dump -s),
    /// restored as `TARGET_ROLE`, whose objects they become.
    pub fn copy_schema_to(&self, target: &Cluster) {
        let dump = Command::new(pg_bindir().join("pg_dump"))
            .args(["-s", "--no-owner", "--no-privileges", "-d", &self.conninfo("postgres")])
            .output()
            .expect("run pg_dump");
        assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
        let mut psql = Command::new(pg_bindir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &target.target_conninfo("postgres")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run psql");
        std::io::Write::write_all(psql.stdin.as_mut().unwrap(), &dump.stdout).unwrap();
        drop(psql.stdin.take());
        assert!(psql.wait().unwrap().success(), "restoring the schema failed");
    }

    /// Every row of `table` as `row::text`, sorted: what "equal" means between source and
    /// target.
    pub fn rows(&self, table: &str) -> Vec<String> {
        let mut client = self.connect("postgres");
        client.batch_execute("set timezone = 'UTC'; set extra_float_digits = 3").unwrap();
        query_text(&mut client, &format!("select t::text from {table} t order by 1"))
            .into_iter()
            .map(|r| r.into_iter().next().flatten().unwrap_or_default())
            .collect()
    }

    /// The phase pgdms-apply recorded on this target for the migration of `slot`, if any.
    pub fn migration_phase(&self, slot: &str) -> Option<String> {
        if self.value("select to_regclass('pgdms_apply.migration') is not null") != "t" {
            return None;
        }
        let rows = self.query(&format!("select phase from pgdms_apply.migration where slot_name = '{slot}'"));
        rows.into_iter().next().and_then(|r| r[0].clone())
    }

    /// `pg_postmaster_start_time()`: unchanged as long as the server did not restart or crash.
    pub fn postmaster_start_time(&self) -> String {
        self.value("select pg_postmaster_start_time()::text")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = server_command("pg_ctl");
        c.arg("-D").arg(&self.data).args(["-w", "-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
        let _ = c.status();
        if std::thread::panicking() {
            eprintln!("--- server log of the cluster on port {} ---\n{}", self.port, self.log());
        }
    }
}

/// Rows of a simple query, every value as text.
pub fn query_text(client: &mut postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}\nfailed: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

pub fn parse_json_lines(bytes: &[u8]) -> Vec<Json> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// The `pgdms-apply` binary of this build (`PGDMS_APPLY` overrides).
pub fn pgdms_apply_path() -> PathBuf {
    if let Ok(p) = std::env::var("PGDMS_APPLY") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/pgdms-apply
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("pgdms-apply");
    assert!(bin.exists(), "{} is missing: build it first (cargo build --release -p pgdms_apply)", bin.display());
    bin
}

pub fn pgdms_apply() -> Command {
    let mut c = Command::new(pgdms_apply_path());
    c.env("PGDMS_LOG", "warn");
    c
}

/// `pgdms-apply cdc` from `source`'s slot into `target`, both `postgres` databases, the
/// target written as `TARGET_ROLE`.
pub fn cdc(source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) -> Command {
    between("cdc", source, target, slot, extra)
}

/// `pgdms-apply SUBCOMMAND` (cdc, migrate) from `source`'s slot into `target`, both
/// `postgres` databases, the target written as `TARGET_ROLE`.
pub fn between(subcommand: &str, source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) -> Command {
    let mut c = pgdms_apply();
    c.args([
        subcommand,
        "--source",
        &source.conninfo("postgres"),
        "--target",
        &target.target_conninfo("postgres"),
        "--slot",
        slot,
    ]);
    c.args(extra);
    c
}

/// Runs cdc up to the source's current position and checks it succeeded.
pub fn catch_up(source: &Cluster, target: &Cluster, slot: &str, extra: &[&str]) {
    let until = source.current_lsn();
    let out = cdc(source, target, slot, &["--until", &until]).args(extra).output().unwrap();
    assert!(out.status.success(), "cdc failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Asserts that `tables` hold the same rows on both clusters.
pub fn assert_same_rows(source: &Cluster, target: &Cluster, tables: &[&str]) {
    for t in tables {
        let (s, d) = (source.rows(t), target.rows(t));
        if s != d {
            let only_s: Vec<_> = s.iter().filter(|r| !d.contains(r)).take(5).collect();
            let only_d: Vec<_> = d.iter().filter(|r| !s.contains(r)).take(5).collect();
            panic!("{t}: {} rows on the source, {} on the target; only on the source: {only_s:?}; only on the target: {only_d:?}", s.len(), d.len());
        }
    }
}

/// Polls `check` until it returns true, for at most `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Records of one kind.
pub fn of_type<'a>(records: &'a [Json], kind: &str) -> Vec<&'a Json> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// Is LSN `a` ("X/Y") at or past `b`?
pub fn lsn_ge(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (hi, lo) = s.trim().split_once('/').unwrap_or(("0", "0"));
        (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
    };
    parse(a) >= parse(b)
}

/// A spawned `pgdms-apply` (or other helper process), killed when dropped: a failing test
/// must not leave it running (it would hold the test harness's output open).
pub struct Running(pub std::process::Child);

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        Running(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")))
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
