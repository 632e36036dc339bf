//! A member's TLS, from etcd's flags: the acceptors of its `https://` client and peer
//! listeners, and the dialers it uses as a client of the other members (peers for Raft,
//! gossip and replicas; client URLs for forwarding to the leader and the dashboard).

use concord_tls::{pki, Acceptor, ClientSettings, Dialer, Identity, ServerSettings};

use super::config::{ServerConfig, TlsFlags};
use super::ServerError;

/// Everything TLS of one member.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemberTls {
    /// The client listeners' handshakes (`None`: no `https://` client URL).
    pub client: Option<Acceptor>,
    /// The peer listeners' handshakes (`None`: no `https://` peer URL).
    pub peer: Option<Acceptor>,
    /// Dials other members' peer URLs (presenting the peer certificate).
    pub peer_dialer: Dialer,
    /// Dials other members' client URLs (presenting the client-side certificate, as
    /// etcd's gateway does).
    pub client_dialer: Dialer,
}

impl MemberTls {
    /// The acceptor of a client listener bound at `url` (none for `http://`).
    pub(crate) fn client_for(&self, url: &str) -> Option<Acceptor> {
        self.client.clone().filter(|_| is_tls(url))
    }

    /// The acceptor of a peer listener bound at `url` (none for `http://`).
    pub(crate) fn peer_for(&self, url: &str) -> Option<Acceptor> {
        self.peer.clone().filter(|_| is_tls(url))
    }
}

/// Whether the listener bound for `url` speaks TLS (`https://`, and `rediss://` for Redis).
pub(crate) fn is_tls(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("rediss://")
}

fn host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') || h.starts_with('[') => h,
        _ => authority,
    };
    Some(host.to_string())
}

impl MemberTls {
    /// The TLS the flags describe; errors name the flag at fault.
    pub(crate) fn from_config(config: &ServerConfig) -> Result<MemberTls, ServerError> {
        // `rediss://` Redis URLs serve the client certificate too.
        let client_urls: Vec<String> = config
            .listen_client_urls
            .iter()
            .chain(config.advertised_client_urls())
            .chain(&config.listen_redis_urls)
            .cloned()
            .collect();
        let peer_urls: Vec<String> = config
            .listen_peer_urls
            .iter()
            .chain(config.advertised_peer_urls())
            .cloned()
            .collect();
        // Other members' client certificates are verified with --trusted-ca-file, or
        // else with the peer CA (one CA for the whole cluster is the common setup).
        let client_ca = config
            .client_tls
            .trusted_ca_file
            .clone()
            .or_else(|| config.peer_tls.trusted_ca_file.clone());
        let (client, client_dialer) =
            side(config, "", &config.client_tls, &client_urls, client_ca)?;
        let peer_ca = config.peer_tls.trusted_ca_file.clone();
        let (peer, peer_dialer) = side(config, "peer-", &config.peer_tls, &peer_urls, peer_ca)?;
        Ok(MemberTls {
            client,
            peer,
            peer_dialer,
            client_dialer,
        })
    }
}

fn invalid(e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(e.to_string())
}

/// One side (client or peer, flags prefixed `prefix`): its acceptor and its dialer.
fn side(
    config: &ServerConfig,
    prefix: &str,
    flags: &TlsFlags,
    urls: &[String],
    ca_file: Option<std::path::PathBuf>,
) -> Result<(Option<Acceptor>, Dialer), ServerError> {
    let https = urls.iter().any(|u| is_tls(u));
    let kind = if prefix.is_empty() { "client" } else { "peer" };
    let identity = match (&flags.cert_file, &flags.key_file) {
        (Some(cert), Some(key)) => Some(Identity {
            cert_file: cert.clone(),
            key_file: key.clone(),
        }),
        (None, None) if flags.auto_tls && https => {
            let dir = config.data_dir.join("fixtures").join(kind);
            let hosts = pki::hosts_for(urls.iter().filter_map(|u| host(u)));
            Some(pki::self_signed(&dir, &hosts).map_err(invalid)?)
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(format!(
                "--{prefix}cert-file needs --{prefix}key-file"
            )))
        }
        (None, Some(_)) => {
            return Err(invalid(format!(
                "--{prefix}key-file needs --{prefix}cert-file"
            )))
        }
    };
    // With auto-TLS and no CA, the other members' self-signed certificates cannot be
    // verified (etcd skips verification too); with a CA, they are verified against it.
    let auto = flags.auto_tls && flags.cert_file.is_none();
    let dialer = Dialer::new(ClientSettings {
        ca_file: ca_file.clone(),
        identity: identity.clone(),
        insecure_skip_verify: auto && ca_file.is_none(),
        policy: config.tls_policy.clone(),
    })
    .map_err(|e| invalid(format!("{kind} TLS: {e}")))?;
    if !https {
        if identity.is_some() {
            tracing::warn!(
                "--{prefix}cert-file is set but no {kind} URL is https://: the {kind} listeners serve plain text"
            );
        }
        return Ok((None, dialer));
    }
    let Some(identity) = identity else {
        return Err(invalid(format!(
            "the {kind} URLs include https:// but no certificate is given: set --{prefix}cert-file and --{prefix}key-file, or --{prefix}auto-tls"
        )));
    };
    if flags.client_cert_auth && flags.trusted_ca_file.is_none() {
        return Err(invalid(format!(
            "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file (the CA that signs the accepted certificates)"
        )));
    }
    let acceptor = Acceptor::new(ServerSettings {
        identity,
        trusted_ca_file: flags.trusted_ca_file.clone(),
        client_cert_auth: flags.client_cert_auth,
        policy: config.tls_policy.clone(),
    })
    .map_err(|e| invalid(format!("{kind} TLS: {e}")))?;
    Ok((Some(acceptor), dialer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dir: &Path) -> ServerConfig {
        let mut c = ServerConfig::new("n1");
        c.data_dir = dir.to_path_buf();
        c
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host("https://10.0.0.1:2379").as_deref(), Some("10.0.0.1"));
        assert_eq!(host("https://[::1]:2379").as_deref(), Some("[::1]"));
        assert_eq!(host("http://example.com").as_deref(), Some("example.com"));
    }

    #[test]
    fn plain_text_needs_nothing_and_https_needs_a_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let tls = MemberTls::from_config(&config(tmp.path())).unwrap();
        assert!(tls.client.is_none() && tls.peer.is_none());
        let mut c = config(tmp.path());
        c.listen_client_urls = vec!["https://127.0.0.1:0".into()];
        let e = MemberTls::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("--cert-file") && e.contains("--auto-tls"), "{e}");
        c.client_tls.auto_tls = true;
        let tls = MemberTls::from_config(&c).unwrap();
        assert!(tls.client.is_some() && tls.peer.is_none());
        assert!(tmp.path().join("fixtures/client/cert.pem").exists());
        c.client_tls.client_cert_auth = true;
        let e = MemberTls::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("--trusted-ca-file"), "{e}");
    }

    #[test]
    fn half_an_identity_and_bad_files_name_the_flag() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.listen_peer_urls = vec!["https://127.0.0.1:0".into()];
        c.peer_tls.cert_file = Some(tmp.path().join("peer.pem"));
        let e = MemberTls::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("--peer-cert-file needs --peer-key-file"), "{e}");
        c.peer_tls.key_file = Some(tmp.path().join("peer-key.pem"));
        let e = MemberTls::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("peer TLS") && e.contains("peer.pem"), "{e}");
        c.tls_policy.min_version = Some("TLS1.1".into());
        let e = MemberTls::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("TLS1.1"), "{e}");
    }
}
