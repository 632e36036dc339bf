//! [`Gathered`]: a connection on which HTTP/2's frames share their writes.
//!
//! h2 (under hyper and tonic) writes a DATA frame whose payload reaches a threshold
//! straight from the frame's own buffer, as the second part of a vectored write, and takes
//! no further frame until that one is out. On a socket that supports vectored writes the
//! threshold is 256 bytes, so a request or answer carrying a 256-byte value is a `writev`
//! of its own, however many are ready at once: `concord bench --op put` issued 1.1 of them
//! per put, a third of its CPU. On a connection that reports no vectored writes the
//! threshold is 1 KiB, and frames below it are copied into the connection's 16 KiB write
//! buffer and leave together.
//!
//! [`Gathered`] reports that. Without vectored writes h2 would write a larger frame in two
//! calls (its head with its first KiB from the buffer, then the rest), so `Gathered` holds
//! what it is given, up to [`HOLD`] bytes, until the next write that would overflow it (the
//! held bytes and that one leave in one vectored write) or until h2 flushes: every flush of
//! h2's is one system call, as before, and small frames share it.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// Bytes a [`Gathered`] connection holds before it writes: h2's write buffer and the KiB
/// of payload it copies after a frame's head.
pub const HOLD: usize = 17 * 1024;

/// A connection that tells HTTP/2 it has no vectored writes and gathers what it is given
/// until HTTP/2 flushes (module docs).
#[derive(Debug)]
pub struct Gathered<T> {
    inner: T,
    /// Accepted, not written yet; empty after every completed flush.
    held: Vec<u8>,
}

impl<T> Gathered<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Gathered<T> {
        Gathered {
            inner,
            held: Vec::new(),
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Gathered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

fn write_zero() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::WriteZero,
        "the connection took no bytes",
    )
}

impl<T: hyper::rt::Write + Unpin> Gathered<T> {
    /// Writes out what is held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(write_zero()));
            }
            self.held.drain(..n);
        }
        // A hold over 4 KiB is given back after each flush, so that connections that
        // go idle keep none (measured: no change in CPU per request under load).
        if self.held.capacity() > 4096 {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Gathered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.held.len() + buf.len() <= HOLD {
                this.held.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            if this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            // Too much to hold: what is held and as much of `buf` as the socket takes, in
            // one write.
            let both = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Err(write_zero()));
            }
            if n < this.held.len() {
                this.held.drain(..n);
                continue;
            }
            let taken = n - this.held.len();
            this.held.clear();
            if taken > 0 {
                return Poll::Ready(Ok(taken));
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

    /// Sends `n` requests with `size`-byte bodies at once over one HTTP/2 connection whose
    /// writes are counted; returns the count.
    async fn writes_for(n: usize, size: usize, gathered: bool) -> usize {
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
                hyper::client::conn::http2::handshake(TokioExecutor::new(), Gathered::new(io))
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
                    .body(Full::new(Bytes::from(vec![7u8; size])))
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
            assert_eq!(body.len(), size);
        }
        count.load(Ordering::Relaxed) - before
    }

    #[tokio::test]
    async fn small_data_frames_share_writes() {
        // The control: on a vectored socket each 300-byte DATA frame is a write of its own.
        let plain = writes_for(64, 300, false).await;
        assert!(
            plain >= 64,
            "{plain} writes for 64 requests: h2 changed, see the module docs"
        );
        let gathered = writes_for(64, 300, true).await;
        assert!(gathered <= 16, "{gathered} writes for 64 requests");
    }

    #[tokio::test]
    async fn large_data_frames_take_no_more_writes_than_on_a_vectored_socket() {
        // Written through, each frame over 1 KiB would be two writes (its head with a KiB
        // of payload, then the rest): twice the vectored socket's count. Held, one.
        for size in [1024, 4096, 40_000] {
            let plain = writes_for(16, size, false).await;
            let gathered = writes_for(16, size, true).await;
            eprintln!("{size} bytes: {gathered} writes gathered, {plain} plain");
            assert!(
                gathered <= plain + plain / 4 + 2,
                "{size} bytes: {gathered} writes gathered, {plain} plain"
            );
        }
    }

    /// A connection that takes at most a few bytes per write (sometimes none: it is not
    /// ready, and wakes the caller at once), as a busy socket does.
    struct Trickle {
        out: Vec<u8>,
        rng: u64,
    }

    impl Trickle {
        fn next(&mut self, bound: usize) -> usize {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % (bound as u64 + 1)) as usize
        }
    }

    impl hyper::rt::Write for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = self.next(buf.len().min(5000));
            if n == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn until_ready<R>(mut f: impl FnMut(&mut Context<'_>) -> Poll<R>) -> R {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(r) = f(&mut cx) {
                return r;
            }
        }
    }

    proptest::proptest! {
        /// Whatever the sizes of the writes and flushes and however little the socket takes
        /// at a time, the bytes arrive whole and in order once flushed, and a flush leaves
        /// nothing held.
        #[test]
        fn bytes_arrive_whole_and_in_order(
            ops in proptest::collection::vec((0usize..40_000, proptest::bool::ANY), 1..40),
            seed in 1u64..u64::MAX,
        ) {
            use hyper::rt::Write as _;
            let mut g = Gathered::new(Trickle { out: Vec::new(), rng: seed });
            let mut sent = Vec::new();
            for (i, (size, flush)) in ops.iter().enumerate() {
                let chunk: Vec<u8> = (0..*size).map(|j| (i * 31 + j) as u8).collect();
                let mut at = 0;
                while at < chunk.len() {
                    let n = until_ready(|cx| Pin::new(&mut g).poll_write(cx, &chunk[at..]))
                        .expect("written");
                    proptest::prop_assert!(n > 0 && n <= chunk.len() - at);
                    at += n;
                }
                sent.extend_from_slice(&chunk);
                if *flush {
                    until_ready(|cx| Pin::new(&mut g).poll_flush(cx)).expect("flushed");
                    proptest::prop_assert!(g.held.is_empty());
                    proptest::prop_assert_eq!(&g.inner.out, &sent);
                }
            }
            until_ready(|cx| Pin::new(&mut g).poll_shutdown(cx)).expect("shut down");
            proptest::prop_assert_eq!(&g.inner.out, &sent);
        }
    }
}
