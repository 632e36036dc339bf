//! End to end: a 3-member cluster of `concord server` processes with TLS on every URL,
//! client certificates required (`--client-cert-auth`) and members authenticating each
//! other (`--peer-client-cert-auth`), certificates from a throw-away CA (concord-tls's
//! `pki`). Clients and would-be members without a certificate of that CA are refused at
//! the handshake; the cluster itself forms and replicates over mutual TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_ports, BIN, WAIT};
use concord_client::{Client, ClientError, ClientOptions, Idempotence, Identity, TlsSettings};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::{PutRequest, RangeRequest};
use concord_proto::peer::membership_client::MembershipClient;
use concord_proto::peer::MembersRequest;
use concord_tls::pki::{self, Ca};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TlsCluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    client_urls: Vec<String>,
    peer_urls: Vec<String>,
    redis_ports: Vec<u16>,
    ca: Ca,
    other: Ca,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.children.len() {
                let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- n{} ---", i + 1);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl TlsCluster {
    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}.log", i + 1))
    }

    /// Starts three members; `extra` flags go to every one.
    fn start(extra: &[&str]) -> TlsCluster {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let ca = Ca::create(&tls, "test CA", "ca").unwrap();
        let other = Ca::create(&tls, "another CA", "other-ca").unwrap();
        let hosts = pki::hosts_for([]);
        let ports = free_ports(9);
        let client_urls: Vec<String> = (0..3)
            .map(|i| format!("https://127.0.0.1:{}", ports[2 * i]))
            .collect();
        let peer_urls: Vec<String> = (0..3)
            .map(|i| format!("https://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let redis_ports: Vec<u16> = ports[6..].to_vec();
        let cluster = (0..3)
            .map(|i| format!("n{}={}", i + 1, peer_urls[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut this = TlsCluster {
            dir,
            children: Vec::new(),
            client_urls,
            peer_urls,
            redis_ports,
            ca,
            other,
        };
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let id = this.ca.issue(&tls, &name, &hosts).unwrap();
            let ca = this.ca.cert_file.display().to_string();
            let (cert, key) = (
                id.cert_file.display().to_string(),
                id.key_file.display().to_string(),
            );
            let log = std::fs::File::create(this.log(i)).unwrap();
            let mut cmd = Command::new(BIN);
            cmd.arg("server")
                .args(["--name", &name])
                .arg(format!(
                    "--data-dir={}",
                    this.dir.path().join(&name).display()
                ))
                .args(["--listen-client-urls", &this.client_urls[i]])
                .args(["--advertise-client-urls", &this.client_urls[i]])
                .args(["--listen-peer-urls", &this.peer_urls[i]])
                .args(["--initial-advertise-peer-urls", &this.peer_urls[i]])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-token", "tls-test"])
                .arg(format!(
                    "--listen-redis-urls=rediss://127.0.0.1:{}",
                    this.redis_ports[i]
                ))
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--cert-file", &cert, "--key-file", &key])
                .args(["--trusted-ca-file", &ca, "--client-cert-auth"])
                .args(["--peer-cert-file", &cert, "--peer-key-file", &key])
                .args(["--peer-trusted-ca-file", &ca, "--peer-client-cert-auth"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            this.children.push(cmd.spawn().unwrap());
        }
        this
    }

    /// A client certificate named `name` issued by `ca`.
    fn identity(&self, ca: &Ca, name: &str) -> Identity {
        ca.issue(&self.tls_dir(), name, &[]).unwrap()
    }

    fn client(&self, settings: TlsSettings) -> Result<Client, ClientError> {
        Client::new(
            &self.client_urls,
            ClientOptions {
                dial_timeout: Duration::from_secs(2),
                request_timeout: Some(Duration::from_secs(5)),
                attempts: 1,
                tls: settings,
                ..ClientOptions::default()
            },
        )
    }

    fn settings(&self, identity: Option<Identity>) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.ca.cert_file.clone()),
            identity,
            ..TlsSettings::default()
        }
    }
}

async fn put(client: &Client, key: &str, value: &str) -> Result<(), ClientError> {
    client
        .call(Idempotence::NotIdempotent, |ch| {
            let req = PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            };
            async move { KvClient::new(ch).put(req).await }
        })
        .await
        .map(|_| ())
}

async fn get(client: &Client, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
    let r = client
        .call(Idempotence::Idempotent, |ch| {
            let req = RangeRequest {
                key: key.into(),
                ..Default::default()
            };
            async move { KvClient::new(ch).range(req).await }
        })
        .await?;
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// Whether a gRPC call to the peer URL `url` with `identity` reaches the service.
async fn peer_call(url: &str, ca: &Path, identity: Identity) -> Result<(), String> {
    let dialer = concord_client::Dialer::new(TlsSettings {
        ca_file: Some(ca.to_path_buf()),
        identity: Some(identity),
        ..TlsSettings::default()
    })
    .map_err(|e| e.to_string())?;
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let channel = dialer
        .connect(endpoint)
        .await
        .map_err(|e| format!("{e:?}"))?;
    MembershipClient::new(channel)
        .members(MembersRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_holders_of_the_clusters_certificates() {
    let cluster = TlsCluster::start(&["--tls-min-version", "TLS1.3"]);
    let alice = cluster.identity(&cluster.ca, "alice");
    let client = cluster
        .client(cluster.settings(Some(alice.clone())))
        .unwrap();
    // A committed write needs a leader elected and a quorum reached over peer TLS.
    eventually("a write over TLS", WAIT, || async {
        put(&client, "k", "v").await.ok()
    })
    .await;
    for i in 0..3 {
        let one = Client::new(
            [cluster.client_urls[i].clone()],
            ClientOptions {
                tls: cluster.settings(Some(alice.clone())),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            get(&one, "k").await.unwrap(),
            Some(b"v".to_vec()),
            "n{}",
            i + 1
        );
    }

    // Clients: no certificate, another CA's certificate, an untrusted server, plain
    // text, TLS 1.2 against --tls-min-version TLS1.3.
    let none = cluster.client(cluster.settings(None)).unwrap();
    get(&none, "k").await.unwrap_err();
    let mallory = cluster.identity(&cluster.other, "mallory");
    let theirs = cluster
        .client(cluster.settings(Some(mallory.clone())))
        .unwrap();
    get(&theirs, "k").await.unwrap_err();
    let untrusting = cluster
        .client(TlsSettings {
            ca_file: Some(cluster.other.cert_file.clone()),
            identity: Some(alice.clone()),
            ..TlsSettings::default()
        })
        .unwrap();
    let e = get(&untrusting, "k").await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let plain = Client::new(
        cluster
            .client_urls
            .iter()
            .map(|u| u.replace("https://", "http://")),
        ClientOptions {
            attempts: 1,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    get(&plain, "k").await.unwrap_err();
    let mut old = cluster.settings(Some(alice.clone()));
    old.policy.max_version = Some("TLS1.2".into());
    get(&cluster.client(old).unwrap(), "k").await.unwrap_err();

    // Members: the peer port serves a member certificate of the cluster's CA and
    // nothing else, so a process holding another CA's certificate cannot gossip,
    // replicate or send Raft messages.
    let peer = &cluster.peer_urls[0];
    let member = cluster.identity(&cluster.ca, "n4");
    peer_call(peer, &cluster.ca.cert_file, member)
        .await
        .unwrap();
    let intruder = cluster.identity(&cluster.other, "n4-intruder");
    peer_call(peer, &cluster.ca.cert_file, intruder)
        .await
        .unwrap_err();

    // Redis clients over TLS (rediss://): --client-cert-auth applies there too, as
    // Redis's own `tls-auth-clients yes`.
    let anonymous = concord_client::Dialer::new(cluster.settings(None)).unwrap();
    let mut refused = anonymous
        .tls_stream("127.0.0.1", cluster.redis_ports[0], &[])
        .await
        .unwrap();
    let _ = refused.write_all(b"PING\r\n").await;
    let mut answer = Vec::new();
    assert!(refused.read_to_end(&mut answer).await.is_err() || answer.is_empty());
    let dialer = concord_client::Dialer::new(cluster.settings(Some(alice.clone()))).unwrap();
    let mut redis = dialer
        .tls_stream("127.0.0.1", cluster.redis_ports[0], &[])
        .await
        .unwrap();
    redis.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    redis.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", cluster.redis_ports[0]))
        .await
        .unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"+PONG"),
        "plain text answered on rediss://"
    );

    // The cluster is unharmed by all of it.
    put(&client, "k", "w").await.unwrap();
    assert_eq!(get(&client, "k").await.unwrap(), Some(b"w".to_vec()));

    // With auth on, the common name of a verified client certificate is the user when a
    // request carries no token (as etcd): alice (CN alice) reads /a/ only.
    use concord_proto::etcdserverpb::auth_client::AuthClient;
    use concord_proto::etcdserverpb::{self as pb};
    let admin = |step: u8| {
        let client = client.clone();
        async move {
            client
                .call(Idempotence::NotIdempotent, |ch| {
                    let mut auth = AuthClient::new(ch);
                    async move {
                        match step {
                            0 => auth
                                .user_add(pb::AuthUserAddRequest {
                                    name: "root".into(),
                                    password: "rootpw".into(),
                                    ..Default::default()
                                })
                                .await
                                .map(|_| tonic::Response::new(())),
                            1 => auth
                                .user_grant_role(pb::AuthUserGrantRoleRequest {
                                    user: "root".into(),
                                    role: "root".into(),
                                })
                                .await
                                .map(|_| tonic::Response::new(())),
                            2 => auth
                                .role_add(pb::AuthRoleAddRequest {
                                    name: "reader".into(),
                                })
                                .await
                                .map(|_| tonic::Response::new(())),
                            3 => auth
                                .role_grant_permission(pb::AuthRoleGrantPermissionRequest {
                                    name: "reader".into(),
                                    perm: Some(concord_proto::authpb::Permission {
                                        perm_type: 0,
                                        key: b"/a/".to_vec(),
                                        range_end: b"/a0".to_vec(),
                                    }),
                                })
                                .await
                                .map(|_| tonic::Response::new(())),
                            4 => auth
                                .user_add(pb::AuthUserAddRequest {
                                    name: "alice".into(),
                                    options: Some(concord_proto::authpb::UserAddOptions {
                                        no_password: true,
                                    }),
                                    ..Default::default()
                                })
                                .await
                                .map(|_| tonic::Response::new(())),
                            5 => auth
                                .user_grant_role(pb::AuthUserGrantRoleRequest {
                                    user: "alice".into(),
                                    role: "reader".into(),
                                })
                                .await
                                .map(|_| tonic::Response::new(())),
                            _ => auth
                                .auth_enable(pb::AuthEnableRequest {})
                                .await
                                .map(|_| tonic::Response::new(())),
                        }
                    }
                })
                .await
        }
    };
    put(&client, "/a/x", "1").await.unwrap();
    for step in 0..=6 {
        admin(step).await.unwrap();
    }
    assert_eq!(get(&client, "/a/x").await.unwrap(), Some(b"1".to_vec()));
    let e = put(&client, "/a/x", "2").await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    // A certificate whose name is no user is no user.
    let carol = cluster.identity(&cluster.ca, "carol");
    let carols = cluster.client(cluster.settings(Some(carol))).unwrap();
    let e = get(&carols, "/a/x").await.unwrap_err();
    assert!(e.to_string().contains("user name is empty"), "{e}");
    let log = std::fs::read_to_string(cluster.log(0)).unwrap();
    assert!(log.contains("TLS handshake refused"), "refusals are logged");
}

#[test]
fn https_without_a_certificate_is_refused_at_start_naming_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("server")
        .arg(format!("--data-dir={}", dir.path().join("d").display()))
        .args(["--listen-client-urls", "https://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cert-file") && err.contains("--auto-tls"),
        "{err}"
    );
    let out = Command::new(BIN)
        .arg("server")
        .arg(format!("--data-dir={}", dir.path().join("e").display()))
        .args(["--listen-client-urls", "https://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .args([
            "--cert-file",
            "/nonexistent/cert.pem",
            "--key-file",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
