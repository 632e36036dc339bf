//! A minimal Redis client for tests: one command per connection round trip, the reply
//! parsed into [`RedisReply`] (RESP2 types; RESP3 maps and nulls too).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisReply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or `_`.
    Null,
    /// `*n` (and RESP3's `%n` as a flat list of keys and values).
    Array(Vec<RedisReply>),
}

impl RedisReply {
    /// A bulk reply holding `s`.
    pub fn bulk(s: &str) -> RedisReply {
        RedisReply::Bulk(s.as_bytes().to_vec())
    }
}

/// A connection to one Redis port.
pub struct RedisConn {
    stream: BufReader<TcpStream>,
}

impl RedisConn {
    /// Connects to 127.0.0.1:`port` (2 s at most).
    pub async fn connect(port: u16) -> Result<RedisConn, String> {
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| format!("connect to {port} timed out"))?
        .map_err(|e| format!("connect to {port}: {e}"))?;
        Ok(RedisConn {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply (10 s at most).
    pub async fn cmd(&mut self, args: &[&str]) -> Result<RedisReply, String> {
        let mut wire = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            wire.extend(format!("${}\r\n", a.len()).bytes());
            wire.extend(a.bytes());
            wire.extend(b"\r\n");
        }
        self.raw(&wire).await
    }

    /// Sends `bytes` as they are and reads one reply.
    pub async fn raw(&mut self, bytes: &[u8]) -> Result<RedisReply, String> {
        let io = |e: std::io::Error| e.to_string();
        self.stream.get_mut().write_all(bytes).await.map_err(io)?;
        tokio::time::timeout(Duration::from_secs(10), self.reply())
            .await
            .map_err(|_| "no reply within 10 s".to_string())?
    }

    fn reply(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<RedisReply, String>> + Send + '_>>
    {
        Box::pin(async move {
            let mut line = String::new();
            if self
                .stream
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".into());
            }
            let line = line.trim_end_matches("\r\n");
            let (kind, rest) = line.split_at(line.len().min(1));
            let num = || {
                rest.parse::<i64>()
                    .map_err(|_| format!("bad reply line {line:?}"))
            };
            Ok(match kind {
                "+" => RedisReply::Simple(rest.into()),
                "-" => RedisReply::Error(rest.into()),
                ":" => RedisReply::Integer(num()?),
                "_" => RedisReply::Null,
                "$" if num()? < 0 => RedisReply::Null,
                "$" => {
                    let mut body = vec![0; num()? as usize + 2];
                    self.stream
                        .read_exact(&mut body)
                        .await
                        .map_err(|e| e.to_string())?;
                    body.truncate(body.len() - 2);
                    RedisReply::Bulk(body)
                }
                "*" | "%" if num()? < 0 => RedisReply::Null,
                "*" | "%" => {
                    let n = num()? as usize * if kind == "%" { 2 } else { 1 };
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.reply().await?);
                    }
                    RedisReply::Array(items)
                }
                _ => return Err(format!("unknown reply {line:?}")),
            })
        })
    }
}
