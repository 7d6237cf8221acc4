//! The `pgdms-apply` command line: arguments, logging, and each command wired to the engine.

use crate::apply::{ApplyOptions, Finished};
use crate::dump::{self, DumpOptions};
use crate::mapping::Mapping;
use crate::migrate::cutover::{self, CutoverOptions};
use crate::migrate::{self, MigrateOptions, Mode, Prep};
use crate::pgconn::ConnInfo;
use crate::sink::spec::{SinkFactory, SinkSettings, TargetSpec};
use crate::sink::typemap::{LongVarchar, MapOptions};
use crate::sink::{OnError, OnTableError, Target};
use crate::stream::ReplicationConnection;
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pgdms_proto::Lsn;
use pgdms_proto::{Options, OriginFilter};
use std::process::ExitCode;
use std::time::Duration;

/// Moves a live PostgreSQL database: streams the change records of the pgdms output plugin
/// from a replication slot and applies them to a target, exactly once.
#[derive(Parser)]
#[command(name = "pgdms-apply", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter, as RUST_LOG takes it (error, warn, info, debug, trace, or per module).
    #[arg(long, default_value = "info", env = "PGDMS_LOG", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate: create the slot with a snapshot, copy schema and tables as of it, then
    /// stream the changes (resumes where it stopped when run again).
    Migrate(MigrateArgs),
    /// End a migration: catch up with the source, set sequences, validate, drop the slot.
    Cutover(CutoverArgs),
    /// Compare every table of the source with a PostgreSQL target's (rows and their contents).
    Validate(ValidateArgs),
    /// Stream a slot's changes into the target and keep it in step with the source.
    Cdc(CdcArgs),
    /// Print a slot's change records as JSON lines on stdout, acknowledging what was printed.
    Dump(DumpArgs),
    /// Create, drop or list the source's pgdms replication slots.
    #[command(subcommand)]
    Slot(SlotCommand),
}

#[derive(Args)]
struct SourceArgs {
    /// The source database, as a libpq connection string or URI
    /// ("host=db user=migrator dbname=app" or "postgresql://migrator@db/app");
    /// PG* environment variables fill in what it leaves out.
    #[arg(long, env = "PGDMS_SOURCE", hide_env_values = true, default_value = "")]
    source: String,
}

impl SourceArgs {
    fn conninfo(&self) -> anyhow::Result<ConnInfo> {
        ConnInfo::parse(&self.source).map(|c| c.on("source")).context("invalid --source")
    }
}

#[derive(Args)]
struct PluginArgs {
    /// Which changes to decode: any, or none for only those not made by a replication apply.
    #[arg(long, value_enum, default_value_t = Origin::Any)]
    origin: Origin,
    /// The wire-format version to ask the plugin for.
    /// (A version the plugin does not speak is refused by the plugin, with a hint.)
    #[arg(long, default_value_t = pgdms_proto::PROTO_VERSION)]
    proto_version: u32,
}

impl PluginArgs {
    fn options(&self) -> Options {
        Options {
            proto_version: self.proto_version,
            origin: match self.origin {
                Origin::Any => OriginFilter::Any,
                Origin::None => OriginFilter::None,
            },
        }
    }
}

