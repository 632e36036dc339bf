//! A configuration rebuilt from its files when they change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::{TlsError, RELOAD_CHECK};

/// What identifies one version of a file: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A value built from `files`, rebuilt by [`Reloading::current`] when their stamps
/// change (checked at most every [`RELOAD_CHECK`]). A rebuild that fails is logged and
/// the previous value stays; it is tried again at the next change.
pub(crate) struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    checked: Instant,
    stamps: Vec<Stamp>,
    current: Arc<T>,
}

impl<T> Reloading<T> {
    /// Builds now; fails if the files do not build.
    pub(crate) fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = stamps(&files);
        let current = Arc::new(build()?);
        Ok(Reloading {
            files,
            build: Box::new(build),
            state: Mutex::new(State {
                checked: Instant::now(),
                stamps,
                current,
            }),
        })
    }

    /// The value for the files as they are now (at most [`RELOAD_CHECK`] stale).
    pub(crate) fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                state.stamps = now;
                match (self.build)() {
                    Ok(value) => {
                        state.current = Arc::new(value);
                        tracing::info!(files = ?self.files, "TLS certificates reloaded");
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS files changed but do not load; the previous certificates stay in use"
                    ),
                }
            }
        }
        state.current.clone()
    }
}
