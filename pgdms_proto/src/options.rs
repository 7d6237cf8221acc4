//! Plugin options: what a consumer passes at START_REPLICATION (`pg_recvlogical -o
//! name=value`), parsed by the plugin, built by clients.

use crate::PROTO_VERSION;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFilter {
    /// Decode every change, whatever its replication origin.
    Any,
    /// Decode only changes made locally (no replication origin), so that a reverse
    /// replication applying into this database cannot loop.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub proto_version: u32,
    pub origin: OriginFilter,
}

impl Default for Options {
    fn default() -> Self {
        Options { proto_version: PROTO_VERSION, origin: OriginFilter::Any }
    }
}

/// A bad option: what to say, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub message: String,
    pub hint: String,
}

const KNOWN: &str = "proto_version, origin";

impl Options {
    /// The options as START_REPLICATION takes them.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let origin = match self.origin {
            OriginFilter::Any => "any",
            OriginFilter::None => "none",
        };
        vec![("proto_version", self.proto_version.to_string()), ("origin", origin.to_string())]
    }

    /// Parses `(name, value)` pairs; a name given without a value has `None`.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<Options, OptionError> {
        let mut options = Options::default();
        for (name, value) in pairs {
            match name {
                "proto_version" => {
                    let v = required(name, value)?;
                    let version: u32 = v.trim().parse().map_err(|_| OptionError {
                        message: format!("invalid value \"{v}\" for pgdms option \"proto_version\""),
                        hint: format!("proto_version is a whole number; this plugin speaks {PROTO_VERSION}."),
                    })?;
                    if version != PROTO_VERSION {
                        return Err(OptionError {
                            message: format!(
                                "pgdms proto_version {version} is not supported: this pgdms extension ({}) speaks proto_version {PROTO_VERSION}",
                                crate::VERSION
                            ),
                            hint: "Use a pgdms-apply of the same release as the extension on the source, or upgrade the extension with ALTER EXTENSION pgdms UPDATE.".into(),
                        });
                    }
                    options.proto_version = version;
                }
                "origin" => {
                    let v = required(name, value)?;
                    options.origin = match v.to_ascii_lowercase().as_str() {
                        "any" => OriginFilter::Any,
                        "none" => OriginFilter::None,
                        _ => {
                            return Err(OptionError {
                                message: format!("invalid value \"{v}\" for pgdms option \"origin\""),
                                hint: "origin is \"any\" (decode every change) or \"none\" (only changes made locally, not by a replication apply).".into(),
                            })
                        }
                    };
                }
                _ => {
                    return Err(OptionError {
                        message: format!("unknown pgdms option \"{name}\""),
                        hint: format!("The pgdms output plugin accepts: {KNOWN}."),
                    })
                }
            }
        }
        Ok(options)
    }
}

fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, OptionError> {
    value.ok_or_else(|| OptionError {
        message: format!("pgdms option \"{name}\" needs a value"),
        hint: format!("Pass it as {name}=VALUE (pg_recvlogical -o {name}=VALUE)."),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        assert_eq!(Options::parse([]).unwrap(), Options::default());
        let version = PROTO_VERSION.to_string();
        let o = Options::parse([("proto_version", Some(version.as_str())), ("origin", Some("NONE"))]).unwrap();
        assert_eq!(o.origin, OriginFilter::None);
        let pairs = o.to_pairs();
        let back = Options::parse(pairs.iter().map(|(k, v)| (*k, Some(v.as_str())))).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = Options::parse([("colour", Some("blue"))]).unwrap_err();
        assert!(e.message.contains("unknown pgdms option \"colour\""));
        assert!(e.hint.contains("proto_version, origin"));
        let e = Options::parse([("proto_version", Some("99"))]).unwrap_err();
        assert!(e.message.contains("proto_version 99 is not supported"));
        // Version 1 (pgdms 0.1) could not tell forged DDL messages from real ones.
        assert!(Options::parse([("proto_version", Some("1"))]).is_err());
        assert!(Options::parse([("proto_version", Some("x"))]).is_err());
        assert!(Options::parse([("origin", None)]).unwrap_err().message.contains("needs a value"));
        assert!(Options::parse([("origin", Some("some"))]).is_err());
    }
}
