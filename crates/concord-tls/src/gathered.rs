//! [`Gathered`]: a connection on which HTTP/2's small frames share their writes.
//!
//! h2 (under hyper and tonic) writes a DATA frame whose payload reaches a threshold
//! straight from the frame's own buffer, as the second part of a vectored write, and takes
//! no further frame until that one is out. On a socket that supports vectored writes the
//! threshold is 256 bytes, so a request or answer carrying a 256-byte value is a `writev`
//! of its own, however many are ready at once: `concord bench --op put` issued 1.1 of them
//! per put, a third of its CPU. On a connection that reports no vectored writes the
//! threshold is 1 KiB, and frames below it are copied into the connection's 16 KiB write
//! buffer and leave together. [`Gathered`] reports that, and nothing else changes: reads
//! and writes go to the inner connection as they are; a frame above 1 KiB costs two
//! writes instead of one (its head with its first KiB, then the rest).

use std::pin::Pin;
use std::task::{Context, Poll};

/// A connection that tells HTTP/2 it has no vectored writes (module docs).
#[derive(Debug)]
pub struct Gathered<T>(pub T);

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Gathered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Gathered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// Counts the writes that reach the socket.
    struct Counting<T>(T, Arc<AtomicUsize>);

    impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counting<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counting<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }

        fn is_write_vectored(&self) -> bool {
            self.0.is_write_vectored()
        }
    }

    /// Sends `n` requests with 300-byte bodies at once over one HTTP/2 connection whose
    /// writes are counted; returns the count.
    async fn writes_for(n: usize, gathered: bool) -> usize {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let io = Counting(TokioIo::new(tcp), count.clone());
        let mut send = if gathered {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), Gathered(io))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send
        } else {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send
        };
        send.ready().await.unwrap();
        let before = count.load(Ordering::Relaxed);
        let answers: Vec<_> = (0..n)
            .map(|_| {
                let req = hyper::Request::post("http://x/echo")
                    .body(Full::new(Bytes::from(vec![7u8; 300])))
                    .unwrap();
                send.send_request(req)
            })
            .collect();
        for a in answers {
            let body = a
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(body.len(), 300);
        }
        count.load(Ordering::Relaxed) - before
    }

    #[tokio::test]
    async fn small_data_frames_share_writes() {
        // The control: on a vectored socket each 300-byte DATA frame is a write of its own.
        let plain = writes_for(64, false).await;
        assert!(
            plain >= 64,
            "{plain} writes for 64 requests: h2 changed, see the module docs"
        );
        let gathered = writes_for(64, true).await;
        eprintln!("writes for 64 requests: {plain} plain, {gathered} gathered");
        assert!(gathered <= 16, "{gathered} writes for 64 requests");
    }
}
