//! The Redis connections of this process, for `CLIENT LIST` and `CLIENT INFO`: each
//! connection publishes what those show of it when it changes (a connection or server
//! command ran), never per data command, and leaves when it closes.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

/// What `CLIENT LIST` shows of one connection.
#[derive(Debug, Clone)]
pub struct Row {
    /// The client's address.
    pub addr: String,
    /// This end's address.
    pub laddr: String,
    /// When the connection was accepted.
    pub created: Instant,
    /// `CLIENT SETNAME`.
    pub name: Vec<u8>,
    /// The selected database (bucket).
    pub db: u8,
    /// 2 or 3.
    pub resp: u8,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Vec<u8>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Vec<u8>,
}

impl Row {
    /// The connection's line, in Redis 7's field order (fields Concord has no notion of
    /// carry Redis's idle values).
    pub fn line(&self, id: u64) -> String {
        format!(
            "id={id} addr={} laddr={} fd=-1 name={} age={} idle=0 flags=N db={} sub=0 psub=0 \
             ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 \
             obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 \
             resp={} lib-name={} lib-ver={}\n",
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&self.name),
            self.created.elapsed().as_secs(),
            self.db,
            self.resp,
            String::from_utf8_lossy(&self.lib_name),
            String::from_utf8_lossy(&self.lib_ver),
        )
    }
}

static CLIENTS: LazyLock<Mutex<BTreeMap<u64, Row>>> = LazyLock::new(Default::default);

fn clients() -> std::sync::MutexGuard<'static, BTreeMap<u64, Row>> {
    // Plain rows, consistent at any panic point.
    CLIENTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes connection `id`'s row.
pub fn publish(id: u64, row: &Row) {
    clients().insert(id, row.clone());
}

/// Every connection's line, in id order; only those in `ids` when it is given.
pub fn list(ids: Option<&[u64]>) -> String {
    clients()
        .iter()
        .filter(|(id, _)| ids.is_none_or(|ids| ids.contains(id)))
        .map(|(id, row)| row.line(*id))
        .collect()
}

/// Removes connection `id` when dropped (the connection's task ends, however it ends).
#[derive(Debug)]
pub struct Registered(pub u64);

impl Drop for Registered {
    fn drop(&mut self) {
        clients().remove(&self.0);
    }
}
