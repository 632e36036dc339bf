//! A client over several endpoints: lazily dialled channels, a circuit breaker per endpoint,
//! retries with backoff and jitter, leader discovery.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use concord_core::breaker::{BreakerConfig, CircuitBreaker, Permit};
use concord_core::NodeId;
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{MemberListRequest, StatusRequest};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::endpoint::{dial_with, endpoint_url};
use crate::error::ClientError;

/// Whether a request may be sent again after an indefinite failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotence {
    /// Applying it twice equals applying it once (reads, status): retried after any
    /// transient failure.
    Idempotent,
    /// A write: retried only when the failure is definite (the request had no effect), so
    /// a retry can never apply it twice.
    NotIdempotent,
}

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on opening one connection.
    pub dial_timeout: Duration,
    /// Bound on each attempt of a call (`None`: the caller bounds it).
    pub request_timeout: Option<Duration>,
    /// Attempts per call, the first included (at least 1).
    pub attempts: u32,
    /// Wait between attempts.
    pub backoff: Backoff,
    /// The breaker kept for each endpoint.
    pub breaker: BreakerConfig,
    /// TLS of `https://` endpoints (default: the system's trusted CAs, no certificate).
    pub tls: concord_tls::ClientSettings,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            dial_timeout: Duration::from_secs(2),
            request_timeout: Some(Duration::from_secs(5)),
            attempts: 3,
            backoff: Backoff::default(),
            breaker: BreakerConfig {
                cool_down: Duration::from_secs(2),
                ..BreakerConfig::default()
            },
            tls: concord_tls::ClientSettings::default(),
        }
    }
}

struct Slot {
    /// As the user gave it (for messages).
    endpoint: String,
    url: String,
    channel: tokio::sync::Mutex<Option<Channel>>,
    breaker: Mutex<CircuitBreaker>,
}

struct Inner {
    slots: Vec<Slot>,
    options: ClientOptions,
    dialer: concord_tls::Dialer,
    /// The endpoint that answered last; calls start there.
    preferred: AtomicUsize,
    origin: Instant,
    rng: Mutex<SmallRng>,
}

