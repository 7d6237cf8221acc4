//! The `pgdms-apply` binary: the command line lives in the library (`pgdms_apply::cli`).

fn main() -> std::process::ExitCode {
    pgdms_apply::cli::main()
}
