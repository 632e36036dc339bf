//! TLS for Concord's listeners and connections, configured by etcd's flags.
//!
//! Everything TLS in Concord goes through this crate, so that the client listener (gRPC
//! and HTTP), the peer listener (Raft, gossip, replicas) and every outgoing connection
//! (peers, the CLI, the client crate, the dashboard) behave the same:
//!
//! - [`ServerSettings`] / [`ClientSettings`]: what etcd's flags say (`--cert-file`,
//!   `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--tls-min-version`,
//!   `--tls-max-version`, `--cipher-suites`, and the `--peer-*` twins; etcdctl's
//!   `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`).
//! - [`Acceptor`]: the server side. Its rustls configuration is rebuilt when one of its
//!   files changes (checked at most every [`RELOAD_CHECK`], on the next handshake), so
//!   certificates rotate without a restart; a change that does not load is logged and the
//!   previous configuration stays in force.
//! - [`Dialer`]: the client side for tonic channels. `http://` URLs are dialled in plain
//!   text, `https://` URLs through rustls with the dialer's settings (or, without
//!   settings, the system's trusted roots). Both kinds are [`Gathered`], as the client
//!   listener's connections are, so that HTTP/2's small frames share their writes.
//! - [`pki`]: certificates made on the spot with rcgen: a self-signed one for
//!   `--auto-tls`/`--peer-auto-tls`, and a throw-away CA with member and client
//!   certificates for `concord dev --tls` and tests.
//!
//! # Guarantees
//!
//! 1. With `client_cert_auth`, a handshake without a certificate chaining to the trusted
//!    CA fails: no request of such a connection reaches a service.
//! 2. Only TLS 1.2 and 1.3 exist (rustls implements nothing older); `--tls-min-version
//!    TLS1.0|TLS1.1` is refused at start rather than silently raised.
//! 3. A failed or slow handshake (bounded by [`HANDSHAKE_TIMEOUT`]) costs one task and
//!    never stops the accept loop.

mod gathered;
pub mod pki;
mod reload;

pub use gathered::Gathered;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::reload::Reloading;

/// How often, at most, the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file held no usable PEM of the kind expected.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A flag's value is not one this build accepts.
    #[error("{0}")]
    Setting(String),
    /// rustls refused the configuration (key does not match the certificate, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificates could not be generated.
    #[error("generating certificates: {0}")]
    Generate(String),
}

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The certificate (chain), leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The protocol versions and TLS 1.2 cipher suites allowed (etcd's `--tls-min-version`,
/// `--tls-max-version`, `--cipher-suites`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `TLS1.2` or `TLS1.3` (default: TLS1.2).
    pub min_version: Option<String>,
    /// `TLS1.2` or `TLS1.3` (default: TLS1.3).
    pub max_version: Option<String>,
    /// IANA (and Go) names of the TLS 1.2 suites allowed, e.g.
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`; empty: all of rustls's. As in Go, the
    /// TLS 1.3 suites are not configurable.
    pub cipher_suites: Vec<String>,
}

/// A server's TLS: its identity and how it treats clients' certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// The certificate and key presented.
    pub identity: Identity,
    /// The CA that clients' certificates must chain to (`--trusted-ca-file`).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file` (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// Versions and suites.
    pub policy: Policy,
}

/// A client's TLS (etcdctl's `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSettings {
    /// The CA that servers' certificates must chain to; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The certificate presented when the server asks for one.
    pub identity: Option<Identity>,
    /// Accept any server certificate (no authentication of the server).
    pub insecure_skip_verify: bool,
    /// Versions and suites.
    pub policy: Policy,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            detail: "no CERTIFICATE block in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        detail: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be loaded");
    }
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    store
}

fn version(name: &str) -> Result<&'static SupportedProtocolVersion, TlsError> {
    match name
        .trim()
        .to_ascii_uppercase()
        .replace([' ', '_', 'V'], "")
        .as_str()
    {
        "TLS1.2" => Ok(&rustls::version::TLS12),
        "TLS1.3" => Ok(&rustls::version::TLS13),
        "TLS1.0" | "TLS1.1" => Err(TlsError::Setting(format!(
            "TLS version {name:?} is not supported: only TLS1.2 and TLS1.3 exist in this build"
        ))),
        _ => Err(TlsError::Setting(format!(
            "unknown TLS version {name:?} (expected TLS1.2 or TLS1.3)"
        ))),
    }
}

