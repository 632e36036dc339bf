//! The Redis front door: `--listen-redis-urls`, RESP2 and RESP3, pipelining; every member
//! coordinates any key of the AP buckets ([`crate::ap`]) and looks to a client like one
//! plain Redis server (`cluster_enabled:0`). `docs/ap.md` lists the commands and what
//! differs from Redis.
//!
//! One task per connection reads what has arrived, answers every complete request in
//! order (pipelining), and writes the answers together. A protocol error is answered and
//! the connection closed, as Redis does; a command error leaves it open.

mod admin;
mod clients;
pub mod commands;
mod hashes;
mod keyspace;
mod multi;
mod sets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::ap::{Access, ApNode, SessionGuard};
use crate::resp::{encode, parse_request, Limits, Protocol};

/// Most simultaneous Redis connections per listener (Redis's `maxclients` default).
pub const MAX_CLIENTS: usize = 10_000;

/// A connection's state.
#[derive(Debug)]
pub struct Session {
    /// Client id (`CLIENT ID`), unique in this process.
    pub id: u64,
    /// The protocol in use: RESP2, or RESP3 after `HELLO 3`.
    pub resp: Protocol,
    /// The selected bucket (`SELECT`), the connection's quorums (`CONCORD.QUORUM`) and
    /// session.
    pub access: Access,
    /// The connection's session (`CONCORD.SESSION`), which `access` names.
    pub session: Option<SessionGuard>,
    /// The transaction being queued (`MULTI`).
    pub multi: Option<multi::Transaction>,
    /// The watched key (`WATCH`).
    pub watch: Option<multi::Watch>,
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// What `CLIENT INFO` and `CLIENT LIST` show of it besides the above.
    pub client: clients::Row,
    /// Set by `QUIT`: close after answering.
    pub closing: bool,
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// The state of one command run outside a connection (the HTTP command endpoint):
    /// RESP3 replies, `access`'s bucket, quorums and session; not in `CLIENT LIST`.
    pub fn detached(access: Access) -> Session {
        Session {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            resp: Protocol::Resp3,
            access,
            session: None,
            multi: None,
            watch: None,
            name: None,
            client: clients::Row {
                addr: "http".into(),
                laddr: "http".into(),
                created: std::time::Instant::now(),
                name: Vec::new(),
                db: access.bucket,
                resp: 3,
                lib_name: Vec::new(),
                lib_ver: Vec::new(),
            },
            closing: false,
        }
    }

    /// Brings this connection's `CLIENT LIST` row up to date.
    pub fn publish(&mut self) {
        self.client.name = self.name.clone().unwrap_or_default();
        self.client.db = self.access.bucket;
        self.client.resp = match self.resp {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        clients::publish(self.id, &self.client);
    }
}

/// Serves Redis clients on `listener` until the returned future is dropped; with `tls`,
/// each connection is a TLS handshake first (`rediss://`).
pub async fn serve(listener: TcpListener, ap: ApNode, tls: Option<concord_tls::Acceptor>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "redis accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut stream = stream;
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
            continue;
        };
        let (ap, tls) = (ap.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let ends = |a: std::io::Result<std::net::SocketAddr>| {
                a.map_or_else(|_| "?".into(), |a| a.to_string())
            };
            let (peer, local) = (ends(stream.peer_addr()), ends(stream.local_addr()));
            let served = match tls {
                None => connection(stream, peer, local, ap).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => connection(tls, peer, local, ap).await,
                    Err(e) => {
                        tracing::info!(client = %peer, error = %e, "TLS handshake refused");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "redis connection ended");
            }
            drop(permit);
        });
    }
}

/// The code of an error reply (its first word: `ERR`, `WRONGTYPE`, ...), for the metrics:
/// only a word of capitals is taken as a code, anything else counts as `ERR`.
fn error_code(reply: &crate::resp::Frame) -> Option<&str> {
    let crate::resp::Frame::Error(text) = reply else {
        return None;
    };
    let word = text.split(|b| *b == b' ').next().unwrap_or_default();
    let code = (!word.is_empty() && word.len() <= 20 && word.iter().all(u8::is_ascii_uppercase))
        .then(|| std::str::from_utf8(word).ok())
        .flatten();
    Some(code.unwrap_or("ERR"))
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: String,
    local: String,
    ap: ApNode,
) -> std::io::Result<()> {
    let mut session = Session {
        id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        resp: Protocol::Resp2,
        access: Access::default(),
        session: None,
        multi: None,
        watch: None,
        name: None,
        client: clients::Row {
            addr: peer,
            laddr: local,
            created: std::time::Instant::now(),
            name: Vec::new(),
            db: 0,
            resp: 2,
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
        },
        closing: false,
    };
    let _registered = clients::Registered(session.id);
    session.publish();
    let limits = Limits::default();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut out = BytesMut::with_capacity(16 << 10);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        loop {
            match parse_request(&mut buf, &limits) {
                Ok(Some(args)) => {
                    use tracing::Instrument as _;
                    let span = crate::telemetry::command_span(args.first().map_or(&[][..], |a| a));
                    let started = std::time::Instant::now();
                    let name = commands::metric_name(args.first());
                    let reply = commands::run(&ap, &mut session, args)
                        .instrument(span)
                        .await;
                    if let Some(m) = ap.telemetry() {
                        m.command(name.as_ref(), started.elapsed(), error_code(&reply));
                    }
                    encode(&reply, session.resp, &mut out);
                    if session.closing {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    encode(&e.reply(), session.resp, &mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}
