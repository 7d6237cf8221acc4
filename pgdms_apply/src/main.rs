//! The `pgdms-apply` command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pgdms_apply::apply::{self, ApplyOptions, Finished};
use pgdms_apply::dump::{self, DumpOptions};
use pgdms_apply::sql::quote_literal;
use pgdms_apply::stream::{ConnInfo, Lsn, ReplicationConnection};
use pgdms_apply::target::postgres::PostgresTarget;
use pgdms_apply::target::OnError;
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
    /// Stream a slot's changes into a PostgreSQL target and keep it in step with the source.
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
    #[arg(long, env = "PGDMS_SOURCE", default_value = "")]
    source: String,
}

impl SourceArgs {
    fn conninfo(&self) -> anyhow::Result<ConnInfo> {
        ConnInfo::parse(&self.source).context("invalid --source")
    }
}

#[derive(Args)]
struct PluginArgs {
    /// Which changes to decode: any, or none for only those not made by a replication apply.
    #[arg(long, value_enum, default_value_t = Origin::Any)]
    origin: Origin,
    /// The wire-format version to ask the plugin for.
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

#[derive(Args)]
struct CdcArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The target database (libpq connection string or URI). The role needs the right to set
    /// session_replication_role: a superuser, or on PostgreSQL 15+ one granted
    /// SET ON PARAMETER session_replication_role.
    #[arg(long, env = "PGDMS_TARGET")]
    target: String,
    /// The logical replication slot to stream from (plugin pgdms).
    #[arg(long)]
    slot: String,
    /// Create the slot first if it does not exist. Its changes start now: the target must
    /// already hold the data as of this moment.
    #[arg(long)]
    create_slot: bool,
    /// What to do with a change the target rejects: stop (naming table, LSN and key), or log
    /// it to pgdms.apply_exceptions on the target and go on.
    #[arg(long, value_enum, default_value_t = OnError::Stop)]
    on_error: OnError,
    /// Commit a group of source transactions to the target once it holds this many rows...
    #[arg(long, default_value_t = 200_000)]
    group_max_rows: usize,
    /// ...or once it is this many milliseconds old (a group also commits as soon as the
    /// stream has nothing more waiting).
    #[arg(long, default_value_t = 1000)]
    group_max_ms: u64,
    /// Send changes to the target in batches of at most this many rows.
    #[arg(long, default_value_t = 50_000)]
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
    plugin: PluginArgs,
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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
        tracing::info!("stopping: committing what is complete");
        let _ = tx.send(true);
    });
    rx
}

async fn cdc(args: CdcArgs) -> anyhow::Result<()> {
    let source = args.source.conninfo()?;
    let target = ConnInfo::parse(&args.target).context("invalid --target")?;
    if args.create_slot {
        let mut conn = ReplicationConnection::connect(&source).await?;
        let exists = conn
            .command(&format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = {}", quote_literal(&args.slot)))
            .await?;
        if exists.is_empty() {
            let slot = conn.create_slot(&args.slot, false, false).await?;
            tracing::info!(slot = %slot.name, consistent_point = %slot.consistent_point, "created replication slot");
        }
    }
    let opts = ApplyOptions {
        slot: args.slot,
        group_max_rows: args.group_max_rows.max(1),
        group_max_age: Duration::from_millis(args.group_max_ms),
        batch_max_rows: args.batch_max_rows.max(1),
        plugin_options: args.plugin.options(),
        until: args.until,
    };
    let (on_error, sync) = (args.on_error, args.synchronous_commit);
    let connect = || PostgresTarget::connect(&target, on_error, &sync);
    match apply::run(&source, connect, &opts, shutdown_watch()).await? {
        Finished::Interrupted => tracing::info!("stopped"),
        Finished::Reached => {
            tracing::info!(until = %opts.until.unwrap_or_default(), "reached --until");
            if args.drop_slot_on_finish {
                let mut conn = ReplicationConnection::connect(&source).await?;
                conn.drop_slot(&opts.slot, true)
                    .await
                    .with_context(|| format!("the migration finished, but dropping slot \"{}\" failed", opts.slot))?;
                tracing::info!(slot = %opts.slot, "migration finished: slot dropped");
            }
        }
    }
    Ok(())
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
            let rows = conn
                .command(
                    "SELECT slot_name, database, active, restart_lsn, confirmed_flush_lsn, wal_status, \
                     pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                     FROM pg_replication_slots WHERE plugin = 'pgdms' ORDER BY slot_name",
                )
                .await?;
            for r in rows {
                let c = |i: usize| r.get(i).cloned().flatten();
                println!(
                    "{}",
                    serde_json::json!({
                        "slot": c(0), "database": c(1), "active": c(2).as_deref() == Some("t"),
                        "restart_lsn": c(3), "confirmed_flush_lsn": c(4), "wal_status": c(5),
                        "retained_wal_bytes": c(6).and_then(|b| b.parse::<i64>().ok()),
                    })
                );
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            dump::run(&source, &opts, &mut out, shutdown_signal()).await
        }
    }
}

fn main() -> ExitCode {
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
        Err(e) => {
            if json_logs {
                tracing::error!(error = %format!("{e:#}"), "pgdms-apply failed");
            } else {
                eprintln!("pgdms-apply: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