impl Policy {
    /// The crypto provider and the protocol versions this policy allows.
    fn resolve(
        &self,
    ) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), TlsError> {
        let all = [&rustls::version::TLS12, &rustls::version::TLS13];
        let rank = |v: &SupportedProtocolVersion| all.iter().position(|a| a.version == v.version);
        let lo = self
            .min_version
            .as_deref()
            .map(version)
            .transpose()?
            .map_or(Some(0), rank);
        let hi = self
            .max_version
            .as_deref()
            .map(version)
            .transpose()?
            .map_or(Some(1), rank);
        let (lo, hi) = (lo.unwrap_or(0), hi.unwrap_or(1));
        if lo > hi {
            return Err(TlsError::Setting(format!(
                "--tls-min-version {:?} is above --tls-max-version {:?}",
                self.min_version.as_deref().unwrap_or_default(),
                self.max_version.as_deref().unwrap_or_default()
            )));
        }
        let versions = all[lo..=hi].to_vec();
        // ring, not aws-lc-rs: it builds with cargo and a C compiler alone. Its cost is no
        // post-quantum key exchange (hence rustls's deprecation note).
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let known: Vec<String> = provider
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect();
            for name in &self.cipher_suites {
                if !known.iter().any(|k| k == name.trim()) {
                    return Err(TlsError::Setting(format!(
                        "unknown or unsupported cipher suite {name:?}; supported: {}",
                        known.join(", ")
                    )));
                }
            }
            provider.cipher_suites.retain(|s| {
                s.version() == &rustls::version::TLS13
                    || self
                        .cipher_suites
                        .iter()
                        .any(|n| n.trim() == format!("{:?}", s.suite()))
            });
        }
        Ok((Arc::new(provider), versions))
    }
}

