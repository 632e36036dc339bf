use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::pki::Ca;

fn hosts() -> Vec<String> {
    pki::hosts_for(["127.0.0.1".to_string()])
}

/// A server on a loopback port that echoes one line per connection; its port. The common
/// name of each client's certificate is sent on `names`.
async fn echo_server(acceptor: Acceptor) -> u16 {
    echo_server_naming(acceptor, None).await
}

async fn echo_server_naming(
    acceptor: Acceptor,
    names: Option<tokio::sync::mpsc::UnboundedSender<Option<String>>>,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, names) = (acceptor.clone(), names.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    if let Some(names) = &names {
                        let _ = names.send(client_common_name(&tls));
                    }
                    let mut buf = [0u8; 5];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls.write_all(&buf).await;
                        let _ = tls.flush().await;
                    }
                }
            });
        }
    });
    port
}

/// Whether a client with `settings` completes a handshake and an echo with the server.
async fn talks(settings: ClientSettings, port: u16) -> Result<(), String> {
    let dialer = Dialer::new(settings).map_err(|e| e.to_string())?;
    let mut tls = dialer
        .tls_stream("127.0.0.1", port, &[b"h2"])
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 reports a refused client certificate only at the first read.
    tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"hello");
    Ok(())
}

struct Pki {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    other: Ca,
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = Ca::create(&dir, "test CA", "ca").unwrap();
    let other = Ca::create(&dir, "another CA", "other-ca").unwrap();
    Pki {
        _dir: tmp,
        dir,
        ca,
        other,
    }
}

fn server(p: &Pki, client_cert_auth: bool) -> ServerSettings {
    ServerSettings {
        identity: p.ca.issue(&p.dir, "server", &hosts()).unwrap(),
        trusted_ca_file: Some(p.ca.cert_file.clone()),
        client_cert_auth,
        policy: Policy::default(),
    }
}

fn client(ca: &Ca, identity: Option<Identity>) -> ClientSettings {
    ClientSettings {
        ca_file: Some(ca.cert_file.clone()),
        identity,
        ..ClientSettings::default()
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_of_the_trusted_ca() {
    let p = pki();
    let port = echo_server(Acceptor::new(server(&p, true)).unwrap()).await;
    let mine = p.ca.issue(&p.dir, "alice", &[]).unwrap();
    let theirs = p.other.issue(&p.dir, "mallory", &[]).unwrap();
    talks(client(&p.ca, Some(mine)), port).await.unwrap();
    let none = talks(client(&p.ca, None), port).await.unwrap_err();
    assert!(!none.is_empty());
    talks(client(&p.ca, Some(theirs)), port).await.unwrap_err();
    // And the client refuses a server its CA did not sign.
    let e = talks(client(&p.other, None), port).await.unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test]
async fn the_verified_client_certificate_names_its_holder() {
    let p = pki();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let port = echo_server_naming(Acceptor::new(server(&p, true)).unwrap(), Some(tx)).await;
    let alice = p.ca.issue(&p.dir, "alice", &[]).unwrap();
    talks(client(&p.ca, Some(alice)), port).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some("alice"));
    // Without client-certificate authentication no certificate is asked for.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let port = echo_server_naming(Acceptor::new(server(&p, false)).unwrap(), Some(tx)).await;
    let bob = p.ca.issue(&p.dir, "bob", &[]).unwrap();
    talks(client(&p.ca, Some(bob)), port).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), None);
}

#[tokio::test]
async fn without_client_cert_auth_any_client_connects_and_the_server_is_verified() {
    let p = pki();
    let port = echo_server(Acceptor::new(server(&p, false)).unwrap()).await;
    talks(client(&p.ca, None), port).await.unwrap();
    talks(
        ClientSettings {
            insecure_skip_verify: true,
            ..ClientSettings::default()
        },
        port,
    )
    .await
    .unwrap();
    // The system's roots do not know the test CA.
    talks(ClientSettings::default(), port).await.unwrap_err();
}

#[tokio::test]
async fn versions_outside_the_policy_fail_the_handshake() {
    let p = pki();
    let mut settings = server(&p, false);
    settings.policy.min_version = Some("TLS1.3".into());
    let port = echo_server(Acceptor::new(settings).unwrap()).await;
    let mut old = client(&p.ca, None);
    old.policy.max_version = Some("TLS1.2".into());
    talks(old, port).await.unwrap_err();
    talks(client(&p.ca, None), port).await.unwrap();
}

