//! `concord`: the one binary of Concord.
//!
//! * `concord server [FLAGS]`: one member, with etcd's flag names (see
//!   `docs/operations.md`). No flags: a one-node cluster on 127.0.0.1:2379 with its data in
//!   `./default.concord`.
//! * `concord dev [--nodes N] [--data-dir D] [--base-port P]`: a local cluster of
//!   `concord server` processes, stopped cleanly on Ctrl-C.
//!
//! # Layout
//!
//! * [`cli`]: clap definitions, etcd's flag spellings, the accepted-but-ignored etcd flags.
//! * [`config`]: command line over `CONCORD_*` over the TOML file over the defaults.
//! * [`logging`]: `tracing-subscriber`, text or JSON, `RUST_LOG`.
//! * [`serve`]: runs a member until a signal or a fatal error.
//! * [`dev`]: the local cluster.
//!
//! * `concord bench [OPTIONS]`: a load generator for any etcd v3 endpoints.
//! * `concord get|put|del|txn|watch|compaction|lease|elect|lock|member|endpoint|snapshot|completion`:
//!   etcdctl-style client commands ([`ctl`]); errors print `Error: ...` and exit with 1.
//!
//! Exit codes: 0 after a clean stop (or `--help`), 1 when the server or the cluster
//! fails, 2 for a usage or configuration error.

/// mimalloc rather than glibc's malloc: the request paths allocate many small, short-lived
/// buffers across threads (see docs/benchmarks.md for the measured difference). Built
/// without its transparent-huge-page advice (`no_thp`): with it, every 2 MiB region that
/// mimalloc purged and used again was faulted in and zeroed whole, 3–4% of the machine
/// under put ×256 and ~7% more CPU per put.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod cli;
mod config;
mod ctl;
mod dev;
mod logging;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        cli::Command::Server(args) => match config::resolve(*args, &config::process_env()) {
            Ok(settings) => serve::run(settings),
            Err(e) => {
                eprintln!("concord server: {e}");
                ExitCode::from(2)
            }
        },
        cli::Command::Dev(args) => dev::run(args),
        cli::Command::Bench(args) => run_bench(args),
        cli::Command::Ctl(cmd) => ctl::run(cmd),
    }
}

fn run_bench(args: bench::BenchArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("concord bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(bench::run(args)) {
        Ok(summary) => {
            bench::print(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("concord bench: {e}");
            ExitCode::from(1)
        }
    }
}
