//! A client of PostgreSQL's streaming replication protocol for logical slots.
//!
//! tokio-postgres does not speak the replication sub-protocol (CopyBoth, XLogData,
//! keepalives), so this is a small client on `postgres-protocol`'s message codecs: a
//! replication connection, the replication commands we use, and the CopyBoth stream.

use crate::pgconn::conninfo::{ConnInfo, Host};
use crate::sql::{quote_ident, quote_literal};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgdms_proto::Lsn;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("could not connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("connection to the source lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Server(Box<ServerError>),
    /// The server refused the connection at startup (no such database, not allowed, starting up).
    #[error("could not connect to {target}: {error}")]
    Rejected { target: String, error: Box<ServerError> },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
    /// The server ended the replication stream (it is shutting down or restarting).
    #[error("the source ended the replication stream (shutting down or restarting?)")]
    StreamEnded,
    #[error(transparent)]
    Tls(#[from] crate::pgconn::tls::TlsError),
    #[error("TLS with {target}: {why}")]
    TlsHandshake { target: String, why: String },
}

/// An LSN the server sent, read strictly: one that does not parse is a protocol error.
fn server_lsn(what: &str, value: Option<String>) -> Result<Lsn> {
    let value = value.ok_or_else(|| ReplicationError::Protocol(format!("{what} returned no LSN")))?;
    value.parse().map_err(|_| ReplicationError::Protocol(format!("{what} returned \"{value}\", which is not an LSN")))
}

/// A replication slot, as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub name: String,
    pub plugin: String,
    pub database: Option<String>,
    /// It belongs to the database this connection is to.
    pub this_database: bool,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// The WAL it holds back on the source.
    pub retained_wal_bytes: Option<i64>,
}

/// An ErrorResponse, with the fields a person needs.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub context: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        if let Some(c) = &self.context {
            write!(f, "\nCONTEXT: {c}")?;
        }
        Ok(())
    }
}

impl ServerError {
    fn parse(body: &backend::ErrorResponseBody) -> ServerError {
        use postgres_protocol::message::backend::ErrorField;
        let mut e = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
            context: None,
        };
        let mut fields = body.fields();
        while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
            let field: ErrorField<'_> = field;
            let v = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                b'W' => e.context = Some(v),
                _ => {}
            }
        }
        e
    }
}

type Result<T> = std::result::Result<T, ReplicationError>;

/// How often a consumer reports its position to the source in any case (well inside the
/// default wal_sender_timeout of 60 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How long a consumer that waits for a position waits without a message before asking the
/// server where it is (a status update requesting a reply, answered by a keepalive).
pub const IDLE_PROBE: Duration = Duration::from_millis(200);

/// How much one read may take from the socket.
const READ_WINDOW: usize = 256 * 1024;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What IDENTIFY_SYSTEM says.
#[derive(Debug, Clone)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
}

/// What CREATE_REPLICATION_SLOT says.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub name: String,
    pub consistent_point: Lsn,
    /// The exported snapshot, valid while this connection stays idle.
    pub snapshot_name: Option<String>,
}

/// A message of the CopyBoth stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// One logical-decoding message: `wal_start` is the LSN of the WAL record it came from.
    XLogData { wal_start: Lsn, data: Bytes },
    /// The server is alive and has sent everything up to `wal_end`.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A connection in replication mode (`replication=database`).
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub server_params: HashMap<String, String>,
    target: String,
}

/// Session settings of every replication connection: they fix the text form of values the
/// plugin sends as text (arrays of dates, intervals) and make floats exact.
const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    // The replication commands quote names and literals the standard way.
    ("standard_conforming_strings", "on"),
];

