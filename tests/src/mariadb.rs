//! Throwaway MariaDB servers for the MySQL target's tests: the system's `mariadbd`
//! (Debian's mariadb-server-core), a data directory made once per test process with
//! `mariadb-install-db` and copied for each server, its own port and socket, run as the
//! `postgres` OS user when the tests run as root (as the PostgreSQL clusters are), and
//! killed and removed when dropped.

use crate::{as_server_user, copy_template_data, free_port, give_to_server, run_checked, shared_template};
use mysql_async::prelude::Queryable;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let out = Command::new("mariadbd")
            .arg("--version")
            .output()
            .expect("mariadbd --version (apt-get install mariadb-server-core)");
        shared_template("mariadb", &String::from_utf8_lossy(&out.stdout), |dir| {
            let mut install = as_server_user("mariadb-install-db");
            install.arg("--no-defaults").arg(format!("--datadir={}", dir.join("data").display())).args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
            run_checked(install, "mariadb-install-db (apt-get install mariadb-server-core)");
        })
    })
}

/// A running throwaway MariaDB server; root may connect over TCP without a password.
pub struct MariaDb {
    root: tempfile::TempDir,
    pub port: u16,
    server: Child,
    rt: tokio::runtime::Runtime,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let root = tempfile::Builder::new().prefix("pgdms-mariadb-").tempdir().expect("temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = root.path().join("data");
        copy_template_data(template(), &data, "copy the template MariaDB data directory");
        give_to_server(root.path());
        let port = free_port();
        let p = |name: &str| root.path().join(name).display().to_string();
        let mut c = as_server_user("mariadbd");
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", p("mysqld.sock")))
            .arg(format!("--pid-file={}", p("mysqld.pid")))
            .arg(format!("--log-error={}", p("error.log")))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-buffer-pool-size=64M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = c.spawn().expect("start mariadbd (apt-get install mariadb-server-core)");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let db = MariaDb { root, port, server, rt };
        let started = Instant::now();
        loop {
            if db.rt.block_on(mysql_async::Conn::from_url(db.url(""))).is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!("MariaDB did not start:\n{}", db.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        db
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE` (no database: "").
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("error.log")).unwrap_or_default()
    }

    fn pid_file(&self) -> PathBuf {
        self.root.path().join("mysqld.pid")
    }

    /// Rows of a query, every value as text (the text protocol's own).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.rt.block_on(async {
            let mut conn = mysql_async::Conn::from_url(self.url("")).await.expect("connect to MariaDB");
            let rows: Vec<mysql_async::Row> =
                conn.query(sql).await.unwrap_or_else(|e| panic!("MariaDB query failed: {e}\n{sql}"));
            let _ = conn.disconnect().await;
            rows.into_iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| match r.as_ref(i).expect("column") {
                            mysql_async::Value::NULL => None,
                            mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                            other => Some(other.as_sql(true)),
                        })
                        .collect()
                })
                .collect()
        })
    }

    pub fn execute(&self, sql: &str) {
        self.rt.block_on(async {
            let mut conn = mysql_async::Conn::from_url(self.url("")).await.expect("connect to MariaDB");
            conn.query_drop(sql).await.unwrap_or_else(|e| panic!("MariaDB statement failed: {e}\n{sql}"));
            let _ = conn.disconnect().await;
        })
    }

    /// The single value of a query, or None without a row or for NULL.
    pub fn value(&self, sql: &str) -> Option<String> {
        self.query(sql).into_iter().next().and_then(|r| r.into_iter().next().flatten())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // mariadbd runs under runuser: signal the server itself.
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        if std::thread::panicking() {
            eprintln!("--- MariaDB log of the server on port {} ---\n{}", self.port, self.log());
        }
    }
}
