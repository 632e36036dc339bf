//! The client listener's accept loop: gRPC (h2c) and HTTP/1.1 on one port, with a bound on
//! open connections and on concurrent HTTP/2 streams per connection.
//!
//! # Guarantees
//!
//! 1. At most `max_connections` connections are served at once; the next one is accepted
//!    only when one closes (it waits in the kernel's accept queue meanwhile), so a flood
//!    of connections costs a bounded number of file descriptors and tasks.
//! 2. Each HTTP/2 connection advertises `max_concurrent_streams` (etcd's
//!    `--max-concurrent-streams`); a client that opens more is refused by HTTP/2 itself.
//! 3. A failed `accept` (out of file descriptors, say) is logged and retried after a
//!    pause that doubles up to one second, never a busy loop and never a crash.
//! 4. Connections are [`Gathered`]: HTTP/2 frames under 1 KiB (a range answer with a
//!    256-byte value, say) leave in shared writes, not one `writev` each.
//! 5. On shutdown no new connection is accepted, open ones are told to finish (HTTP/2
//!    GOAWAY) and are given [`DRAIN`] before the loop returns.

use std::sync::Arc;
use std::time::Duration;

use concord_tls::Gathered;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The common name of the client certificate a TLS connection presented (verified by the
/// handshake, with `--client-cert-auth`), in the extensions of each of its requests.
#[derive(Clone, Debug)]
pub struct CertName(pub Option<String>);

/// How long open connections get to finish after shutdown starts.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Bounds on one client listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// Serves `router` on `listener` within `limits` until `stop` completes; with `tls`, each
/// connection is a TLS handshake first (HTTP/2 or HTTP/1.1 chosen by ALPN or preface).
pub async fn serve<S>(
    listener: TcpListener,
    router: S,
    limits: Limits,
    tls: Option<concord_tls::Acceptor>,
    stop: impl std::future::Future<Output = ()>,
) where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .enable_connect_protocol();
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (tcp, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        backoff = Duration::from_millis(5);
        // Responses must not wait for Nagle's algorithm (40 ms with delayed ACKs).
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            // The handshake runs in the connection's task: a slow one delays no other.
            let served = match tls {
                None => {
                    let service = TowerToHyperService::new(router);
                    let conn = builder
                        .serve_connection_with_upgrades(Gathered::new(TokioIo::new(tcp)), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        // Every request of the connection knows the verified client
                        // certificate's name (the user, when auth is on and no token).
                        let name = CertName(concord_tls::client_common_name(&stream));
                        let service = TowerToHyperService::new(tower::Layer::layer(
                            &axum::Extension(name),
                            router,
                        ));
                        let conn = builder.serve_connection_with_upgrades(
                            Gathered::new(TokioIo::new(stream)),
                            service,
                        );
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(e) => {
                        tracing::info!(client = %from, error = %e, "TLS handshake refused");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("client connections still open after the drain period");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(port: u16) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_cap_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = axum::Router::new().route("/x", axum::routing::get(|| async { "hi" }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router,
            Limits {
                max_connections: 1,
                max_concurrent_streams: 8,
            },
            None,
            async move {
                let _ = stop_rx.await;
            },
        ));
        // One idle connection holds the only permit.
        let idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(get(port));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a second connection was served");
        drop(idle);
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("served once the first closed")
            .unwrap()
            .unwrap();
        assert!(answer.contains("hi"), "{answer}");
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .unwrap();
    }
}
