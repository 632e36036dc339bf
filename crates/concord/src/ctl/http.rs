//! Plain HTTP/1.1 requests to a member's JSON endpoints (those gRPC does not carry, such
//! as `/v1/members` and `/v1/buckets`), on the same client URL as gRPC; `concord dev`
//! polls `/ready` with the same request.

use std::time::Duration;

use std::sync::OnceLock;

use concord_client::Dialer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CtlError, CtlResult};

/// How this process dials `https://` endpoints: set once, from the global TLS flags
/// (`--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`) or by `concord dev --tls`;
/// without it, the system's trusted CAs.
static TLS: OnceLock<Dialer> = OnceLock::new();

/// Sets the TLS of this process's HTTP requests (the first call wins).
pub fn set_tls(dialer: Dialer) {
    let _ = TLS.set(dialer);
}

/// A connection, plain or TLS.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Largest answer read.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// `host:port` of an endpoint given as `host:port` or `http[s]://host:port[/...]`.
pub fn authority(endpoint: &str) -> CtlResult<String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() {
        return Err(CtlError::new(format!(
            "{endpoint}: no host in the endpoint"
        )));
    }
    Ok(
        if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host_port.to_string()
        } else {
            format!("{host_port}:2379")
        },
    )
}

/// Connects to `endpoint` and sends `GET path` (HTTP/1.1, `Connection: close`); the answer
/// is the caller's to read.
pub async fn send_get(endpoint: &str, path: &str) -> std::io::Result<Box<dyn Conn>> {
    send(endpoint, "GET", path, &[], None).await
}

/// A connection to `endpoint`: TLS for `https://` (with the process's settings).
async fn connect(endpoint: &str) -> std::io::Result<Box<dyn Conn>> {
    let authority = authority(endpoint).map_err(std::io::Error::other)?;
    if !endpoint.starts_with("https://") {
        return Ok(Box::new(TcpStream::connect(&authority).await?));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| std::io::Error::other(format!("{endpoint}: no port")))?;
    let dialer = TLS.get().cloned().unwrap_or_default();
    Ok(Box::new(
        dialer.tls_stream(host, port, &[b"http/1.1"]).await?,
    ))
}

/// Connects to `endpoint` and sends `method path` with `headers` and `body` as JSON
/// (HTTP/1.1, `Connection: close`); the answer is the caller's to read.
async fn send(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> std::io::Result<Box<dyn Conn>> {
    let authority = authority(endpoint).map_err(std::io::Error::other)?;
    let mut stream = connect(endpoint).await?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    if let Some(body) = body {
        stream.write_all(body).await?;
    }
    Ok(stream)
}

/// The status code of an HTTP/1.x answer starting with `head`.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// GETs `path` from `endpoint` and parses the body as JSON; an answer other than 200 is an
/// error carrying the body.
pub async fn get_json(
    endpoint: &str,
    path: &str,
    timeout: Duration,
) -> CtlResult<serde_json::Value> {
    request_json(endpoint, "GET", path, None, timeout).await
}

/// Sends `method path` (with `body`, JSON) to `endpoint` and parses the answer as JSON; an
/// answer other than 200 is an error carrying the body.
pub async fn request_json(
    endpoint: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> CtlResult<serde_json::Value> {
    let answer = request(endpoint, method, path, &[], body, timeout).await?;
    if answer.status != 200 {
        return Err(answer.error(endpoint));
    }
    Ok(answer.body)
}

/// An HTTP answer whose body is JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: serde_json::Value,
}

impl Answer {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The answer as an error: the status and the body's `error` text (or the body).
    pub fn error(&self, endpoint: &str) -> CtlError {
        let text = match self.body["error"].as_str() {
            Some(e) => e.to_string(),
            None => self.body.to_string(),
        };
        CtlError::new(format!("{endpoint}: HTTP {}: {text}", self.status))
    }
}

/// Sends `method path` with `headers` (and `body`, JSON) to `endpoint`: the answer, whatever
/// its status, with its body parsed as JSON (`null` when empty).
pub async fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> CtlResult<Answer> {
    authority(endpoint)?;
    let body = body.map(|b| b.to_string().into_bytes());
    let attempt = async {
        let stream = send(endpoint, method, path, headers, body.as_deref()).await?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| CtlError::new(format!("{endpoint}: no answer within {timeout:?}")))?
        .map_err(|e| CtlError::new(format!("{endpoint}: {e}")))?;
    parse_response(endpoint, &response)
}

fn parse_response(endpoint: &str, response: &[u8]) -> CtlResult<Answer> {
    let bad = || CtlError::new(format!("{endpoint}: not an HTTP response"));
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| bad())?;
    let body = &response[split + 4..];
    let status = parse_status_line(head.as_bytes()).ok_or_else(bad)?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Err(CtlError::new(format!(
            "{endpoint}: chunked answers are not supported"
        )));
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            // A refusal in plain text still says why.
            Err(_) if status != 200 => {
                serde_json::json!({ "error": String::from_utf8_lossy(body).trim() })
            }
            Err(e) => {
                return Err(CtlError::new(format!(
                    "{endpoint}: the answer is not JSON: {e}"
                )))
            }
        }
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn authorities() {
        assert_eq!(authority("127.0.0.1:1").unwrap(), "127.0.0.1:1");
        assert_eq!(authority("http://h:22/x").unwrap(), "h:22");
        assert_eq!(authority("http://h").unwrap(), "h:2379");
        assert_eq!(authority("https://h:1").unwrap(), "h:1");
        assert!(authority("http://").is_err());
    }

    #[test]
    fn responses() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"x\"\r\n\r\n{\"a\":1}";
        let answer = parse_response("e", ok).unwrap();
        assert_eq!(
            (answer.status, &answer.body["a"]),
            (200, &serde_json::json!(1))
        );
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("etag"), Some("\"x\""));
        let err = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"x\"}";
        let answer = parse_response("e", err).unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.error("e").to_string(), "e: HTTP 503: x");
        let text = b"HTTP/1.1 400 Bad Request\r\n\r\nexpected ?ms=N\n";
        let answer = parse_response("e", text).unwrap();
        assert_eq!(answer.error("e").to_string(), "e: HTTP 400: expected ?ms=N");
        let not_json = b"HTTP/1.1 200 OK\r\n\r\nnope";
        assert!(parse_response("e", not_json).is_err());
        assert!(parse_response("e", b"garbage").is_err());
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n";
        assert!(parse_response("e", chunked).is_err());
    }
}
