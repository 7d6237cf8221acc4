//! Connection settings as libpq reads them: a `key=value` string or a `postgres://` URI,
//! with `PG*` environment variables and libpq's defaults filling what they leave out.

use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// Shown only as a near miss of a key: an unquoted value with a space in it
    /// (`password=ab cd=x`) makes part of a password look like a key.
    #[error("{}", unknown_key_message(.0))]
    UnknownKey(String),
    #[error("invalid {key} value \"{value}\": {why}")]
    BadValue { key: &'static str, value: String, why: &'static str },
}

/// Where to connect: a Unix-socket directory or a TCP host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where and how to connect. Its `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: Option<String>,
    /// Command-line options for the server (`-c name=value ...`).
    pub options: Option<String>,
    pub connect_timeout: Option<u64>,
    /// Which side of the migration it reaches ("source", "target"): every message about the
    /// connection names it, so that an error says where it happened.
    pub side: Option<&'static str>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl std::fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The keys we accept, each with its environment variable.
const KEYS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("dbname", "PGDATABASE"),
    ("password", "PGPASSWORD"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("application_name", "PGAPPNAME"),
    ("options", "PGOPTIONS"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("replication", ""),
    ("fallback_application_name", ""),
];

/// libpq's default socket directory on Debian.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

impl ConnInfo {
    /// Parses `s` the way libpq does, taking unset values from the process environment.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    pub fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let mut kv = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_keywords(s)?
        };
        for (key, var) in KEYS {
            if !var.is_empty() && !kv.contains_key(*key) {
                if let Some(v) = env(var) {
                    kv.insert(key.to_string(), v);
                }
            }
        }
        let get = |k: &str| kv.get(k).filter(|v| !v.is_empty()).cloned();

        let host = match get("host").or_else(|| get("hostaddr")) {
            // libpq takes the first of a comma-separated list first.
            Some(h) => {
                let h = h.split(',').next().unwrap_or_default().to_string();
                if h.starts_with('/') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h)
                }
            }
            None => Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR)),
        };
        let port = match get("port") {
            Some(p) => p.split(',').next().unwrap_or_default().parse().map_err(|_| ConnInfoError::BadValue {
                key: "port",
                value: p.clone(),
                why: "a port is a number from 1 to 65535",
            })?,
            None => 5432,
        };
        let user = get("user").or_else(|| env("USER")).or_else(|| env("LOGNAME")).unwrap_or_else(|| "postgres".into());
        let dbname = get("dbname").unwrap_or_else(|| user.clone());
        let sslmode = match get("sslmode").as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("allow") => SslMode::Allow,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(ConnInfoError::BadValue {
                    key: "sslmode",
                    value: other.into(),
                    why: "use disable, allow, prefer, require, verify-ca or verify-full",
                })
            }
        };
        let connect_timeout = match get("connect_timeout") {
            Some(t) => Some(t.parse().map_err(|_| ConnInfoError::BadValue {
                key: "connect_timeout",
                value: t.clone(),
                why: "a number of seconds",
            })?),
            None => None,
        };
        Ok(ConnInfo {
            host,
            port,
            user,
            dbname,
            password: kv.get("password").cloned().or_else(|| env("PGPASSWORD")),
            sslmode,
            sslrootcert: get("sslrootcert").map(PathBuf::from),
            application_name: get("application_name").or_else(|| get("fallback_application_name")),
            options: get("options"),
            connect_timeout,
            side: None,
        })
    }

    /// The same settings, named as `side` of the migration in messages.
    pub fn on(mut self, side: &'static str) -> ConnInfo {
        self.side = Some(side);
        self
    }

    /// A libpq connection string for PostgreSQL's own tools (pg_dump, pg_restore), without
    /// the password: pass that in their environment (see [`ConnInfo::tool_env`]).
    pub fn to_libpq(&self) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let host = match &self.host {
            Host::Unix(dir) => dir.display().to_string(),
            Host::Tcp(h) => h.clone(),
        };
        let sslmode = match self.sslmode {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        };
        let mut s = format!(
            "host={} port={} user={} dbname={} sslmode={sslmode}",
            quote(&host),
            self.port,
            quote(&self.user),
            quote(&self.dbname)
        );
        if let Some(root) = &self.sslrootcert {
            s += &format!(" sslrootcert={}", quote(&root.display().to_string()));
        }
        if let Some(o) = &self.options {
            s += &format!(" options={}", quote(o));
        }
        if let Some(t) = self.connect_timeout {
            s += &format!(" connect_timeout={t}");
        }
        s
    }

    /// Environment for a PostgreSQL tool run with [`ConnInfo::to_libpq`]: the password, kept
    /// off the command line.
    pub fn tool_env(&self) -> Vec<(&'static str, String)> {
        self.password.iter().map(|p| ("PGPASSWORD", p.clone())).collect()
    }

    /// For messages: where this connects, without the password.
    pub fn describe(&self) -> String {
        let side = self.side.map(|s| format!("the {s}, ")).unwrap_or_default();
        side + &match &self.host {
            Host::Unix(dir) => {
                format!("{}@{}/.s.PGSQL.{} database \"{}\"", self.user, dir.display(), self.port, self.dbname)
            }
            Host::Tcp(h) => format!("{}@{}:{} database \"{}\"", self.user, h, self.port, self.dbname),
        }
    }
}