/// How changes are applied to the target: shared by cdc, migrate and cutover.
#[derive(Args)]
struct ApplyArgs {
    /// The target. A PostgreSQL database (libpq connection string or URI), written as a role
    /// without superuser (see --target-role): the login must be allowed to set
    /// session_replication_role (PostgreSQL 15+: GRANT SET ON PARAMETER
    /// session_replication_role TO it), and the role it acts as needs CREATE on the database
    /// and to own (or be a member of the owners of) the tables it writes; or, through the
    /// DMS type mapping, `mysql://USER:PASSWORD@HOST:PORT[/DATABASE]` (MySQL or MariaDB;
    /// without a database each source schema goes to the database of its name),
    /// `sqlite:PATH` (a SQLite database file) or `jsonl:PATH` / `jsonl:-` (a JSON-lines
    /// stream to a file or stdout).
    #[arg(long, env = "PGDMS_TARGET", hide_env_values = true)]
    target: String,
    /// PostgreSQL target: the role to act as (SET ROLE after connecting), if not the login
    /// role. It must not be a superuser, nor able to become one or to run programs or read
    /// and write files on the server: the source's owners' defaults, checks and triggers run
    /// while pgdms-apply writes. Each table is written, and each object's DDL replayed, as
    /// its owner on the target when this role may become it (through the owner's gate, a
    /// SECURITY DEFINER function in schema pgdms_gate, where the owner's code cannot change
    /// role), as PostgreSQL 16's subscriptions do. With a superuser login, code on tables this
    /// role owns could take the login's rights back (RESET ROLE): log in as the role itself.
    #[arg(long, env = "PGDMS_TARGET_ROLE")]
    target_role: Option<String>,
    /// The logical replication slot to stream from (plugin pgdms).
    #[arg(long)]
    slot: String,
    /// What to do with a change the target rejects: stop (naming table, LSN and key), or log
    /// it to pgdms_apply.apply_exceptions on the target and go on.
    #[arg(long, value_enum, default_value_t = OnError::Stop)]
    on_error: OnError,
    /// What to do with a table the target refuses (its load fails, or, with --on-error
    /// stop, a change of it): stop, naming it (what was loaded and applied stays; the same
    /// command resumes once the cause is fixed), or suspend it: set it aside, recorded in
    /// pgdms_apply.suspended_table on the target, pass over its changes, counting them,
    /// and go on with every other table. `migrate --reload-table` brings it back.
    /// PostgreSQL targets.
    #[arg(long, value_enum, default_value_t = OnTableError::Stop)]
    on_table_error: OnTableError,
    /// Commit a group of source transactions to the target once it holds this many rows...
    #[arg(long, default_value_t = 200_000, value_parser = at_least_one)]
    group_max_rows: usize,
    /// ...or once it is this many milliseconds old (a group also commits as soon as the
    /// stream has nothing more waiting).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    group_max_ms: u64,
    /// Send changes to the target in batches of at most this many rows.
    #[arg(long, default_value_t = 50_000, value_parser = at_least_one)]
    batch_max_rows: usize,
    /// synchronous_commit of the target session. With "off", a crash of the target server can
    /// lose its last commits after they were acknowledged to the source, which then never
    /// sends them again: use it only for a target you would reload after a crash.
    #[arg(long, default_value = "on")]
    synchronous_commit: String,
    /// Exit once every source transaction up to this LSN (X/Y) is applied.
    #[arg(long)]
    until: Option<Lsn>,
    /// With --until: drop the slot once everything up to that LSN is applied, so a finished
    /// migration leaves no slot holding WAL on the source. (Not on an interruption.)
    #[arg(long, requires = "until")]
    drop_slot_on_finish: bool,
    #[command(flatten)]
    mappings: MappingArgs,
    #[command(flatten)]
    types: TypeMapArgs,
    #[command(flatten)]
    plugin: PluginArgs,
}

/// The reference's data type mapping settings (heterogeneous targets).
#[derive(Args)]
struct TypeMapArgs {
    /// Heterogeneous targets: booleans as the target's boolean (MySQL BOOLEAN, SQLite 0/1,
    /// JSON true/false) rather than CHAR(5) 'true'/'false'.
    #[arg(long)]
    map_boolean_as_boolean: bool,
    /// Heterogeneous targets: json, jsonb and hstore as CLOB rather than NCLOB.
    #[arg(long)]
    map_jsonb_as_clob: bool,
    /// Heterogeneous targets: varchar without a length as WSTRING, CLOB or NCLOB.
    #[arg(long, value_enum, default_value_t = LongVarchar::Nclob)]
    map_long_varchar_as: LongVarchar,
}

impl TypeMapArgs {
    fn options(&self) -> MapOptions {
        MapOptions {
            boolean_as_boolean: self.map_boolean_as_boolean,
            jsonb_as_clob: self.map_jsonb_as_clob,
            long_varchar_as: self.map_long_varchar_as,
        }
    }
}

