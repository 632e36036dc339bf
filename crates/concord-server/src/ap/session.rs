//! Session guarantees: a token that carries, per key a session has read or written, what
//! the session has seen of it ([`Seen`]), so that any coordinator can serve the session's
//! next request no older than that.
//!
//! ```text
//! read(key):   R replicas ─▶ join covers the token's floor for key? ─▶ reply
//!                          └▶ no: ask every owner, join, again until it does or the
//!                             deadline (TRYAGAIN: the data the session saw is not
//!                             reachable yet)
//! write(key):  the floor not covered by what the command read: read as above first, and
//!              the write is applied on top of that state (it supersedes what the
//!              session saw)
//! either:      the token's entry for key joins the state returned or written
//! ```
//!
//! # Guarantees (per key, for requests that carry the session)
//!
//! 1. **Read your writes and monotonic reads**: a read returns a state that holds every
//!    write the session had acknowledged and everything its earlier reads returned.
//! 2. **Monotonic writes and writes follow reads**: a write is applied on a state that holds
//!    the session's earlier writes and reads, so it supersedes them (for a register, its
//!    stamp is newer; for a counter or a set, it is added to them).
//! 3. A token remembers the [`MAX_SESSION_KEYS`] keys the session touched last; a key
//!    older than that has no floor (requests on it are served as without a session).
//! 4. A token read from a client is checked: a malformed one is refused, never trusted
//!    into a panic.
//!
//! What a write that failed (`TRYAGAIN`, unknown outcome) did is not in the token; a later
//! read may or may not see it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use concord_core::crdt::{Crdt, RedisValue, Seen};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Access, ApError, ApNode};

/// Keys a token remembers (the least recently touched is forgotten first).
pub const MAX_SESSION_KEYS: usize = 4096;
/// Longest token accepted, in characters.
pub const MAX_TOKEN_LEN: usize = 1 << 20;
const TOKEN_VERSION: u8 = 1;

/// A key of a bucket, as a token names it: a 64-bit hash (a collision can only make a
/// request wait for data it need not; it never lets one skip what it must see).
fn key_id(bucket: u8, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, u64::from(bucket))
}

/// What a session has seen, key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionToken {
    keys: HashMap<u64, (u64, Seen)>,
    /// Touch order → key id: the oldest first.
    recent: BTreeMap<u64, u64>,
    tick: u64,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    /// Oldest first.
    keys: Vec<(u64, Seen)>,
}

impl SessionToken {
    /// A session that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the session has seen of `key` (`None`: nothing it remembers).
    pub fn floor(&self, bucket: u8, key: &[u8]) -> Option<&Seen> {
        self.keys.get(&key_id(bucket, key)).map(|(_, s)| s)
    }

    /// Records that the session has seen `seen` of `key`.
    pub fn saw(&mut self, bucket: u8, key: &[u8], seen: &Seen) {
        self.note(key_id(bucket, key), seen);
    }

    fn note(&mut self, id: u64, seen: &Seen) {
        if seen.is_empty() && !self.keys.contains_key(&id) {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        let entry = self
            .keys
            .entry(id)
            .or_insert_with(|| (tick, Seen::default()));
        self.recent.remove(&entry.0);
        entry.0 = tick;
        entry.1.join(seen);
        self.recent.insert(tick, id);
        while self.keys.len() > MAX_SESSION_KEYS {
            let Some((_, oldest)) = self.recent.pop_first() else {
                break;
            };
            self.keys.remove(&oldest);
        }
    }

    /// Adds what `other` has seen (a token the client brought from another connection).
    pub fn join(&mut self, other: &SessionToken) {
        for id in other.recent.values() {
            if let Some((_, seen)) = other.keys.get(id) {
                self.note(*id, seen);
            }
        }
    }

    /// How many keys the token remembers.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The token as text a client keeps (URL-safe base64).
    pub fn encode(&self) -> String {
        let keys = self
            .recent
            .values()
            .filter_map(|id| self.keys.get(id).map(|(_, s)| (*id, s.clone())))
            .collect();
        let mut bytes = vec![TOKEN_VERSION];
        // Serializing an in-memory value into a Vec cannot fail.
        bytes.extend(postcard::to_allocvec(&Wire { keys }).unwrap_or_default());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token from [`SessionToken::encode`]'s text, or what is wrong with it.
    pub fn decode(text: &[u8]) -> Result<SessionToken, String> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "session token longer than {MAX_TOKEN_LEN} characters"
            ));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| format!("session token is not base64url: {e}"))?;
        let body = match bytes.split_first() {
            Some((&TOKEN_VERSION, body)) => body,
            Some((v, _)) => return Err(format!("session token of unknown version {v}")),
            None => return Err("empty session token".into()),
        };
        let wire: Wire =
            postcard::from_bytes(body).map_err(|e| format!("undecodable session token: {e}"))?;
        let mut token = SessionToken::new();
        for (id, seen) in &wire.keys {
            token.note(*id, seen);
        }
        Ok(token)
    }
}

