//! Ordinary SQL connections (not replication ones) to either side: the target's apply
//! session, and the full load's and validation's sessions on both sides. Same connection
//! settings and TLS rules as the replication client.

use super::conninfo::{Host, SslMode};
use super::ConnInfo;
use tokio_postgres::Client;

/// A connected client; the task driving its connection ends when the client is dropped
/// (or when this handle is dropped, which aborts it).
pub struct SqlConnection {
    pub client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for SqlConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server's own words (not tokio-postgres's "db error"), and not as a separate cause:
    /// said once.
    #[error("could not connect to {to}: {}", error_text(.error))]
    Connect { to: String, error: tokio_postgres::Error },
    #[error("{0}")]
    Tls(String),
}

/// The text of an error: the server's message and detail, or the client's.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// Opens a SQL session to the database `info` names.
pub async fn connect(info: &ConnInfo, application_name: &str) -> Result<SqlConnection, ConnectError> {
    let mut config = tokio_postgres::Config::new();
    match &info.host {
        Host::Unix(dir) => config.host_path(dir),
        Host::Tcp(h) => config.host(h),
    };
    config.port(info.port).user(&info.user).dbname(&info.dbname).application_name(application_name);
    if let Some(p) = &info.password {
        config.password(p);
    }
    // The settings the statements pgdms-apply builds depend on, after the user's options.
    config.options(crate::sql::session_options(info.options.as_deref()));
    if let Some(t) = info.connect_timeout {
        config.connect_timeout(std::time::Duration::from_secs(t));
    }
    let failed = |error| ConnectError::Connect { to: info.describe(), error };
    let tls = super::tls::client_config(info).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let (client, driver) = match tls {
        Some(tls) => {
            let mode = if info.sslmode >= SslMode::Require {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            };
            config.ssl_mode(mode);
            let (client, connection) =
                config.connect(tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())).await.map_err(failed)?;
            (client, tokio::spawn(drive(connection)))
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(failed)?;
            (client, tokio::spawn(drive(connection)))
        }
    };
    Ok(SqlConnection { client, driver })
}

/// Runs a connection until it closes.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!("connection ended: {e}");
    }
}
