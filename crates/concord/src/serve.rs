//! `concord server`: start one member, log where it listens, and run until a signal or a
//! fatal error.
//!
//! ```text
//!   start ──error──> log it, exit 1
//!     │
//!     ├─ SIGTERM / SIGINT ──> shutdown() ──ok──> exit 0
//!     │                           └─ error, or a second signal ──> exit 1
//!     └─ stopped() (fatal) ──> log it, exit 1
//! ```

use std::process::ExitCode;

use concord_server::server::{Server, ServerConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::logging;

/// Runs `concord server` with resolved settings; returns the process exit code.
pub fn run(settings: Settings) -> ExitCode {
    let tracing = match logging::init(&settings.log, &settings.server.name) {
        Ok((tracing, warning)) => {
            if let Some(w) = warning {
                warn!("{w}");
            }
            tracing
        }
        Err(e) => {
            eprintln!("concord server: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &settings.warnings {
        warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(settings.server));
    // Do not wait for tasks that ignore shutdown; the store is already durable.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing.shutdown();
    code
}

/// The signals that stop the server.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT; returns its name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn serve(config: ServerConfig) -> ExitCode {
    // Installed before starting, so a signal during start-up is seen (and acted on) once
    // the member is up, instead of killing it halfway through bootstrapping.
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = config.name.clone();
    let data_dir = config.data_dir.clone();
    info!(
        name = %name,
        data_dir = %data_dir.display(),
        "starting concord {}",
        env!("CARGO_PKG_VERSION")
    );
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        member_id = %format!("{:x}", server.member_id()),
        name = %name,
        client_urls = %server.client_urls().join(","),
        peer_urls = %server.peer_urls().join(","),
        data_dir = %data_dir.display(),
        "concord server is serving"
    );

    enum Outcome {
        Signal(&'static str),
        Stopped(String),
    }
    let outcome = tokio::select! {
        sig = signals.next() => Outcome::Signal(sig),
        err = server.stopped() => Outcome::Stopped(err.to_string()),
    };
    match outcome {
        Outcome::Stopped(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
        Outcome::Signal(sig) => {
            info!("received {sig}, shutting down");
            tokio::select! {
                result = server.shutdown() => match result {
                    Ok(()) => {
                        info!("concord server stopped");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        error!("shutdown failed: {e}");
                        ExitCode::FAILURE
                    }
                },
                sig = signals.next() => {
                    warn!("received {sig} again, exiting without finishing the shutdown");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
