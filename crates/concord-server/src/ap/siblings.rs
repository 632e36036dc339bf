//! Buckets in siblings mode: concurrent writes of a key are all kept, as Riak keeps them,
//! instead of the last one winning.
//!
//! ```text
//! read:   R replicas ─▶ join ─▶ the values (one per write no other write saw) and the
//!         causal context (a version vector of every write the join holds)
//! write:  (context, value) ─▶ the coordinating replica replaces the values whose writes
//!         the context holds and adds the value under a new dot of its own; the state
//!         goes to the other replicas as for any write
//! ```
//!
//! Each key's values live in its state's dotted version vector set (concord-core's
//! `DvvSet`, inside `RedisValue`), so merges (read repair, hints, anti-entropy) keep
//! exactly the values no write has replaced. A write without a context adds a sibling; a
//! write with the context of a read replaces what that read returned, and nothing written
//! since. A delete is a write of no value.
//!
//! # Guarantees
//!
//! 1. No acknowledged write is lost unless a write whose context held it replaced it.
//! 2. A context from a client is checked ([`context_from_text`]): a malformed one is
//!    refused, never trusted into a panic or a dot counter that could wrap.

use base64::Engine;
use concord_core::clock::VectorClock;

use super::{Access, ApError, ApNode, Op};

/// Most entries a context from a client may have (one per replica that coordinated a
/// write of the key).
pub const MAX_CONTEXT_ENTRIES: usize = 256;
/// Largest counter a context from a client may hold: far above any real count of writes,
/// far below where a dot counter could wrap.
pub const MAX_CONTEXT_COUNTER: u64 = 1 << 48;

/// A context as it travels between members.
pub(crate) fn context_to_bytes(context: &VectorClock) -> Vec<u8> {
    // Serializing an in-memory value into a Vec cannot fail.
    postcard::to_allocvec(context).unwrap_or_default()
}

/// A context from [`context_to_bytes`] (empty: none), checked.
pub(crate) fn context_from_bytes(bytes: &[u8]) -> Result<VectorClock, String> {
    if bytes.is_empty() {
        return Ok(VectorClock::new());
    }
    let (context, rest): (VectorClock, _) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("undecodable causal context: {e}"))?;
    if !rest.is_empty() {
        return Err("causal context with trailing bytes".into());
    }
    if context.iter().count() > MAX_CONTEXT_ENTRIES {
        return Err(format!(
            "causal context of more than {MAX_CONTEXT_ENTRIES} entries"
        ));
    }
    if context
        .iter()
        .any(|(_, n)| n == 0 || n > MAX_CONTEXT_COUNTER)
    {
        return Err("causal context with a counter out of range".into());
    }
    Ok(context)
}

/// A context as clients see it: URL-safe base64 (empty for a key never written).
pub fn context_to_text(context: &VectorClock) -> String {
    if context.is_empty() {
        return String::new();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(context_to_bytes(context))
}

/// A context from a client (empty: a blind write), or what is wrong with it.
pub fn context_from_text(text: &[u8]) -> Result<VectorClock, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("causal context is not base64url: {e}"))?;
    context_from_bytes(&bytes)
}

/// What a read of a key in siblings mode returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Siblings {
    /// The values no other write has replaced (deletes left out), in dot order.
    pub values: Vec<Vec<u8>>,
    /// What a write of the key sends back to replace them.
    pub context: VectorClock,
}

impl ApNode {
    /// Whether `bucket` keeps siblings.
    pub fn keeps_siblings(&self, bucket: u8) -> bool {
        self.bucket(bucket).siblings
    }

    fn siblings_bucket(&self, bucket: u8) -> Result<(), ApError> {
        if self.keeps_siblings(bucket) {
            Ok(())
        } else {
            Err(ApError::Invalid(format!(
                "bucket {bucket} does not keep siblings (CONCORD.BUCKET SET {bucket} SIBLINGS \
                 yes)"
            )))
        }
    }

    /// Reads `key` of a bucket in siblings mode (at R, like any read).
    pub async fn sibling_get(&self, at: Access, key: &[u8]) -> Result<Siblings, ApError> {
        self.siblings_bucket(at.bucket)?;
        let state = self.read(at, key).await?.unwrap_or_default();
        let (values, context) = state.siblings();
        Ok(Siblings {
            values: values.into_iter().map(<[u8]>::to_vec).collect(),
            context: context.clone(),
        })
    }

    /// Writes `value` (`None`: deletes) to `key` of a bucket in siblings mode, replacing
    /// the values `context` saw (at W, like any write; not retried at another replica,
    /// which would make a second sibling).
    pub async fn sibling_put(
        &self,
        at: Access,
        key: &[u8],
        context: VectorClock,
        value: Option<Vec<u8>>,
    ) -> Result<(), ApError> {
        self.siblings_bucket(at.bucket)?;
        self.write(at, key, Op::SiblingPut { context, value })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_raft::NodeId;

    #[test]
    fn contexts_round_trip_and_bad_ones_are_refused() {
        let mut c = VectorClock::new();
        assert_eq!(context_to_text(&c), "");
        assert_eq!(context_from_text(b""), Ok(VectorClock::new()));
        c.increment(NodeId(7));
        c.increment(NodeId(7));
        c.increment(NodeId(9));
        assert_eq!(context_from_text(context_to_text(&c).as_bytes()), Ok(c));
        let mut huge = VectorClock::new();
        huge.add_dot(concord_core::clock::Dot::new(NodeId(1), u64::MAX));
        assert!(context_from_text(context_to_text(&huge).as_bytes()).is_err());
        for bad in [&b"!!"[..], b"AAAA", b"////"] {
            assert!(context_from_text(bad).is_err(), "{bad:?}");
        }
    }
}
