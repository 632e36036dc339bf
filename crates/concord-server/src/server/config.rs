//! [`ServerConfig`]: everything `concord server` is told, with etcd's defaults.

use std::path::PathBuf;
use std::time::Duration;

pub use concord_core::swim::SwimConfig;

/// Whether this member founds a new cluster or joins a running one (etcd's
/// `--initial-cluster-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `initial_cluster`.
    #[default]
    New,
    /// Join a cluster that already added this member (`member add`).
    Existing,
}

/// Settings of one `concord server` process. Field names follow etcd's flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `--name`: this member's human-readable name (default `default`).
    pub name: String,
    /// `--data-dir`: where the WAL and the store live (default `<name>.concord`).
    pub data_dir: PathBuf,
    /// `--listen-client-urls`: where gRPC and HTTP clients connect
    /// (default `http://127.0.0.1:2379`). Port 0 picks a free port.
    pub listen_client_urls: Vec<String>,
    /// `--advertise-client-urls`: client URLs told to others (default: the listen URLs).
    pub advertise_client_urls: Vec<String>,
    /// `--listen-peer-urls`: where other members connect (default `http://127.0.0.1:2380`).
    pub listen_peer_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`: this member's peer URLs as told to others
    /// (default: the listen URLs).
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`: every founding member, `name` → peer URLs (default: this
    /// member alone, at its advertised peer URLs).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`: makes cluster and member ids unique per cluster
    /// (default `etcd-cluster`).
    pub initial_cluster_token: String,
    /// `--heartbeat-interval` (default 100 ms); also Raft's tick.
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (default 1000 ms); rounded to whole heartbeats.
    pub election_timeout: Duration,
    /// `--lease-reads`: the leader serves linearizable reads on its lease, without a
    /// heartbeat round (off by default: ReadIndex).
    pub lease_reads: bool,
    /// `--peer-direct-links`: Raft batches to `http://` peers go straight onto a TCP
    /// connection instead of the gRPC stream (default true; `concord_runtime::direct`).
    pub peer_direct_links: bool,
    /// `--snapshot-count`: applied entries between snapshots (default 10,000).
    pub snapshot_count: u64,
    /// `--quota-backend-bytes`: the store's size limit before the NOSPACE alarm
    /// (default 2 GiB).
    pub quota_backend_bytes: u64,
    /// `--backend-cache-bytes`: the store's page cache (default 64 MiB). Multi-key ranges
    /// read one row per key, so a cache that holds the hot rows keeps them fast; resident
    /// memory grows up to it.
    pub backend_cache_bytes: usize,
    /// `--backend-batches-per-commit`: applied Raft batches that share one commit of the
    /// store (default 32; docs/storage.md § 2.5).
    pub backend_batches_per_commit: u32,
    /// `--max-request-bytes`: largest client request (default 1.5 MiB).
    pub max_request_bytes: usize,
    /// `--max-txn-ops`: most operations in one transaction (default 128).
    pub max_txn_ops: usize,
    /// `--max-concurrent-streams`: most concurrent HTTP/2 streams per client connection
    /// (etcd's default: 2^32 - 1, no practical limit).
    pub max_concurrent_streams: u32,
    /// `--max-client-connections`: most open client connections on each client URL;
    /// further ones wait in the kernel's accept queue until one closes (default 10,000).
    pub max_client_connections: usize,
    /// How often the leader records leases' remaining TTLs through Raft, bounding how
    /// much a leader change can extend a lease (default 5 s).
    pub lease_checkpoint_interval: Duration,
    /// How long a client request may wait for the cluster (default 7 s).
    pub request_timeout: Duration,
    /// SWIM gossip and the phi detector per peer (`--gossip-interval`, `--phi-*`).
    pub gossip: SwimConfig,
    /// `--listen-redis-urls`: where Redis clients connect (`redis://host:port`; none by
    /// default here; `concord server` with no listen flags at all uses
    /// `redis://127.0.0.1:6379`).
    pub listen_redis_urls: Vec<String>,
    /// The AP buckets: replicas and quorums, timeouts, the hint bound, the anti-entropy
    /// interval (`--ap-*`).
    pub ap: crate::ap::ApConfig,
    /// `--ap-only`: hold AP data without being a Raft member; the other members named by
    /// `--initial-cluster` are the Raft members to read the cluster metadata from.
    pub ap_only: bool,
    /// TLS of the client URLs (`--cert-file`, `--key-file`, `--trusted-ca-file`,
    /// `--client-cert-auth`, `--auto-tls`).
    pub client_tls: TlsFlags,
    /// TLS of the peer URLs (the same flags with `--peer-`).
    pub peer_tls: TlsFlags,
    /// Versions and cipher suites of both (`--tls-min-version`, `--tls-max-version`,
    /// `--cipher-suites`).
    pub tls_policy: concord_tls::Policy,
    /// `--auth-token-ttl`: how long an auth token lives (default 300 s).
    pub auth_token_ttl: Duration,
}

