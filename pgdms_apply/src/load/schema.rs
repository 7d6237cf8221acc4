//! The target's schema, from the source's own pg_dump, as of the load's snapshot.
//!
//! `pg_dump --schema-only --snapshot` writes everything the tables need in one archive;
//! `pg_restore --section=pre-data` creates extensions, types, domains, collations,
//! sequences, tables with their columns and defaults before the load, and
//! `--section=post-data` builds indexes (primary keys included), unique, check and foreign
//! key constraints, triggers and rules after it, with parallel jobs. The pgdms extension
//! itself stays on the source. Both run as the target role, never as a superuser. What the
//! target refuses because of a role it names (an owner or grantee that does not exist there,
//! or that the target role may not become) is reported as not migrated, not as a failure.

use crate::pgconn::ConnInfo;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("could not run {tool}: {source}; pass --pg-bin DIR with PostgreSQL's client programs")]
    Spawn { tool: PathBuf, source: std::io::Error },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed { tool: String, status: String, stderr: String },
    #[error("the target refused parts of the schema:\n{0}")]
    Refused(String),
}

/// PostgreSQL's client programs: `--pg-bin` if given, else those of the source's major
/// version in Debian's layout, else the newest there, else the PATH.
pub fn find_pg_bin(explicit: Option<&Path>, source_major: u32) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{source_major}/bin"));
    if debian.join("pg_dump").exists() {
        return debian;
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|v| *v >= source_major)
        .max();
    match newest {
        Some(v) => PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")),
        None => PathBuf::new(), // bare program names: the PATH
    }
}