#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let p = pki();
    let settings = server(&p, false);
    let identity = settings.identity.clone();
    let port = echo_server(Acceptor::new(settings).unwrap()).await;
    talks(client(&p.ca, None), port).await.unwrap();
    talks(client(&p.other, None), port).await.unwrap_err();
    // Rotate to a certificate of the other CA, in place.
    let rotated = p.other.issue(&p.dir, "rotated", &hosts()).unwrap();
    std::fs::copy(&rotated.key_file, &identity.key_file).unwrap();
    std::fs::copy(&rotated.cert_file, &identity.cert_file).unwrap();
    tokio::time::sleep(RELOAD_CHECK + Duration::from_millis(200)).await;
    talks(client(&p.other, None), port).await.unwrap();
    talks(client(&p.ca, None), port).await.unwrap_err();
    // A broken rotation keeps the previous certificate in use.
    std::fs::write(&identity.cert_file, b"garbage").unwrap();
    tokio::time::sleep(RELOAD_CHECK + Duration::from_millis(200)).await;
    talks(client(&p.other, None), port).await.unwrap();
}

#[test]
fn bad_files_and_settings_are_clear_errors() {
    let p = pki();
    let garbage = p.dir.join("garbage.pem");
    std::fs::write(&garbage, b"not a certificate").unwrap();
    let mut s = server(&p, false);
    s.identity.cert_file = garbage.clone();
    let e = s.build().unwrap_err().to_string();
    assert!(
        e.contains("garbage.pem") && e.contains("CERTIFICATE"),
        "{e}"
    );
    let mut s = server(&p, false);
    s.identity.key_file = p.dir.join("missing-key.pem");
    let e = s.build().unwrap_err().to_string();
    assert!(e.contains("missing-key.pem"), "{e}");
    // A key that is not the certificate's.
    let mut s = server(&p, false);
    s.identity.key_file = p.ca.issue(&p.dir, "x", &[]).unwrap().key_file;
    assert!(s.build().is_err());
    let mut s = server(&p, true);
    s.trusted_ca_file = None;
    assert!(s.build().unwrap_err().to_string().contains("trusted CA"));
    for (min, max, why) in [
        (Some("TLS1.0"), None, "not supported"),
        (Some("SSL3"), None, "unknown TLS version"),
        (Some("TLS1.3"), Some("TLS1.2"), "above"),
    ] {
        let mut s = server(&p, false);
        s.policy.min_version = min.map(String::from);
        s.policy.max_version = max.map(String::from);
        let e = s.build().unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    let mut s = server(&p, false);
    s.policy.cipher_suites = vec!["TLS_RSA_WITH_RC4_128_SHA".into()];
    let e = s.build().unwrap_err().to_string();
    assert!(
        e.contains("TLS_RSA_WITH_RC4_128_SHA") && e.contains("supported:"),
        "{e}"
    );
    let mut s = server(&p, false);
    s.policy.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()];
    s.build().unwrap();
}

#[tokio::test]
async fn auto_tls_certificates_are_trusted_only_by_skipping_verification_or_pinning() {
    let tmp = tempfile::tempdir().unwrap();
    let identity = pki::self_signed(tmp.path(), &hosts()).unwrap();
    // Reused at the next start.
    let again = pki::self_signed(tmp.path(), &hosts()).unwrap();
    assert_eq!(
        std::fs::read(&identity.cert_file).unwrap(),
        std::fs::read(&again.cert_file).unwrap()
    );
    let port = echo_server(
        Acceptor::new(ServerSettings {
            identity: identity.clone(),
            trusted_ca_file: None,
            client_cert_auth: false,
            policy: Policy::default(),
        })
        .unwrap(),
    )
    .await;
    talks(
        ClientSettings {
            insecure_skip_verify: true,
            ..ClientSettings::default()
        },
        port,
    )
    .await
    .unwrap();
    // Pinned: the certificate itself as the trusted CA.
    talks(
        ClientSettings {
            ca_file: Some(identity.cert_file),
            ..ClientSettings::default()
        },
        port,
    )
    .await
    .unwrap();
    talks(ClientSettings::default(), port).await.unwrap_err();
}

#[tokio::test]
async fn a_plain_text_client_gets_no_answer_and_the_server_goes_on() {
    let p = pki();
    let port = echo_server(Acceptor::new(server(&p, false)).unwrap()).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(!out.starts_with(b"HTTP"), "answered in plain text");
    talks(client(&p.ca, None), port).await.unwrap();
}