#[derive(Args)]
struct MappingArgs {
    /// Table mappings, in the AWS DMS JSON table-mapping format: selection rules (include /
    /// exclude, with % wildcards) and transformation rules (rename, add/remove prefix or
    /// suffix, convert case, remove-column) for schemas, tables and columns.
    #[arg(long, value_name = "FILE")]
    table_mappings: Option<std::path::PathBuf>,
}

impl MappingArgs {
    fn load(&self) -> anyhow::Result<Mapping> {
        match &self.table_mappings {
            None => Ok(Mapping::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("could not read --table-mappings {}", path.display()))?;
                Mapping::parse(&text).with_context(|| format!("in {}", path.display()))
            }
        }
    }
}

impl ApplyArgs {
    fn options(&self) -> anyhow::Result<ApplyOptions> {
        let mapping = self.mappings.load()?;
        Ok(ApplyOptions {
            slot: self.slot.clone(),
            group_max_rows: self.group_max_rows,
            group_max_age: Duration::from_millis(self.group_max_ms),
            batch_max_rows: self.batch_max_rows,
            plugin_options: self.plugin.options(),
            until: self.until,
            start_lsn: None,
            start_time: None,
            mapping: (!mapping.is_identity()).then(|| std::sync::Arc::new(mapping)),
            reloaded: Default::default(),
            on_table_error: self.on_table_error,
        })
    }

    /// The target `--target` names, with how to write it: the one dispatch point.
    fn sink(&self) -> anyhow::Result<SinkFactory> {
        Ok(SinkFactory {
            spec: TargetSpec::parse(&self.target)?,
            settings: SinkSettings {
                on_error: self.on_error,
                map: self.types.options(),
                synchronous_commit: self.synchronous_commit.clone(),
                target_role: self.target_role.clone(),
            },
        })
    }
}

#[derive(Args)]
struct CdcArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    apply: ApplyArgs,
    /// Create the slot first if it does not exist. Its changes start now: the target must
    /// already hold the data as of this moment.
    #[arg(long)]
    create_slot: bool,
    /// Apply only transactions that commit at or after this LSN (X/Y). It must not be
    /// before the slot's confirmed_flush_lsn: decoding cannot go back.
    #[arg(long)]
    start_lsn: Option<Lsn>,
    /// Apply only transactions that commit at or after this time (RFC 3339,
    /// "2026-11-24T10:00:00Z"); earlier ones are passed over.
    #[arg(long)]
    start_time: Option<String>,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    apply: ApplyArgs,
    /// full-load: copy the tables only; full-load-and-cdc: then stream the changes.
    #[arg(long, value_enum, default_value_t = Mode::FullLoadAndCdc)]
    mode: Mode,
    /// The target's tables: drop-and-create them from the source's schema (indexes and
    /// constraints after the load), truncate them, or load into them as they are.
    #[arg(long, value_enum, default_value_t = Prep::DropAndCreate)]
    target_prep: Prep,
    /// Parallel load sessions (each a source and a target connection), and index builds.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    jobs: usize,
    /// Tables larger than this are loaded in parallel block ranges of about this size
    /// ("100MB"; 0, the default, never splits). A table loaded whole by a migration that
    /// created it is written frozen (COPY FREEZE): no hint-bit writes or anti-wraparound
    /// vacuum of it later, and a cheaper index build. Ranges give that up for parallelism
    /// within the table, which pays when the target has cores to spare.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    split_tables_larger_than: u64,
    /// Directory of PostgreSQL's client programs (pg_dump, pg_restore); default: those of
    /// the source's major version.
    #[arg(long, env = "PGDMS_PG_BIN")]
    pg_bin: Option<std::path::PathBuf>,
    /// Copy this table again from a new snapshot of the source, then stream on, taking its
    /// changes over exactly: how a suspended table (--on-table-error suspend), or one a
    /// rewrite on the source flagged, is brought back into step. SCHEMA.NAME, a part quoted
    /// when it holds a dot or capitals ("Sales"."Orders"), % matching any run of characters;
    /// a partitioned table stands for its partitions. Repeatable. The migration's slot must
    /// not be streamed from meanwhile (stop the running migrate first). PostgreSQL targets.
    #[arg(long, value_name = "SCHEMA.NAME")]
    reload_table: Vec<migrate::reload::TablePattern>,
}