impl ReplicationConnection {
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection> {
        let target = info.describe();
        let connect = async {
            let io: Box<dyn Io> = match &info.host {
                Host::Unix(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{}", info.port));
                    Box::new(tokio::net::UnixStream::connect(path).await?)
                }
                Host::Tcp(host) => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), info.port)).await?;
                    s.set_nodelay(true)?;
                    Box::new(s)
                }
            };
            Ok::<_, std::io::Error>(io)
        };
        let tls = crate::pgconn::tls::client_config(info)?;
        let timeout = Duration::from_secs(info.connect_timeout.filter(|t| *t > 0).unwrap_or(30));
        let io = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(io)) => io,
            Ok(Err(source)) => return Err(ReplicationError::Connect { target, source }),
            Err(_) => {
                return Err(ReplicationError::Connect {
                    target,
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                })
            }
        };
        let io = match (tls, &info.host) {
            (Some(config), Host::Tcp(host)) => Self::start_tls(io, config, host, info.sslmode, &target).await?,
            _ => io,
        };
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            server_params: HashMap::new(),
            target,
        };
        conn.startup(info).await.map_err(|e| match e {
            ReplicationError::Server(error) => ReplicationError::Rejected { target: conn.target.clone(), error },
            other => other,
        })?;
        Ok(conn)
    }

    /// SSLRequest, then the TLS handshake if the server agrees (libpq's order).
    async fn start_tls(
        mut io: Box<dyn Io>,
        config: std::sync::Arc<rustls::ClientConfig>,
        host: &str,
        mode: crate::pgconn::conninfo::SslMode,
        target: &str,
    ) -> Result<Box<dyn Io>> {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        io.write_all(&buf).await?;
        io.flush().await?;
        let mut answer = [0u8; 1];
        io.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {
                let name = crate::pgconn::tls::server_name(host)?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, io)
                    .await
                    .map_err(|e| ReplicationError::TlsHandshake { target: target.to_string(), why: e.to_string() })?;
                Ok(Box::new(tls))
            }
            b'N' if mode < crate::pgconn::conninfo::SslMode::Require => Ok(io),
            b'N' => Err(ReplicationError::TlsHandshake {
                target: target.to_string(),
                why: "the server does not accept TLS connections, and sslmode requires TLS".into(),
            }),
            other => Err(ReplicationError::Protocol(format!("answer {other:#x} to SSLRequest"))),
        }
    }

    async fn startup(&mut self, info: &ConnInfo) -> Result<()> {
        let app = info.application_name.clone().unwrap_or_else(|| "pgdms-apply".into());
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &info.user),
            ("database", &info.dbname),
            ("replication", "database"),
            ("application_name", &app),
        ];
        if let Some(o) = &info.options {
            params.push(("options", o));
        }
        params.extend_from_slice(SESSION_SETTINGS);
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)?;
        self.flush().await?;

        let target = self.target.clone();
        let password = || {
            info.password.clone().ok_or_else(|| {
                ReplicationError::Auth(format!(
                    "{target} asks for a password and none was given (password=..., or PGPASSWORD)"
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.read().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(info.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(ReplicationError::Auth(
                            "the server offers no SASL mechanism we support (SCRAM-SHA-256)".into(),
                        ));
                    }
                    let s = sasl::ScramSha256::new(password()?.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ReplicationError::Protocol("SASL continue before SASL start".into()))?;
                    s.update(body.data()).map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ReplicationError::Protocol("SASL final before SASL start".into()))?;
                    s.finish(body.data()).map_err(|e| ReplicationError::Auth(e.to_string()))?;
                }
                backend::Message::ParameterStatus(p) => {
                    self.server_params.insert(p.name()?.to_string(), p.value()?.to_string());
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => {
                    return Err(ReplicationError::Server(Box::new(ServerError::parse(&body))))
                }
                other => return Err(ReplicationError::Protocol(format!("{} during startup", message_name(&other)))),
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let buf = self.wbuf.split();
        self.io.write_all(&buf).await?;
        self.io.flush().await
    }

    /// Reads one backend message. CopyBothResponse, which postgres-protocol does not know,
    /// is returned as `None`.
    async fn read_raw(&mut self) -> Result<Option<backend::Message>> {
        loop {
            if self.rbuf.len() >= 5 && self.rbuf[0] == b'W' {
                let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
                if self.rbuf.len() > len {
                    self.rbuf.advance(1 + len);
                    return Ok(None);
                }
            } else if let Some(m) = backend::Message::parse(&mut self.rbuf)? {
                return Ok(Some(m));
            }
            // Parsed messages are split off the front of the buffer, leaving little spare
            // capacity: keep a large window so one read takes whatever has arrived.
            if self.rbuf.capacity() - self.rbuf.len() < READ_WINDOW / 2 {
                self.rbuf.reserve(READ_WINDOW);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    async fn read(&mut self) -> Result<backend::Message> {
        self.read_raw()
            .await?
            .ok_or_else(|| ReplicationError::Protocol("CopyBothResponse outside START_REPLICATION".into()))
    }

    /// Runs a replication command (simple query) and returns its rows as text.
    pub async fn command(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read().await? {
                backend::Message::DataRow(row) => {
                    let mut values = Vec::new();
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    while let Some(r) = fallible_iterator::FallibleIterator::next(&mut ranges)? {
                        values.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                backend::Message::ErrorResponse(body) => error = Some(ServerError::parse(&body)),
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::ParameterStatus(p) => {
                    self.server_params.insert(p.name()?.to_string(), p.value()?.to_string());
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(ReplicationError::Server(Box::new(e))),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.command("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemIdentity {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlog_pos: server_lsn("IDENTIFY_SYSTEM", col(2))?,
        })
    }

    /// The server's `server_version_num`, from the startup parameters.
    pub fn server_version_num(&self) -> u32 {
        let v = self.server_params.get("server_version").map(String::as_str).unwrap_or("0");
        let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        major * 10000 + minor
    }

    /// CREATE_REPLICATION_SLOT for the pgdms plugin; `export_snapshot` keeps a snapshot of the
    /// slot's consistent point for other sessions to import while this connection is idle.
    pub async fn create_slot(&mut self, name: &str, temporary: bool, export_snapshot: bool) -> Result<CreatedSlot> {
        let temp = if temporary { " TEMPORARY" } else { "" };
        let plugin = pgdms_proto::PLUGIN_NAME;
        let sql = if self.server_version_num() >= 150000 {
            let snapshot = if export_snapshot { "export" } else { "nothing" };
            format!("CREATE_REPLICATION_SLOT {}{temp} LOGICAL {plugin} (SNAPSHOT '{snapshot}')", quote_ident(name))
        } else {
            let snapshot = if export_snapshot { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
            format!("CREATE_REPLICATION_SLOT {}{temp} LOGICAL {plugin} {snapshot}", quote_ident(name))
        };
        let rows = self.command(&sql).await?;
        let row =
            rows.first().ok_or_else(|| ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(CreatedSlot {
            name: col(0).unwrap_or_default(),
            consistent_point: server_lsn("CREATE_REPLICATION_SLOT", col(1))?,
            snapshot_name: col(2),
        })
    }

    /// The replication slot named `name`, if it exists.
    pub async fn slot(&mut self, name: &str) -> Result<Option<SlotInfo>> {
        Ok(self.slots(&format!("slot_name = {}", quote_literal(name))).await?.pop())
    }

    /// The slots of the pgdms plugin, by name.
    pub async fn pgdms_slots(&mut self) -> Result<Vec<SlotInfo>> {
        self.slots(&format!("plugin = {}", quote_literal(pgdms_proto::PLUGIN_NAME))).await
    }

    /// The one query of `pg_replication_slots`.
    async fn slots(&mut self, filter: &str) -> Result<Vec<SlotInfo>> {
        let rows = self
            .command(&format!(
                "SELECT slot_name, coalesce(plugin, ''), database, database = current_database(), active, \
                 restart_lsn, confirmed_flush_lsn, wal_status, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE {filter} ORDER BY slot_name"
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                let c = |i: usize| r.get(i).cloned().flatten();
                let lsn = |i: usize| c(i).map(|l| server_lsn("pg_replication_slots", Some(l))).transpose();
                Ok(SlotInfo {
                    name: c(0).unwrap_or_default(),
                    plugin: c(1).unwrap_or_default(),
                    database: c(2),
                    this_database: c(3).as_deref() == Some("t"),
                    active: c(4).as_deref() == Some("t"),
                    restart_lsn: lsn(5)?,
                    confirmed_flush_lsn: lsn(6)?,
                    wal_status: c(7),
                    retained_wal_bytes: c(8).and_then(|b| b.parse().ok()),
                })
            })
            .collect()
    }

    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        let wait = if wait { " WAIT" } else { "" };
        self.command(&format!("DROP_REPLICATION_SLOT {}{wait}", quote_ident(name))).await.map(|_| ())
    }

    /// START_REPLICATION: from here on the connection is a [`ReplicationStream`].
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
    ) -> Result<ReplicationStream> {
        let opts: Vec<String> =
            options.iter().map(|(k, v)| format!("{} {}", quote_ident(k), quote_literal(v))).collect();
        let opts = if opts.is_empty() { String::new() } else { format!(" ({})", opts.join(", ")) };
        let sql = format!("START_REPLICATION SLOT {} LOGICAL {start}{opts}", quote_ident(slot));
        frontend::query(&sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            match self.read_raw().await? {
                None => return Ok(ReplicationStream { conn: self }),
                Some(backend::Message::ErrorResponse(body)) => {
                    let e = ServerError::parse(&body);
                    // Drain to ReadyForQuery so the error is the whole story.
                    return Err(ReplicationError::Server(Box::new(e)));
                }
                Some(backend::Message::NoticeResponse(_)) | Some(backend::Message::ParameterStatus(_)) => {}
                Some(other) => {
                    return Err(ReplicationError::Protocol(format!("{} after START_REPLICATION", message_name(&other))))
                }
            }
        }
    }
}

/// The CopyBoth stream of a started slot.
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

/// Microseconds since 2000-01-01 UTC, the protocol's clock.
fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    since_unix.as_micros() as i64 - (PG_EPOCH_UNIX_SECS as i64) * 1_000_000
}

impl ReplicationStream {
    /// Is a whole message already received (so `recv` will not wait)?
    pub fn has_buffered_message(&self) -> bool {
        let buf = &self.conn.rbuf;
        buf.len() >= 5 && buf.len() > u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize
    }

    /// The next message; `None` when the server ended the stream (CopyDone).
    pub async fn recv(&mut self) -> Result<Option<StreamMessage>> {
        loop {
            let msg = self.conn.read().await?;
            match msg {
                backend::Message::CopyData(body) => {
                    let mut data = body.into_bytes();
                    if data.is_empty() {
                        continue;
                    }
                    match data.get_u8() {
                        b'w' if data.len() >= 24 => {
                            let wal_start = Lsn(data.get_u64());
                            let _wal_end = data.get_u64();
                            let _send_time = data.get_i64();
                            return Ok(Some(StreamMessage::XLogData { wal_start, data }));
                        }
                        b'k' if data.len() >= 17 => {
                            let wal_end = Lsn(data.get_u64());
                            let _send_time = data.get_i64();
                            let reply_requested = data.get_u8() != 0;
                            return Ok(Some(StreamMessage::Keepalive { wal_end, reply_requested }));
                        }
                        tag => {
                            return Err(ReplicationError::Protocol(format!(
                                "CopyData message of kind {:?}",
                                tag as char
                            )))
                        }
                    }
                }
                // A walsender that shuts down ends the stream with CopyDone, or with
                // CommandComplete when it had sent everything.
                backend::Message::CopyDone | backend::Message::CommandComplete(_) => return Ok(None),
                backend::Message::ErrorResponse(body) => {
                    return Err(ReplicationError::Server(Box::new(ServerError::parse(&body))))
                }
                backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_) => {}
                other => {
                    return Err(ReplicationError::Protocol(format!("{} during replication", message_name(&other))))
                }
            }
        }
    }

    /// Standby status update: `flushed` is what the consumer has made durable; the server may
    /// release WAL before it.
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn, applied: Lsn, reply_requested: bool) -> Result<()> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(applied.0);
        msg.put_i64(pg_now());
        msg.put_u8(u8::from(reply_requested));
        // CopyData framing.
        self.conn.wbuf.put_u8(b'd');
        self.conn.wbuf.put_u32(4 + msg.len() as u32);
        self.conn.wbuf.extend_from_slice(&msg);
        self.conn.flush().await?;
        Ok(())
    }

    /// Ends the stream politely: CopyDone, then waits for the server to finish.
    pub async fn finish(mut self) -> Result<()> {
        frontend::copy_done(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(()),
                msg = self.conn.read_raw() => match msg? {
                    Some(backend::Message::ReadyForQuery(_)) => return Ok(()),
                    Some(backend::Message::ErrorResponse(body)) => return Err(ReplicationError::Server(Box::new(ServerError::parse(&body)))),
                    _ => {}
                }
            }
        }
    }
}

fn message_name(m: &backend::Message) -> &'static str {
    match m {
        backend::Message::CopyData(_) => "CopyData",
        backend::Message::CopyInResponse(_) => "CopyInResponse",
        backend::Message::CopyOutResponse(_) => "CopyOutResponse",
        backend::Message::DataRow(_) => "DataRow",
        backend::Message::RowDescription(_) => "RowDescription",
        backend::Message::CommandComplete(_) => "CommandComplete",
        backend::Message::ReadyForQuery(_) => "ReadyForQuery",
        backend::Message::AuthenticationGss
        | backend::Message::AuthenticationSspi
        | backend::Message::AuthenticationKerberosV5 => {
            "a GSSAPI/SSPI/Kerberos authentication request (unsupported: use scram-sha-256, md5 or password)"
        }
        _ => "a message",
    }
}
