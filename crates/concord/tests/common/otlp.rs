//! An OTLP/HTTP trace receiver for the end-to-end tests: members started with
//! `--otlp-endpoint http://127.0.0.1:<port>` export their spans to it.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One exported span: the member that recorded it, its trace, its name, its parent.
#[derive(Debug, Clone)]
pub struct Span {
    pub member: String,
    pub trace: Vec<u8>,
    pub id: Vec<u8>,
    pub parent: Vec<u8>,
    pub name: String,
    /// Start and end, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// An OTLP/HTTP receiver: every request body, and the spans decoded from them.
#[derive(Default)]
pub struct Received {
    pub bodies: Vec<Vec<u8>>,
    pub spans: Vec<Span>,
}

async fn serve_connection(stream: tokio::net::TcpStream, received: Arc<Mutex<Received>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // The request line and headers.
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Ok(request) = ExportTraceServiceRequest::decode(&body[..]) {
            let mut r = received.lock().unwrap();
            for resource in &request.resource_spans {
                let member = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.instance.id")
                    .and_then(|a| a.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for scope in &resource.scope_spans {
                    for s in &scope.spans {
                        r.spans.push(Span {
                            member: member.clone(),
                            trace: s.trace_id.clone(),
                            id: s.span_id.clone(),
                            parent: s.parent_span_id.clone(),
                            name: s.name.clone(),
                            start_ns: s.start_time_unix_nano,
                            end_ns: s.end_time_unix_nano,
                        });
                    }
                }
            }
            r.bodies.push(body);
        }
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if reader.get_mut().write_all(ok).await.is_err() {
            return;
        }
    }
}

/// Starts a receiver on a free loopback port: the port, and what it has received.
pub async fn receiver() -> (u16, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Received::default()));
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, r.clone()));
        }
    });
    (port, received)
}