fn unknown_key_message(key: &str) -> String {
    match KEYS.iter().map(|(k, _)| *k).find(|k| strsim::levenshtein(key, k) <= 2) {
        Some(near) => format!("invalid connection option \"{key}\" (did you mean \"{near}\"?)"),
        None => "invalid connection option (not shown: it may be part of an unquoted value, write password='a b'); \
                 see libpq's list of parameter key words"
            .into(),
    }
}

fn check_key(key: &str) -> Result<(), ConnInfoError> {
    if KEYS.iter().any(|(k, _)| *k == key) {
        Ok(())
    } else {
        Err(ConnInfoError::UnknownKey(key.into()))
    }
}

/// `key=value key2='quoted \' value'`
fn parse_keywords(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // A word that is not a key may be a password typed on its own: not shown.
            let word = if KEYS.iter().any(|(k, _)| *k == key) { format!("\"{key}\"") } else { "a word".into() };
            return Err(ConnInfoError::Syntax(format!("missing \"=\" after {word}: write key=value pairs")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(ConnInfoError::Syntax(format!("unterminated quoted value for \"{key}\""))),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        check_key(&key)?;
        out.insert(key, value);
    }
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                // The text may be a password: not shown.
                None => {
                    return Err(ConnInfoError::Syntax(
                        "invalid percent-encoding in the URI (a \"%\" not followed by two hex digits; write %25 for %)"
                            .into(),
                    ))
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::Syntax("a part of the URI is not UTF-8 once decoded".into()))
}

/// `postgresql://[user[:password]@][host][:port][/dbname][?key=value&...]`
fn parse_uri(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut out = BTreeMap::new();
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.insert("user".into(), percent_decode(user)?);
            }
            if let Some(p) = password {
                out.insert("password".into(), percent_decode(p)?);
            }
            hp
        }
        None => authority,
    };
    let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
        // [v6addr]:port
        let (h, after) = stripped.split_once(']').ok_or_else(|| {
            ConnInfoError::Syntax("unterminated IPv6 address (a \"[\" without \"]\") in the URI".into())
        })?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    if !host.is_empty() {
        out.insert("host".into(), percent_decode(&host)?);
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.insert("port".into(), p);
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.insert("dbname".into(), percent_decode(db)?);
    }
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConnInfoError::Syntax("a URI parameter without \"=\": write ?key=value&key=value".into()))?;
        let k = percent_decode(k)?;
        check_key(&k)?;
        out.insert(k, percent_decode(v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn keyword_form() {
        let c =
            ConnInfo::parse_with_env("host=/tmp/x port=5433 user=bob dbname='my db' password='a\\'b'", no_env).unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/x".into()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.password.as_deref(), Some("a'b"));
        assert_eq!(c.sslmode, SslMode::Prefer);
    }

    #[test]
    fn uri_form() {
        let c = ConnInfo::parse_with_env(
            "postgresql://al%40ice:p%3Ass@db.example:6543/sales?sslmode=verify-full&application_name=x",
            no_env,
        )
        .unwrap();
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname, "sales");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        let c = ConnInfo::parse_with_env("postgres://%2Ftmp%2Fsock/db", no_env).unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/sock".into()));
        let c = ConnInfo::parse_with_env("postgres://[::1]:5/db", no_env).unwrap();
        assert_eq!((c.host, c.port), (Host::Tcp("::1".into()), 5));
    }

    #[test]
    fn environment_fills_gaps_but_does_not_override() {
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".to_string()),
            "PGPORT" => Some("7777".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            _ => None,
        };
        let c = ConnInfo::parse_with_env("port=1", env).unwrap();
        assert_eq!(c.host, Host::Tcp("envhost".into()));
        assert_eq!(c.port, 1);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.dbname, "envuser");
    }

    #[test]
    fn passwords_are_never_shown() {
        let c = ConnInfo::parse_with_env("postgresql://bob:s3cret@db/app", no_env).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert!(!format!("{c}").contains("s3cret"), "{c}");
        assert!(!format!("{c:#?}").contains("s3cret"));
        for bad in [
            "postgresql://bob:s3cret@[::1/app",
            "host=db s3cret",
            "postgresql://bob:s3cret@db/app?s3cret",
            "postgresql://bob:50%s3cret@db/app",
            "password=ab s3cret=x",
        ] {
            let e = ConnInfo::parse_with_env(bad, no_env).unwrap_err();
            assert!(!e.to_string().contains("s3cret"), "{bad}: {e}");
        }
        let typo = ConnInfo::parse_with_env("hots=db", no_env).unwrap_err().to_string();
        assert!(typo.contains("\"hots\"") && typo.contains("did you mean \"host\""), "{typo}");
    }

    #[test]
    fn errors() {
        assert_eq!(ConnInfo::parse_with_env("bogus=1", no_env), Err(ConnInfoError::UnknownKey("bogus".into())));
        assert!(ConnInfo::parse_with_env("port=x", no_env).is_err());
        assert!(ConnInfo::parse_with_env("host", no_env).is_err());
        assert!(ConnInfo::parse_with_env("dbname='open", no_env).is_err());
        assert!(ConnInfo::parse_with_env("sslmode=maybe", no_env).is_err());
    }
}
