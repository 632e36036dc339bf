//! A minimal Redis (RESP2) client for the AP workloads: one command, one reply.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...`.
    Simple(String),
    /// `-...`.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n`, or `$-1` (`None`).
    Bulk(Option<Vec<u8>>),
    /// `*n`.
    Array(Vec<Reply>),
}

/// One connection.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

/// Why a command got no reply: `sent` tells whether it may have reached the server.
#[derive(Debug)]
pub struct ConnError {
    /// The command was written (it may have run).
    pub sent: bool,
    /// What happened.
    pub msg: String,
}

impl Conn {
    /// Connects to `addr` (`host:port`) within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Conn, String> {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(Conn {
                    stream: BufReader::new(s),
                })
            }
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("connect {addr}: timed out")),
        }
    }

    /// Sends `args` as one command and reads its reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, ConnError> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        if let Err(e) = self.stream.get_mut().write_all(&out).await {
            // Part of it may have left.
            return Err(ConnError {
                sent: true,
                msg: e.to_string(),
            });
        }
        Box::pin(self.reply())
            .await
            .map_err(|msg| ConnError { sent: true, msg })
    }

    async fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stream.read_line(&mut line).await {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(line.trim_end_matches("\r\n").to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        let line = self.line().await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| format!("bad reply line {line:?}"))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(int(rest)?),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut buf = vec![0; n as usize + 2];
                self.stream
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
            "*" => {
                let n = int(rest)?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(Box::pin(self.reply()).await?);
                }
                Reply::Array(items)
            }
            _ => return Err(format!("bad reply line {line:?}")),
        })
    }
}