/// One side's TLS flags (client or peer), as etcd names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFlags {
    /// `--cert-file`: the certificate served (and presented to other members).
    pub cert_file: Option<PathBuf>,
    /// `--key-file`: its private key.
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: the CA that certificates of the other side must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: refuse connections without a certificate of that CA.
    pub client_cert_auth: bool,
    /// `--auto-tls`: a self-signed certificate when none is given (encrypts, does not
    /// authenticate).
    pub auto_tls: bool,
}

impl ServerConfig {
    /// etcd's defaults for a member called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            data_dir: PathBuf::from(format!("{name}.concord")),
            name,
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: Vec::new(),
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: Vec::new(),
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            lease_reads: false,
            peer_direct_links: true,
            snapshot_count: 10_000,
            quota_backend_bytes: 2 << 30,
            backend_cache_bytes: 64 << 20,
            backend_batches_per_commit: concord_storage::mvcc::MvccConfig::default()
                .batches_per_commit,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            max_concurrent_streams: u32::MAX,
            max_client_connections: 10_000,
            lease_checkpoint_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(7),
            gossip: SwimConfig::default(),
            ap: crate::ap::ApConfig::default(),
            listen_redis_urls: Vec::new(),
            ap_only: false,
            client_tls: TlsFlags::default(),
            peer_tls: TlsFlags::default(),
            tls_policy: concord_tls::Policy::default(),
            auth_token_ttl: Duration::from_secs(300),
        }
    }

    /// `--gossip-interval`: one SWIM probe per `interval`, its direct ping given half of it.
    pub fn set_gossip_interval(&mut self, interval: Duration) {
        self.gossip.protocol_period = interval;
        self.gossip.ping_timeout = interval / 2;
    }

    /// Parses etcd's `--initial-cluster` syntax: `n1=http://a:2380,n2=http://b:2380`
    /// (a name may repeat to give a member several URLs).
    pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, String> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| format!("--initial-cluster: `{part}` is not name=url"))?;
            if name.is_empty() || url.is_empty() {
                return Err(format!("--initial-cluster: `{part}` is not name=url"));
            }
            check_url(url)?;
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => out.push((name.to_string(), vec![url.to_string()])),
            }
        }
        Ok(out)
    }

    /// The advertised client URLs (the listen URLs when none are given).
    pub fn advertised_client_urls(&self) -> &[String] {
        if self.advertise_client_urls.is_empty() {
            &self.listen_client_urls
        } else {
            &self.advertise_client_urls
        }
    }

    /// The advertised peer URLs (the listen URLs when none are given).
    pub fn advertised_peer_urls(&self) -> &[String] {
        if self.initial_advertise_peer_urls.is_empty() {
            &self.listen_peer_urls
        } else {
            &self.initial_advertise_peer_urls
        }
    }

    /// The founding members (this member alone when `initial_cluster` is empty).
    pub fn founding_members(&self) -> Vec<(String, Vec<String>)> {
        if self.initial_cluster.is_empty() {
            vec![(self.name.clone(), self.advertised_peer_urls().to_vec())]
        } else {
            self.initial_cluster.clone()
        }
    }

    /// Checks the settings; the error names the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("--name must not be empty".into());
        }
        for (flag, urls) in [
            ("--listen-client-urls", &self.listen_client_urls),
            ("--listen-peer-urls", &self.listen_peer_urls),
        ] {
            if urls.is_empty() {
                return Err(format!("{flag} must name at least one URL"));
            }
        }
        for url in &self.listen_redis_urls {
            redis_host_port(url)?;
        }
        for url in self
            .listen_client_urls
            .iter()
            .chain(&self.listen_peer_urls)
            .chain(&self.advertise_client_urls)
            .chain(&self.initial_advertise_peer_urls)
        {
            check_url(url)?;
        }
        let hb = self.heartbeat_interval.as_millis();
        let et = self.election_timeout.as_millis();
        if hb == 0 {
            return Err("--heartbeat-interval must be positive".into());
        }
        if et < 5 * hb {
            return Err(format!(
                "--election-timeout ({et} ms) must be at least 5 times --heartbeat-interval ({hb} ms)"
            ));
        }
        if self.snapshot_count == 0 {
            return Err("--snapshot-count must be positive".into());
        }
        if self.max_request_bytes == 0 {
            return Err("--max-request-bytes must be positive".into());
        }
        if self.max_txn_ops == 0 {
            return Err("--max-txn-ops must be positive".into());
        }
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be positive".into());
        }
        if self.max_client_connections == 0 {
            return Err("--max-client-connections must be positive".into());
        }
        if self.gossip.protocol_period < Duration::from_millis(10) {
            return Err("--gossip-interval must be at least 10 ms".into());
        }
        let phi = &self.gossip.phi;
        if !(phi.threshold.is_finite() && phi.threshold > 0.0) {
            return Err(format!(
                "--phi-threshold must be a positive number, got {}",
                phi.threshold
            ));
        }
        if phi.min_std_deviation.is_zero() {
            return Err("--phi-min-std-deviation must be positive".into());
        }
        self.gossip.validate().map_err(|e| e.to_string())?;
        let members = self.founding_members();
        if self.ap_only {
            // The other members named are the Raft members it reads the metadata from.
            if !members.iter().any(|(n, _)| *n != self.name) {
                return Err(
                    "--ap-only needs --initial-cluster to name at least one Raft \
                            member to read the cluster metadata from"
                        .into(),
                );
            }
            return Ok(());
        }
        if self.initial_cluster_state == ClusterState::New {
            let me = members
                .iter()
                .find(|(n, _)| *n == self.name)
                .ok_or_else(|| {
                    format!(
                        "--initial-cluster does not name this member (--name {})",
                        self.name
                    )
                })?;
            let mine: Vec<&String> = self.advertised_peer_urls().iter().collect();
            if !me.1.iter().any(|u| mine.contains(&u)) {
                return Err(format!(
                    "--initial-cluster gives {} the peer URLs {:?}, but it advertises {:?}",
                    self.name, me.1, mine
                ));
            }
        }
        Ok(())
    }
}

