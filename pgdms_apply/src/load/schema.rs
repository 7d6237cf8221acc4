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
    #[error("source: {0}")]
    Source(String),
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
        // A migration stopped by a signal drops this future: the tool goes with it.
        .kill_on_drop(true)
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
        // A source that is itself a migration's target (B in A -> B -> C) keeps that
        // migration's state in pgdms-apply's control schema: it is not part of the data.
        format!("--exclude-schema={}", crate::sink::postgres::CONTROL_SCHEMA),
        format!("--snapshot={snapshot}"),
        format!("--file={}", file.display()),
        format!("--dbname={}", source.to_libpq()),
    ];
    run_tool(bin, "pg_dump", &args, &source.tool_env()).await?;
    // The restore list without the pgdms extension (and its comment): it stays on the source.
    let ext_schema = extension_schema(source).await?;
    let toc = run_tool(bin, "pg_restore", &["--list".into(), file.display().to_string()], &[]).await?;
    let list: String =
        toc.lines().filter(|l| !is_pgdms_entry(l, ext_schema.as_deref())).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("schema.list"), list)
        .map_err(|source| SchemaError::Spawn { tool: dir.join("schema.list"), source })?;
    Ok(file)
}

/// The schema the source's pgdms extension was created in (`CREATE EXTENSION pgdms SCHEMA
/// pgdms_audit`), when it holds nothing but the extension's relations: made for the
/// extension, it stays with it. `public` or a schema with tables of its own is the user's.
async fn extension_schema(source: &ConnInfo) -> Result<Option<String>, SchemaError> {
    let conn =
        crate::pgconn::client::connect(source, "pgdms-apply").await.map_err(|e| SchemaError::Source(e.to_string()))?;
    let row = conn
        .client
        .query_opt(
            "SELECT n.nspname::text FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
              WHERE e.extname = 'pgdms' AND n.nspname NOT IN ('public', 'pgdms')
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c
                                 WHERE c.relnamespace = n.oid AND c.relkind NOT IN ('i', 'I')
                                   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                                                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                                      AND d.objid = c.oid AND d.deptype = 'e'))",
            &[],
        )
        .await
        .map_err(|e| SchemaError::Source(crate::pgconn::client::error_text(&e)))?;
    row.map(|r| r.try_get(0)).transpose().map_err(|e| SchemaError::Source(e.to_string()))
}

/// A `pg_restore --list` line of the pgdms extension or its comment
/// (`2; 3079 16385 EXTENSION - pgdms` / `4021; 0 0 COMMENT - EXTENSION pgdms`), or of a
/// schema made for it before CREATE EXTENSION (`pgdms`, or `ext_schema`: `5; 2615 16384
/// SCHEMA - pgdms postgres`, and its comment and grants): the extension stays on the
/// source, and a target that wants one installs it itself.
fn is_pgdms_entry(line: &str, ext_schema: Option<&str>) -> bool {
    let t: Vec<&str> = line.split_whitespace().collect();
    let ours = |name: &str| name == "pgdms" || Some(name) == ext_schema;
    matches!(t.as_slice(), [_, _, _, "EXTENSION", "-", "pgdms", ..])
        || matches!(t.as_slice(), [_, _, _, "COMMENT", "-", "EXTENSION", "pgdms", ..])
        || matches!(t.as_slice(), [_, _, _, "SCHEMA", "-", name, ..] if ours(name))
        || matches!(t.as_slice(), [_, _, _, "COMMENT" | "ACL", "-", "SCHEMA", name, ..] if ours(name))
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
        assert!(is_pgdms_entry("2; 3079 16385 EXTENSION - pgdms ", None));
        assert!(is_pgdms_entry("4021; 0 0 COMMENT - EXTENSION pgdms ", None));
        assert!(is_pgdms_entry("5; 2615 16384 SCHEMA - pgdms postgres", None));
        assert!(is_pgdms_entry("4022; 0 0 ACL - SCHEMA pgdms postgres", None));
        assert!(!is_pgdms_entry("6; 2615 16390 SCHEMA - pgdms_audit postgres", None));
        assert!(is_pgdms_entry("6; 2615 16390 SCHEMA - pgdms_audit postgres", Some("pgdms_audit")));
        assert!(!is_pgdms_entry("6; 2615 16390 SCHEMA - other postgres", Some("pgdms_audit")));
        assert!(!is_pgdms_entry("3; 3079 16390 EXTENSION - hstore ", None));
        assert!(!is_pgdms_entry("215; 1259 16400 TABLE public pgdms postgres", Some("public")));
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