#[derive(Args)]
struct CutoverArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    apply: ApplyArgs,
    /// Drop the slot once the target has caught up and validated.
    #[arg(long)]
    drop_slot: bool,
    /// Do not compare the tables (validate) after catching up.
    #[arg(long)]
    skip_validate: bool,
}

#[derive(Args)]
struct ValidateArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The target database: PostgreSQL (the other target kinds cannot be validated yet).
    #[arg(long, env = "PGDMS_TARGET", hide_env_values = true)]
    target: String,
    #[command(flatten)]
    mappings: MappingArgs,
}

/// "100MB", "1GB", "512kB", "1048576".
/// A count that must be 1 or more (0 jobs or 0-row groups would do nothing, forever).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("\"{s}\" is not a whole number")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("\"{s}\" is not a size: write 100MB, 1GB, 512kB or bytes"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => return Err(format!("unknown size unit \"{other}\": use kB, MB, GB or TB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("\"{s}\" is too large"))
}

#[derive(Args)]
struct DumpArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The logical replication slot to read (it must use the pgdms plugin).
    #[arg(long)]
    slot: String,
    /// Create the slot first (fails if it exists).
    #[arg(long)]
    create_slot: bool,
    /// With --create-slot: a temporary slot, dropped when this command exits.
    #[arg(long, requires = "create_slot")]
    temporary: bool,
    /// Start at this LSN (X/Y); the default, 0/0, means where the slot left off.
    #[arg(long, default_value = "0/0")]
    start_lsn: Lsn,
    /// Stop once the stream has reached this LSN (X/Y), as pg_recvlogical --endpos does.
    #[arg(long)]
    endpos: Option<Lsn>,
    /// Confirm what was read, so that the slot moves past it. Without it the slot stays
    /// where it was: a migration's slot keeps every change for its target. To look at a
    /// stream, use a slot of its own: --create-slot --temporary.
    #[arg(long)]
    ack: bool,
    #[command(flatten)]
    plugin: PluginArgs,
}

#[derive(Subcommand)]
enum SlotCommand {
    /// Create a logical replication slot for the pgdms plugin; prints its consistent point.
    Create {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long)]
        slot: String,
    },
    /// Drop a replication slot (waiting for a consumer still attached to go away).
    Drop {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long)]
        slot: String,
    },
    /// List the pgdms slots of the source with the WAL each one holds back.
    List {
        #[command(flatten)]
        source: SourceArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Origin {
    Any,
    None,
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .with_context(|| format!("invalid --log filter \"{}\"", cli.log))?;
    // Colours only for a person at a terminal, never in a file or a pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A watch channel that turns true on SIGINT/SIGTERM.
fn shutdown_watch() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: committing what is complete (a second signal stops at once)");
        let _ = tx.send(true);
        // A second signal: the user will not wait. Every target transaction is whole or
        // rolled back by the server when its session goes, so leaving now loses nothing.
        shutdown_signal().await;
        tracing::warn!("stopping at once: what was not committed rolls back, the same command resumes");
        std::process::exit(130);
    });
    rx
}

