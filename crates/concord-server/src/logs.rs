//! Changing the log filter of a running member: the binary that installed the process's
//! logger registers a [`LogControl`] here (logging is process-wide, so this is too), and
//! `GET`/`PUT /v1/log-level` on the client URL read and replace the filter. A process that
//! registered none (an embedding) answers 501.

use std::sync::{Arc, OnceLock};

/// Reads and replaces the process's log filter.
pub trait LogControl: Send + Sync {
    /// The filter in force (`info`, `warn,concord_server=debug`, ...).
    fn filter(&self) -> String;
    /// Replaces it with `spec` (a level or `tracing` filter directives), or says why not.
    fn set_filter(&self, spec: &str) -> Result<(), String>;
}

static CONTROL: OnceLock<Arc<dyn LogControl>> = OnceLock::new();

/// Registers the process's log control (the first registration stays).
pub fn register(control: Arc<dyn LogControl>) {
    let _ = CONTROL.set(control);
}

/// The registered control, if any.
pub fn control() -> Option<&'static Arc<dyn LogControl>> {
    CONTROL.get()
}
