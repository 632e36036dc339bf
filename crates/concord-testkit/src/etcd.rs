//! The independent `etcd-client` crate as tests use it: connecting, error text, and a client
//! that retries across nodes the way a real application does through a failover.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, Error, GetOptions, GetResponse, MemberAddResponse, PutOptions,
    PutResponse,
};

/// The `--initial-cluster` of a member just added as `name`, as etcd's `member add` prints
/// it: every member's `name=peer-url`, the new one under `name`.
pub fn initial_cluster_after_add(added: &MemberAddResponse, name: &str) -> String {
    let new_id = added.member().map(|m| m.id());
    added
        .member_list()
        .iter()
        .flat_map(|m| {
            let n = if Some(m.id()) == new_id {
                name
            } else {
                m.name()
            }
            .to_string();
            m.peer_urls()
                .iter()
                .map(move |u| format!("{n}={u}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects an etcd client to one endpoint (lazily; no request is made).
pub async fn connect(url: &str, timeout: Option<Duration>) -> Result<Client, Error> {
    let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    if let Some(t) = timeout {
        opts = opts.with_timeout(t);
    }
    Client::connect([url], Some(opts)).await
}

/// Text of an etcd-client error: `Code: message` for gRPC statuses.
pub fn err_text(e: &Error) -> String {
    match e {
        Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// Asserts that `r` failed with an error whose text contains `needle`; returns the error.
#[track_caller]
pub fn expect_err<T: Debug>(r: Result<T, Error>, needle: &str) -> Error {
    match r {
        Ok(v) => panic!("expected an error containing {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let text = err_text(&e);
            assert!(
                text.contains(needle),
                "expected an error containing {needle:?}, got {text:?}"
            );
            e
        }
    }
}

/// Clients of every node, trying them in turn: what a real client does across a failover.
#[derive(Clone)]
pub struct RetryClient {
    clients: Vec<Client>,
    next: usize,
}

/// Time budget of one [`RetryClient`] operation, across all retries.
pub const RETRY_BUDGET: Duration = Duration::from_secs(20);
/// Bound on one [`RetryClient`] attempt before it tries the next node. It is part of any
/// failover time measured through a `RetryClient`.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

impl RetryClient {
    /// A client that tries `clients` in turn, starting with the first.
    pub fn new(clients: Vec<Client>) -> Self {
        RetryClient { clients, next: 0 }
    }

    /// Puts, retrying on other nodes (each attempt bounded by [`ATTEMPT_TIMEOUT`]) for up to
    /// [`RETRY_BUDGET`]. A retried put may have been applied twice; callers use distinct
    /// keys/values so that does not matter.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<PutResponse, String> {
        self.retry(&format!("put {key}"), |mut c| async move {
            c.put(key, value, None::<PutOptions>).await
        })
        .await
    }

    /// Linearizable get (unless `opts` says otherwise), retried like [`RetryClient::put`].
    pub async fn get(
        &mut self,
        key: &str,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, String> {
        self.retry(&format!("get {key}"), |mut c| {
            let opts = opts.clone();
            async move { c.get(key, opts).await }
        })
        .await
    }

    /// Runs `attempt` on each node in turn until one succeeds or [`RETRY_BUDGET`] runs out.
    async fn retry<T, F, Fut>(&mut self, what: &str, mut attempt: F) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut last = String::new();
        while Instant::now() < deadline {
            let c = self.clients[self.next % self.clients.len()].clone();
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(c)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = err_text(&e),
                Err(_) => last = "attempt timed out".into(),
            }
            self.next += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "{what} failed for {RETRY_BUDGET:?}; last error: {last}"
        ))
    }
}