async fn run_tool(
    bin: &Path,
    tool: &str,
    args: &[String],
    env: &[(&'static str, String)],
) -> Result<String, SchemaError> {
    let path = bin.join(tool);
    let out = Command::new(&path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| SchemaError::Spawn { tool: path.clone(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(SchemaError::Failed { tool: tool.into(), status: out.status.to_string(), stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The source's schema archive, as of `snapshot`, in `dir`.
pub async fn dump(bin: &Path, source: &ConnInfo, snapshot: &str, dir: &Path) -> Result<PathBuf, SchemaError> {
    let file = dir.join("schema.dump");
    let args = vec![
        "--format=custom".into(),
        "--schema-only".into(),
        format!("--snapshot={snapshot}"),
        format!("--file={}", file.display()),
        format!("--dbname={}", source.to_libpq()),
    ];
    run_tool(bin, "pg_dump", &args, &source.tool_env()).await?;
    // The restore list without the pgdms extension (and its comment): it stays on the source.
    let toc = run_tool(bin, "pg_restore", &["--list".into(), file.display().to_string()], &[]).await?;
    let list: String = toc.lines().filter(|l| !is_pgdms_entry(l)).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("schema.list"), list)
        .map_err(|source| SchemaError::Spawn { tool: dir.join("schema.list"), source })?;
    Ok(file)
}

/// A `pg_restore --list` line of the pgdms extension or its comment
/// (`2; 3079 16385 EXTENSION - pgdms` / `4021; 0 0 COMMENT - EXTENSION pgdms`), or of a
/// schema `pgdms` made for it before CREATE EXTENSION (`5; 2615 16384 SCHEMA - pgdms
/// postgres`, and its comment and grants): on the target, `pgdms` is pgdms-apply's own.
fn is_pgdms_entry(line: &str) -> bool {
    let t: Vec<&str> = line.split_whitespace().collect();
    matches!(t.as_slice(), [_, _, _, "EXTENSION", "-", "pgdms", ..])
        || matches!(t.as_slice(), [_, _, _, "COMMENT", "-", "EXTENSION", "pgdms", ..])
        || matches!(t.as_slice(), [_, _, _, "SCHEMA", "-", "pgdms", ..])
        || matches!(t.as_slice(), [_, _, _, "COMMENT" | "ACL", "-", "SCHEMA", "pgdms", ..])
}

/// Restores one section of the archive into the target. Returns what was not migrated
/// (owners and grants refused because of the roles they name).
///
/// It runs as the target role (`role`, or the login role, which the caller checked is no
/// superuser): index expressions, defaults and checks are the source owners' code. The
/// objects it creates are the target role's, or belong to the roles the dump names where
/// the target role may become them.
pub async fn restore(
    bin: &Path,
    target: &ConnInfo,
    role: Option<&str>,
    archive: &Path,
    section: &str,
    jobs: usize,
    clean: bool,
) -> Result<Vec<String>, SchemaError> {
    let list = archive.with_file_name("schema.list");
    let mut args = vec![
        format!("--section={section}"),
        format!("--use-list={}", list.display()),
        format!("--dbname={}", target.to_libpq()),
        format!("--jobs={}", jobs.max(1)),
    ];
    if let Some(role) = role {
        args.push(format!("--role={role}"));
    }
    if clean {
        args.push("--clean".into());
        args.push("--if-exists".into());
    }
    args.push(archive.display().to_string());
    let mut env = target.tool_env();
    // Index builds: memory for sorting, and no waiting on WAL flushes.
    env.push(("PGOPTIONS", "-c maintenance_work_mem=512MB -c synchronous_commit=off".into()));
    match run_tool(bin, "pg_restore", &args, &env).await {
        Ok(_) => Ok(Vec::new()),
        Err(SchemaError::Failed { tool, status, stderr }) => {
            let (not_migrated, refused) = classify_restore_errors(&stderr);
            if !refused.is_empty() {
                Err(SchemaError::Refused(refused.join("\n")))
            } else if not_migrated.is_empty() {
                // It failed without saying what it refused (killed, out of memory...).
                Err(SchemaError::Failed { tool, status, stderr })
            } else {
                Ok(not_migrated)
            }
        }
        Err(e) => Err(e),
    }
}

/// Splits pg_restore's errors into those about missing roles (owners and grants that
/// cannot be reproduced: reported as not migrated) and the rest.
fn classify_restore_errors(stderr: &str) -> (Vec<String>, Vec<String>) {
    let mut not_migrated = Vec::new();
    let mut refused = Vec::new();
    let mut current: Option<String> = None;
    let flush = |current: &mut Option<String>, nm: &mut Vec<String>, rf: &mut Vec<String>| {
        if let Some(e) = current.take() {
            // The owners and grantees pg_dump names: roles the target lacks, or that the
            // target role may not become or grant for.
            let about_roles = (e.contains("role \"") && e.contains("does not exist"))
                || e.contains("must be able to SET ROLE")
                || e.contains("must be member of role")
                || (e.contains("permission denied")
                    && [" OWNER TO ", "GRANT ", "REVOKE ", "DEFAULT PRIVILEGES"].iter().any(|w| e.contains(w)));
            if about_roles {
                nm.push(e);
            } else {
                rf.push(e);
            }
        }
    };
    for line in stderr.lines() {
        if line.starts_with("pg_restore: error:") {
            flush(&mut current, &mut not_migrated, &mut refused);
            current = Some(line.trim_start_matches("pg_restore: error: ").to_string());
        } else if line.starts_with("Command was:") || line.starts_with("LINE ") {
            if let Some(c) = current.as_mut() {
                c.push_str(" | ");
                c.push_str(line.trim());
            }
        } else if line.starts_with("pg_restore: warning: errors ignored on restore") {
            flush(&mut current, &mut not_migrated, &mut refused);
        }
    }
    flush(&mut current, &mut not_migrated, &mut refused);
    (not_migrated, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pgdms_extension_stays_on_the_source() {
        assert!(is_pgdms_entry("2; 3079 16385 EXTENSION - pgdms "));
        assert!(is_pgdms_entry("4021; 0 0 COMMENT - EXTENSION pgdms "));
        assert!(is_pgdms_entry("5; 2615 16384 SCHEMA - pgdms postgres"));
        assert!(is_pgdms_entry("4022; 0 0 ACL - SCHEMA pgdms postgres"));
        assert!(!is_pgdms_entry("6; 2615 16390 SCHEMA - pgdms_audit postgres"));
        assert!(!is_pgdms_entry("3; 3079 16390 EXTENSION - hstore "));
        assert!(!is_pgdms_entry("215; 1259 16400 TABLE public pgdms postgres"));
    }

    #[test]
    fn missing_roles_are_not_migrated_other_errors_are_refusals() {
        let stderr = "pg_restore: error: could not execute query: ERROR:  role \"app\" does not exist\n\
                      Command was: ALTER TABLE public.t OWNER TO app;\n\
                      pg_restore: error: could not execute query: ERROR:  type \"x\" does not exist\n\
                      Command was: CREATE TABLE public.u (a x);\n\
                      pg_restore: warning: errors ignored on restore: 2\n";
        let (nm, rf) = classify_restore_errors(stderr);
        assert_eq!(nm.len(), 1);
        assert!(nm[0].contains("OWNER TO app"));
        assert_eq!(rf.len(), 1);
        assert!(rf[0].contains("CREATE TABLE public.u"));
    }
}