impl ServerSettings {
    /// The files whose change reloads the configuration.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.identity.cert_file.clone(),
            self.identity.key_file.clone(),
        ];
        files.extend(self.trusted_ca_file.clone());
        files
    }

    /// The rustls configuration, offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn build(&self) -> Result<ServerConfig, TlsError> {
        let (provider, versions) = self.policy.resolve()?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let builder = if self.client_cert_auth {
            let ca = self.trusted_ca_file.as_deref().ok_or_else(|| {
                TlsError::Setting(
                    "client certificate authentication needs a trusted CA file (--trusted-ca-file)"
                        .into(),
                )
            })?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Setting(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(
            load_certs(&self.identity.cert_file)?,
            load_key(&self.identity.key_file)?,
        )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ClientSettings {
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.ca_file.iter().cloned().collect();
        if let Some(id) = &self.identity {
            files.push(id.cert_file.clone());
            files.push(id.key_file.clone());
        }
        files
    }

    /// The rustls configuration, asking for HTTP/2 by ALPN (gRPC).
    pub fn build(&self) -> Result<ClientConfig, TlsError> {
        let (provider, versions) = self.policy.resolve()?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        } else {
            let roots = match &self.ca_file {
                Some(ca) => roots(ca)?,
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(load_certs(&id.cert_file)?, load_key(&id.key_file)?)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// `--insecure-skip-tls-verify`: any server certificate is accepted (signatures over the
/// handshake are still checked, so the session key is the one the certificate's holder
/// proved; who that holder is, is not).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server side of TLS: handshakes with the current (reloaded) configuration.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<Reloading<ServerConfig>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

/// A server-side TLS connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

impl Acceptor {
    /// An acceptor for `settings`; fails now if the files do not load.
    pub fn new(settings: ServerSettings) -> Result<Acceptor, TlsError> {
        let files = settings.files();
        let config = Reloading::new(files, move || settings.build())?;
        Ok(Acceptor {
            config: Arc::new(config),
        })
    }

    /// The TLS handshake on an accepted connection, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<ServerStream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// The common name (CN) of the certificate a client presented on `stream`, if it
/// presented one (only asked for with client-certificate authentication, so the chain was
/// verified by the handshake); `None` for a certificate without a readable CN.
pub fn client_common_name(stream: &ServerStream) -> Option<String> {
    let der = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// A TLS connection accepted by [`incoming`], servable by tonic.
pub struct Incoming(ServerStream);

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Incoming {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Incoming {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

/// The TLS connections of `listener`, handshaken concurrently (a slow or failed
/// handshake delays no other connection), with `TCP_NODELAY` set; for tonic's
/// `serve_with_incoming_shutdown`. Ends when the listener fails for good or the
/// consumer goes away.
pub fn incoming(
    listener: TcpListener,
    acceptor: Acceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Incoming>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            let (tcp, from) = match tcp {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let _ = tx.send(Ok(Incoming(tls))).await;
                    }
                    Err(e) => tracing::warn!(peer = %from, error = %e, "TLS handshake refused"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Dials tonic channels: `http://` in plain text, `https://` with TLS.
#[derive(Clone, Default)]
pub struct Dialer {
    /// `None`: no settings given; `https://` uses the system's roots and no identity.
    tls: Option<Connector>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// A dialer whose `https://` connections use `settings`; fails now if they do not load.
    pub fn new(settings: ClientSettings) -> Result<Dialer, TlsError> {
        Ok(Dialer {
            tls: Some(Connector::new(settings)?),
        })
    }

    fn connector(&self) -> Result<Connector, TlsError> {
        match &self.tls {
            Some(c) => Ok(c.clone()),
            None => Connector::new(ClientSettings::default()),
        }
    }

    /// A channel that connects on first use.
    pub fn lazy(&self, endpoint: tonic::transport::Endpoint) -> tonic::transport::Channel {
        if endpoint.uri().scheme_str() != Some("https") {
            return endpoint.connect_with_connector_lazy(Plain::new());
        }
        match self.connector() {
            Ok(c) => endpoint.connect_with_connector_lazy(c),
            // Every call on the channel fails with this error.
            Err(e) => endpoint.connect_with_connector_lazy(Failing(Arc::new(e.to_string()))),
        }
    }

    /// A channel, connected now.
    pub async fn connect(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        if endpoint.uri().scheme_str() != Some("https") {
            return endpoint.connect_with_connector(Plain::new()).await;
        }
        match self.connector() {
            Ok(c) => endpoint.connect_with_connector(c).await,
            Err(e) => {
                endpoint
                    .connect_with_connector(Failing(Arc::new(e.to_string())))
                    .await
            }
        }
    }

    /// A TLS connection to `host:port` (its certificate checked against `host`) offering
    /// the `alpn` protocols (e.g. `[b"http/1.1"]` for an HTTP/1.1 client).
    pub async fn tls_stream(
        &self,
        host: &str,
        port: u16,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = self.connector().map_err(std::io::Error::other)?;
        connector.connect(host, port, Some(alpn)).await
    }
}

/// The TLS connector tonic calls for `https://` channels.
#[derive(Clone)]
struct Connector {
    config: Arc<Reloading<ClientConfig>>,
}

impl Connector {
    fn new(settings: ClientSettings) -> Result<Connector, TlsError> {
        let files = settings.files();
        let config = Reloading::new(files, move || settings.build())?;
        Ok(Connector {
            config: Arc::new(config),
        })
    }

    /// Connects; `alpn` replaces the configuration's protocols (HTTP/2) when given.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        alpn: Option<&[&[u8]]>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}"))
        })?;
        let tcp = TcpStream::connect((host, port)).await?;
        let _ = tcp.set_nodelay(true);
        let mut config = self.config.current();
        if let Some(alpn) = alpn {
            let mut with = (*config).clone();
            with.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            config = Arc::new(with);
        }
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }
}

type ConnectFuture<T, E = std::io::Error> =
    Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'static>>;

fn host_port(uri: &http::Uri) -> std::io::Result<(String, u16)> {
    let host = uri.host().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: no host"))
    })?;
    Ok((host.to_string(), uri.port_u16().unwrap_or(443)))
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Gathered<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>;
    type Error = std::io::Error;
    type Future = ConnectFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            Ok(Gathered::new(hyper_util::rt::TokioIo::new(
                this.connect(&host, port, None).await?,
            )))
        })
    }
}

/// The connector of `http://` channels: tonic's own (hyper's `HttpConnector`, with the
/// same settings tonic gives it: any scheme, `TCP_NODELAY`; the endpoint's connect
/// timeout wraps it), its connections [`Gathered`].
#[derive(Clone)]
struct Plain(hyper_util::client::legacy::connect::HttpConnector);

impl Plain {
    fn new() -> Plain {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        Plain(http)
    }
}

impl tower_service::Service<http::Uri> for Plain {
    type Response = Gathered<hyper_util::rt::TokioIo<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = ConnectFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(Gathered::new(connecting.await?)) })
    }
}

/// A connector for a TLS configuration that did not load: every dial fails with why.
#[derive(Clone)]
struct Failing(Arc<String>);

impl tower_service::Service<http::Uri> for Failing {
    type Response = hyper_util::rt::TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let why = self.0.clone();
        Box::pin(async move { Err(std::io::Error::other(why.to_string())) })
    }
}

#[cfg(test)]
mod tests;