/// A client over a list of endpoints. Cheap to clone (the state is shared).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// A client for `endpoints` (`host:port` or `http://host:port`); dials nothing yet.
    pub fn new<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let mut slots = Vec::new();
        for ep in endpoints {
            let ep = ep.as_ref().trim();
            if ep.is_empty() {
                continue;
            }
            let breaker =
                CircuitBreaker::new(options.breaker).map_err(|e| ClientError::BadEndpoint {
                    endpoint: ep.to_string(),
                    reason: format!("breaker configuration: {e}"),
                })?;
            slots.push(Slot {
                endpoint: ep.to_string(),
                url: endpoint_url(ep)?,
                channel: tokio::sync::Mutex::new(None),
                breaker: Mutex::new(breaker),
            });
        }
        if slots.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        // Without settings, nothing is loaded until an https:// endpoint is dialled.
        let dialer = if options.tls == concord_tls::ClientSettings::default() {
            concord_tls::Dialer::default()
        } else {
            concord_tls::Dialer::new(options.tls.clone()).map_err(|e| ClientError::Tls {
                detail: e.to_string(),
            })?
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Client {
            inner: Arc::new(Inner {
                slots,
                options,
                dialer,
                preferred: AtomicUsize::new(0),
                origin: Instant::now(),
                rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            }),
        })
    }

    /// [`Client::new`], then dials the endpoints in order until one connects (as etcdctl
    /// does), so a wrong address is reported now rather than at the first call.
    pub async fn connect<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let client = Client::new(endpoints, options)?;
        client.channel().await?;
        Ok(client)
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .slots
            .iter()
            .map(|s| s.endpoint.clone())
            .collect()
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    fn now(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    /// A channel to the preferred endpoint, or to the next one that connects.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let n = self.inner.slots.len();
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut last = ClientError::NoEndpoints;
        for k in 0..n {
            let i = (first + k) % n;
            match self.slot_channel(i).await {
                Ok(ch) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(ch);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Endpoint `i`'s channel, dialled on first use; the breaker counts a failed dial.
    async fn slot_channel(&self, i: usize) -> Result<Channel, ClientError> {
        let slot = &self.inner.slots[i];
        let mut guard = slot.channel.lock().await;
        if let Some(ch) = guard.as_ref() {
            return Ok(ch.clone());
        }
        let permit = self.acquire(i)?;
        match dial_with(
            &slot.url,
            self.inner.options.dial_timeout,
            &self.inner.dialer,
        )
        .await
        {
            Ok(ch) => {
                lock(&slot.breaker).on_success(permit, self.now());
                *guard = Some(ch.clone());
                Ok(ch)
            }
            Err(e) => {
                lock(&slot.breaker).on_failure(permit, self.now());
                Err(rename(e, &slot.endpoint))
            }
        }
    }

    fn acquire(&self, i: usize) -> Result<Permit, ClientError> {
        let slot = &self.inner.slots[i];
        lock(&slot.breaker)
            .try_acquire(self.now())
            .map_err(|_| ClientError::BreakerOpen {
                endpoint: slot.endpoint.clone(),
            })
    }

    /// The breaker state of each endpoint (for status output and tests).
    pub fn breaker_states(&self) -> Vec<(String, concord_core::breaker::BreakerState)> {
        let now = self.now();
        self.inner
            .slots
            .iter()
            .map(|s| (s.endpoint.clone(), lock(&s.breaker).state(now)))
            .collect()
    }

    /// Runs `f` with a channel, retrying per the options: after a transient failure (see
    /// [`ClientError::is_transient`]) on the next endpoint after a backoff, and, for requests
    /// that are not idempotent, only when the failure was definite. Only the endpoint's own
    /// failures count against its breaker. Returns the last error when every attempt
    /// failed.
    pub async fn call<T, F, Fut>(
        &self,
        idempotence: Idempotence,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let options = &self.inner.options;
        let n = self.inner.slots.len();
        let mut i = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut attempt = 0;
        loop {
            let result = self.attempt(i, &mut f).await;
            let err = match result {
                Ok(v) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => e,
            };
            attempt += 1;
            let may_retry =
                err.is_transient() && (err.is_definite() || idempotence == Idempotence::Idempotent);
            if attempt >= options.attempts.max(1) || !may_retry {
                return Err(err);
            }
            // Another endpoint may see a leader, or be reachable, where this one does not.
            i = (i + 1) % n;
            let delay = options
                .backoff
                .delay(attempt - 1, &mut *lock(&self.inner.rng));
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt<T, F, Fut>(&self, i: usize, f: &mut F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self.slot_channel(i).await?;
        let slot = &self.inner.slots[i];
        let permit = self.acquire(i)?;
        let outcome = match self.inner.options.request_timeout {
            Some(t) => match tokio::time::timeout(t, f(channel)).await {
                Ok(r) => r.map_err(ClientError::Rpc),
                Err(_) => Err(ClientError::Timeout {
                    endpoint: slot.endpoint.clone(),
                    timeout: t,
                }),
            },
            None => f(channel).await.map_err(ClientError::Rpc),
        };
        let mut breaker = lock(&slot.breaker);
        match outcome {
            Ok(r) => {
                breaker.on_success(permit, self.now());
                Ok(r.into_inner())
            }
            Err(e) if e.is_endpoint_failure() => {
                breaker.on_failure(permit, self.now());
                Err(e)
            }
            Err(e) => {
                // The endpoint answered: it is healthy even if the request was refused.
                breaker.on_success(permit, self.now());
                Err(e)
            }
        }
    }

    /// The leader's member id and a channel to it: the first endpoint that names a leader
    /// in its Status answers, and the leader's first client URL from that endpoint's
    /// member list.
    pub async fn leader(&self) -> Result<(NodeId, Channel), ClientError> {
        let timeout = self
            .inner
            .options
            .request_timeout
            .unwrap_or(Duration::from_secs(5));
        let mut last = ClientError::NoLeader("no endpoint answered".into());
        for i in 0..self.inner.slots.len() {
            let channel = match self.slot_channel(i).await {
                Ok(ch) => ch,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut maintenance = MaintenanceClient::new(channel.clone());
            let status =
                match tokio::time::timeout(timeout, maintenance.status(StatusRequest {})).await {
                    Ok(Ok(r)) => r.into_inner(),
                    Ok(Err(s)) => {
                        last = ClientError::Rpc(s);
                        continue;
                    }
                    Err(_) => continue,
                };
            if status.leader == 0 {
                last = ClientError::NoLeader(format!(
                    "{} knows no leader",
                    self.inner.slots[i].endpoint
                ));
                continue;
            }
            let leader = NodeId(status.leader);
            if status.header.map(|h| h.member_id) == Some(status.leader) {
                return Ok((leader, channel));
            }
            let mut cluster = ClusterClient::new(channel);
            let members = cluster.member_list(MemberListRequest {
                linearizable: false,
            });
            let members = match tokio::time::timeout(timeout, members).await {
                Ok(Ok(r)) => r.into_inner().members,
                Ok(Err(s)) => {
                    last = ClientError::Rpc(s);
                    continue;
                }
                Err(_) => continue,
            };
            let Some(url) = members
                .iter()
                .find(|m| m.id == status.leader)
                .and_then(|m| m.client_ur_ls.first())
            else {
                last = ClientError::NoLeader(format!("leader {leader} has no client URL yet"));
                continue;
            };
            match dial_with(url, self.inner.options.dial_timeout, &self.inner.dialer).await {
                Ok(ch) => return Ok((leader, ch)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// `e` naming `endpoint` as the user wrote it rather than the URL dialled.
fn rename(e: ClientError, endpoint: &str) -> ClientError {
    match e {
        ClientError::Connect { detail, .. } => ClientError::Connect {
            endpoint: endpoint.to_string(),
            detail,
        },
        ClientError::ConnectTimeout { timeout, .. } => ClientError::ConnectTimeout {
            endpoint: endpoint.to_string(),
            timeout,
        },
        other => other,
    }
}