async fn cdc(args: CdcArgs) -> anyhow::Result<()> {
    let source = args.source.conninfo()?;
    let sink = args.apply.sink()?;
    let mut opts = args.apply.options()?;
    migrate::check_table_options(&sink, opts.on_table_error, false)?;
    migrate::refuse_same_database(&source, &sink).await?;
    let mut conn = ReplicationConnection::connect(&source).await?;
    let slot = conn.slot(&opts.slot).await?;
    if args.create_slot && slot.is_none() {
        let slot = conn.create_slot(&opts.slot, false, false).await?;
        tracing::info!(slot = %slot.name, consistent_point = %slot.consistent_point, "created replication slot");
    }
    if let Some(start) = args.start_lsn {
        let confirmed = slot.and_then(|s| s.confirmed_flush_lsn).unwrap_or_default();
        if start < confirmed {
            anyhow::bail!(
                "--start-lsn {start} is before the slot's confirmed_flush_lsn {confirmed}: decoding cannot go back \
                 that far. Start at {confirmed} or later, or reload the target (pgdms-apply migrate)"
            );
        }
        // Transactions committing before it are passed over like already applied ones.
        opts.start_lsn = Some(start);
    }
    if let Some(t) = &args.start_time {
        opts.start_time = Some(parse_time(t)?);
    }
    drop(conn);
    // The slot of a migration whose load reloaded tables: their changes already in the copy
    // are passed over here too.
    {
        let slot = opts.slot.clone();
        let mut target = sink.connect().await?;
        target.start(&slot).await?;
        migrate::set_reloaded_tables(&mut target, &slot, &mut opts).await?;
    }
    let drop_slot = args.apply.drop_slot_on_finish;
    match migrate::stream_changes(&source, &sink, drop_slot, &opts, shutdown_watch()).await? {
        Finished::Interrupted => tracing::info!("stopped"),
        Finished::Reached => tracing::info!(until = %opts.until.unwrap_or_default(), "reached --until"),
    }
    migrate::check_suspended(&sink, &opts.slot).await?;
    Ok(())
}

/// "2026-11-24T10:00:00Z" (or with an offset) as microseconds since 2000-01-01 UTC.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    pgdms_proto::pgtext::parse_rfc3339_micros(s).with_context(|| {
        format!("--start-time \"{s}\" is not a time: write it as 2026-11-24T10:00:00Z or 2026-11-24T12:00:00+02:00")
    })
}

async fn migrate_cmd(args: MigrateArgs) -> anyhow::Result<()> {
    let source = args.source.conninfo()?;
    let sink = args.apply.sink()?;
    let opts = MigrateOptions {
        mode: args.mode,
        prep: args.target_prep,
        jobs: args.jobs,
        split_bytes: args.split_tables_larger_than,
        pg_bin: args.pg_bin,
        apply: args.apply.options()?,
        drop_slot_on_finish: args.apply.drop_slot_on_finish,
        mapping: args.apply.mappings.load()?,
        reload: args.reload_table,
    };
    match migrate::migrate(&source, &sink, &opts, shutdown_watch()).await? {
        Finished::Interrupted => tracing::info!("stopped; run the same command again to resume"),
        Finished::Reached => tracing::info!("migration done"),
    }
    migrate::check_suspended(&sink, &opts.apply.slot).await?;
    Ok(())
}

fn print_reports(reports: &[crate::validate::TableReport]) -> anyhow::Result<()> {
    let (mut differ, mut left_out, mut suspended) = (0, 0, 0);
    for r in reports {
        println!("{}", crate::validate::describe(r));
        differ += usize::from(!r.ok());
        left_out += usize::from(r.not_migrated.is_some());
        suspended += usize::from(r.suspended.is_some());
    }
    let compared = reports.len() - left_out;
    let mut summary = format!("{compared} tables compared, {differ} differ");
    if suspended > 0 {
        summary += &format!(" ({suspended} suspended)");
    }
    if left_out > 0 {
        summary += &format!(", {left_out} not migrated");
    }
    println!("{summary}");
    if suspended > 0 {
        anyhow::bail!(
            "{differ} of {compared} tables differ between source and target, {suspended} of them suspended: \
             bring those back with migrate --reload-table"
        );
    }
    if differ > 0 {
        anyhow::bail!("{differ} of {compared} tables differ between source and target");
    }
    Ok(())
}

async fn cutover_cmd(args: CutoverArgs) -> anyhow::Result<()> {
    let source = args.source.conninfo()?;
    let sink = args.apply.sink()?;
    let cut = CutoverOptions { drop_slot: args.drop_slot, skip_validate: args.skip_validate };
    let reports = cutover::cutover(&source, &sink, &args.apply.options()?, &cut, shutdown_watch()).await?;
    if args.skip_validate {
        return Ok(());
    }
    print_reports(&reports)
}

async fn validate_cmd(args: ValidateArgs) -> anyhow::Result<()> {
    let source = args.source.conninfo()?;
    let spec = TargetSpec::parse(&args.target)?;
    let target = spec.postgres("validate")?;
    let src = crate::pgconn::client::connect(&source, "pgdms-apply validate").await?;
    let tgt = crate::pgconn::client::connect(target, "pgdms-apply validate").await?;
    let reports = crate::validate::validate_all(&src.client, &tgt.client, &args.mappings.load()?).await?;
    print_reports(&reports)
}