/// How long one round of a covering read waits for the owners before it asks again.
const ROUND: Duration = Duration::from_millis(100);
/// The pause between two rounds.
const PAUSE: Duration = Duration::from_millis(10);

/// A session's number on this member ([`ApNode::open_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(u64);

/// The open sessions of a member's clients.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    next: AtomicU64,
    open: Mutex<HashMap<SessionId, SessionToken>>,
}

impl Sessions {
    fn with<T>(&self, id: SessionId, f: impl FnOnce(&mut SessionToken) -> T) -> Option<T> {
        // A token is plain data, consistent at any panic point.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get_mut(&id).map(f)
    }
}

/// An open session of this member; it ends when the guard is dropped.
#[derive(Debug)]
pub struct SessionGuard {
    node: ApNode,
    id: SessionId,
}

impl SessionGuard {
    /// The id that requests of this session carry in their [`Access`].
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// What the session has seen so far.
    pub fn token(&self) -> SessionToken {
        let sessions = &self.node.inner.sessions;
        sessions.with(self.id, |t| t.clone()).unwrap_or_default()
    }

    /// Adds what `token` has seen to the session.
    pub fn join(&self, token: &SessionToken) {
        self.node.inner.sessions.with(self.id, |t| t.join(token));
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let sessions = &self.node.inner.sessions;
        let mut open = sessions.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&self.id);
    }
}

impl ApNode {
    /// Starts a session that has seen nothing.
    pub fn open_session(&self) -> SessionGuard {
        let sessions = &self.inner.sessions;
        let id = SessionId(sessions.next.fetch_add(1, Ordering::Relaxed));
        let mut open = sessions.open.lock().unwrap_or_else(|e| e.into_inner());
        open.insert(id, SessionToken::new());
        SessionGuard {
            node: self.clone(),
            id,
        }
    }

    /// What the session of `at` has seen of `key`, if anything.
    pub(super) fn session_floor(&self, at: Access, key: &[u8]) -> Option<Seen> {
        let id = at.session?;
        let sessions = &self.inner.sessions;
        sessions
            .with(id, |t| t.floor(at.bucket, key).cloned())
            .flatten()
    }

    /// Records that the session of `at` has seen `state` of `key`.
    pub(super) fn session_saw(&self, at: Access, key: &[u8], state: Option<&RedisValue>) {
        if let (Some(id), Some(state)) = (at.session, state) {
            let seen = state.seen();
            self.inner
                .sessions
                .with(id, |t| t.saw(at.bucket, key, &seen));
        }
    }