/// `host:port` of a `redis://host:port` or `rediss://host:port` (TLS) URL.
pub fn redis_host_port(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| {
            format!("--listen-redis-urls: URL `{url}` must start with redis:// or rediss://")
        })?;
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(hostport.to_string())
        }
        _ => Err(format!(
            "--listen-redis-urls: URL `{url}` is not redis://host:port"
        )),
    }
}

/// Accepts `http://host:port` (and `https://`, refused later if TLS is not configured).
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("URL `{url}` must start with http:// or https://"))?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("URL `{url}` has no port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("URL `{url}` is not http://host:port"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let c = ServerConfig::parse_initial_cluster(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1, vec!["http://127.0.0.1:1", "http://127.0.0.1:3"]);
        assert!(ServerConfig::parse_initial_cluster("a").is_err());
        assert!(ServerConfig::parse_initial_cluster("a=ftp://x:1").is_err());
    }

    #[test]
    fn validates() {
        let mut c = ServerConfig::new("n1");
        c.validate().unwrap();
        c.initial_cluster =
            ServerConfig::parse_initial_cluster("n2=http://127.0.0.1:2380").unwrap();
        assert!(c.validate().unwrap_err().contains("does not name"));
        c.initial_cluster_state = ClusterState::Existing;
        c.validate().unwrap();
        c.election_timeout = Duration::from_millis(200);
        assert!(c.validate().unwrap_err().contains("--election-timeout"));
    }

    #[test]
    fn an_ap_only_member_needs_raft_members_to_read_from() {
        let mut c = ServerConfig::new("n4");
        c.ap_only = true;
        assert!(c.validate().unwrap_err().contains("--ap-only"));
        // The Raft members named need not include this member.
        c.initial_cluster =
            ServerConfig::parse_initial_cluster("n1=http://127.0.0.1:2380").unwrap();
        c.validate().unwrap();
    }
}