async fn slot(cmd: SlotCommand) -> anyhow::Result<()> {
    match cmd {
        SlotCommand::Create { source, slot } => {
            let mut conn = ReplicationConnection::connect(&source.conninfo()?).await?;
            let created = conn
                .create_slot(&slot, false, false)
                .await
                .with_context(|| format!("could not create slot \"{slot}\""))?;
            println!(
                "{}",
                serde_json::json!({"slot": created.name, "consistent_point": created.consistent_point.to_string()})
            );
        }
        SlotCommand::Drop { source, slot } => {
            let mut conn = ReplicationConnection::connect(&source.conninfo()?).await?;
            conn.drop_slot(&slot, true).await.with_context(|| format!("could not drop slot \"{slot}\""))?;
            tracing::info!(%slot, "dropped");
        }
        SlotCommand::List { source } => {
            let mut conn = ReplicationConnection::connect(&source.conninfo()?).await?;
            for s in conn.pgdms_slots().await? {
                let lsn = |l: Option<Lsn>| l.map(|l| l.to_string());
                println!(
                    "{}",
                    serde_json::json!({
                        "slot": s.name, "database": s.database, "active": s.active,
                        "restart_lsn": lsn(s.restart_lsn), "confirmed_flush_lsn": lsn(s.confirmed_flush_lsn),
                        "wal_status": s.wal_status, "retained_wal_bytes": s.retained_wal_bytes,
                    })
                );
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(args) => migrate_cmd(args).await,
        Command::Cutover(args) => cutover_cmd(args).await,
        Command::Validate(args) => validate_cmd(args).await,
        Command::Cdc(args) => cdc(args).await,
        Command::Slot(cmd) => slot(cmd).await,
        Command::Dump(args) => {
            let source = args.source.conninfo()?;
            let opts = DumpOptions {
                slot: args.slot,
                create_slot: args.create_slot,
                temporary_slot: args.temporary,
                start_lsn: args.start_lsn,
                endpos: args.endpos,
                plugin_options: args.plugin.options(),
                ack: args.ack,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            dump::run(&source, &opts, &mut out, shutdown_signal()).await
        }
    }
}

/// An error and its causes, each said once: many errors already print their cause in their
/// own message (tokio-postgres's "db error: ERROR: ..."; ours that end in ": {source}"), so a
/// cause whose text the message before it holds adds nothing.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // tokio-postgres's word for "the server said", before what it said.
        let text = text.strip_prefix("db error: ").unwrap_or(&text);
        if out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

/// The exit status of a run that ended with tables suspended (`--on-table-error suspend`).
pub const SUSPENDED_EXIT: u8 = 3;

/// Runs the command line: parses the arguments, runs the command, and says how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("pgdms-apply: {e:#}");
        return ExitCode::from(2);
    }
    // One thread: the receiver and the applier mostly wait on sockets, and on a small machine
    // handing work between threads costs more than the work itself.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgdms-apply: could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // Not a failure of the run: it did what it could, and says which tables it set aside.
        Err(e) if matches!(e.downcast_ref(), Some(migrate::MigrateError::Suspended { .. })) => {
            if json_logs {
                tracing::warn!(error = %e, "pgdms-apply: tables suspended");
            } else {
                eprintln!("pgdms-apply: {e}");
            }
            ExitCode::from(SUSPENDED_EXIT)
        }
        Err(e) => {
            if json_logs {
                tracing::error!(error = %error_chain(&e), "pgdms-apply failed");
            } else {
                eprintln!("pgdms-apply: error: {}", error_chain(&e));
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("could not connect to the target: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Outer(io())).context("migrate");
        assert_eq!(error_chain(&e), "migrate: could not connect to the target: Connection refused");
        let e = anyhow::Error::new(io()).context("reading the slot");
        assert_eq!(error_chain(&e), "reading the slot: Connection refused");
    }
}