    /// `start` joined with the states of `key`'s owners, asked in rounds until the join
    /// covers `floor` or the deadline passes.
    pub(super) async fn read_covering(
        &self,
        at: Access,
        key: &[u8],
        floor: &Seen,
        start: Option<RedisValue>,
    ) -> Result<Option<RedisValue>, ApError> {
        self.ring_ready()?;
        let deadline = Instant::now() + self.config().timeout;
        let bucket = at.bucket;
        let (mut owners, _) = self.placement(bucket, key);
        for earlier in self.earlier_owners(bucket, key) {
            if !owners.contains(&earlier) {
                owners.push(earlier);
            }
        }
        let mut joined = start;
        loop {
            let mut reads = JoinSet::new();
            for owner in &owners {
                let (node, owner, key) = (self.clone(), *owner, key.to_vec());
                reads.spawn(async move { node.read_at(owner, bucket, key).await });
            }
            let round_end = (Instant::now() + ROUND).min(deadline);
            while let Ok(Some(answer)) = tokio::time::timeout_at(round_end, reads.join_next()).await
            {
                if let Ok(Ok(Some(state))) = answer {
                    match &mut joined {
                        Some(j) => j.merge(&state),
                        None => joined = Some(state),
                    }
                }
                if joined.as_ref().is_some_and(|j| j.covers(floor)) {
                    return Ok(joined);
                }
            }
            if Instant::now() + PAUSE >= deadline {
                return Err(ApError::Unavailable(
                    "no replica reached holds what this session has already seen of the key \
                     (its writes or reads); try again"
                        .into(),
                ));
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::crdt::{RedisValue, SetExpiry};
    use concord_raft::NodeId;

    fn state(v: &str, t: u64) -> RedisValue {
        let mut s = RedisValue::new();
        s.set(v.into(), (t, NodeId(1)), NodeId(1), SetExpiry::Clear);
        s
    }

    #[test]
    fn a_token_round_trips_and_joins_per_key() {
        let mut a = SessionToken::new();
        a.saw(0, b"k", &state("1", 5).seen());
        a.saw(1, b"k", &state("2", 9).seen());
        a.saw(0, b"absent", &RedisValue::new().seen());
        assert_eq!(a.len(), 2, "nothing is kept for a key never written");
        let back = SessionToken::decode(a.encode().as_bytes()).unwrap();
        assert_eq!(back.floor(0, b"k"), Some(&state("1", 5).seen()));
        assert_eq!(back.floor(1, b"k"), Some(&state("2", 9).seen()));
        let mut b = SessionToken::new();
        b.saw(0, b"k", &state("3", 7).seen());
        b.join(&back);
        assert_eq!(
            b.floor(0, b"k"),
            Some(&state("3", 7).seen()),
            "the newer epoch"
        );
        assert!(b.floor(0, b"other").is_none());
    }

    #[test]
    fn the_least_recently_touched_key_is_forgotten_first() {
        let mut t = SessionToken::new();
        for i in 0..MAX_SESSION_KEYS as u64 {
            t.saw(0, &i.to_be_bytes(), &state("v", i + 1).seen());
        }
        // Touching key 0 makes key 1 the oldest.
        t.saw(0, &0u64.to_be_bytes(), &state("v", 1).seen());
        t.saw(0, b"new", &state("v", 1).seen());
        assert_eq!(t.len(), MAX_SESSION_KEYS);
        assert!(t.floor(0, &0u64.to_be_bytes()).is_some());
        assert!(t.floor(0, &1u64.to_be_bytes()).is_none());
        let back = SessionToken::decode(t.encode().as_bytes()).unwrap();
        assert_eq!(back, {
            let mut again = SessionToken::new();
            again.join(&t);
            again
        });
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = {
            let mut t = SessionToken::new();
            t.saw(0, b"k", &state("1", 5).seen());
            t.encode()
        };
        for bad in [
            &b""[..],
            b"!!!",
            b"AA",
            &good.as_bytes()[..good.len() - 3],
            &vec![b'A'; MAX_TOKEN_LEN + 1],
        ] {
            assert!(SessionToken::decode(bad).is_err(), "{bad:?}");
        }
        // Random bytes never panic.
        for seed in 0..2000u64 {
            let mut bytes = vec![TOKEN_VERSION];
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..(seed % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
            let _ = SessionToken::decode(text.as_bytes());
        }
    }
}
