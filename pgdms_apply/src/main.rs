//! The `pgdms-apply` command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pgdms_apply::dump::{self, DumpOptions};
use pgdms_apply::stream::{ConnInfo, Lsn};
use pgdms_proto::{Options, OriginFilter};
use std::process::ExitCode;

/// Streams the change records of the pgdms output plugin from a PostgreSQL replication slot.
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
    /// Print a slot's change records as JSON lines on stdout, acknowledging what was printed.
    Dump(DumpArgs),
}

#[derive(Args)]
struct SourceArgs {
    /// The source database, as a libpq connection string or URI
    /// ("host=db user=migrator dbname=app" or "postgresql://migrator@db/app");
    /// PG* environment variables fill in what it leaves out.
    #[arg(long, env = "PGDMS_SOURCE", default_value = "")]
    source: String,
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
    /// Which changes to decode: any, or none for only those not made by a replication apply.
    #[arg(long, value_enum, default_value_t = Origin::Any)]
    origin: Origin,
    /// The wire-format version to ask the plugin for.
    #[arg(long, default_value_t = pgdms_proto::PROTO_VERSION)]
    proto_version: u32,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dump(args) => {
            let source = ConnInfo::parse(&args.source.source).context("invalid --source")?;
            let opts = DumpOptions {
                slot: args.slot,
                create_slot: args.create_slot,
                temporary_slot: args.temporary,
                start_lsn: args.start_lsn,
                endpos: args.endpos,
                plugin_options: Options {
                    proto_version: args.proto_version,
                    origin: match args.origin {
                        Origin::Any => OriginFilter::Any,
                        Origin::None => OriginFilter::None,
                    },
                },
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
