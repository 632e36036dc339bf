//! A Redis string key as one state-based CRDT: what an AP bucket stores per key for
//! `SET`, `GET`, `DEL`, `INCR` and the expiry commands (`docs/ap.md` has the conflict
//! table this implements).
//!
//! * The **register** holds the last written bytes, or nothing (a tombstone after `DEL`),
//!   and the [`Stamp`] (HLC timestamp, node) of that write, which names an **epoch**. The
//!   greater stamp wins; a state of a newer epoch replaces an older one whole.
//! * Within an epoch, a **PN-counter** holds the increments made on top of the register's
//!   integer (0 when there is none), one entry per acting node.
//! * Within an epoch, a **multi-value register** holds the expiry: concurrent expiries both
//!   survive and resolve to the longest deadline, with "no expiry" (`PERSIST`) beating any.
//!
//! # Guarantees
//!
//! 1. `merge` is a join: commutative, associative, idempotent on the whole state.
//! 2. Operations only move a state up (an operation's result merged with the state before
//!    it is the result).
//! 3. Within one epoch the register's value never changes, so increments always apply to
//!    the value they were made on; a `SET` or `DEL` concurrent with an `INCR` wins (its
//!    epoch is newer than the one the increment was made in).
//! 4. `INCR` refuses a register that is not a Redis integer, and a result outside `i64`,
//!    leaving the state unchanged.

use serde::{Deserialize, Serialize};

use crate::crdt::{Crdt, MvRegister, PnCounter};
use crate::NodeId;

/// The order of register writes: (HLC timestamp, node), unique per write when each node's
/// HLC never repeats a timestamp.
pub type Stamp = (u64, NodeId);

/// A key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Expiry {
    /// Never (`PERSIST`, or a `SET` without a TTL).
    Never,
    /// At this physical time, in milliseconds since the Unix epoch.
    At(u64),
}

/// What a `SET` does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetExpiry {
    /// No expiry (a plain `SET`).
    Clear,
    /// Expire at this time (`EX`, `PX`, `EXAT`, `PXAT`), in ms since the Unix epoch.
    At(u64),
    /// Keep the current one (`KEEPTTL`).
    Keep,
}

/// Why an operation was refused (the state is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StringError {
    /// The value is not a Redis integer.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// The result would not fit a signed 64-bit integer.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
}

/// One Redis string key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RedisString {
    /// The epoch: the stamp of the last register write ((0, 0) before any).
    epoch: Stamp,
    /// The register; `None` before any write and after a `DEL`.
    value: Option<Vec<u8>>,
    /// Increments made in `epoch`.
    counter: PnCounter,
    /// Expiries set in `epoch` (empty: none).
    expiry: MvRegister<Expiry>,
}

/// Parses a Redis integer the way Redis's `string2ll` does: optional `-`, digits, no
/// leading zeros, no `+`, no spaces, within `i64`.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0";
    if !canonical {
        return None;
    }
    s.parse().ok()
}

impl RedisString {
    /// A key that was never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stamp of the current epoch.
    pub fn epoch(&self) -> Stamp {
        self.epoch
    }

    /// `SET`: a new epoch holding `value`, if `stamp` is newer than the current epoch (an
    /// older stamp lost already and changes nothing). `node` acts for the expiry.
    pub fn set(&mut self, value: Vec<u8>, stamp: Stamp, node: NodeId, expiry: SetExpiry) {
        let kept = self.expires_at();
        if !self.new_epoch(stamp, Some(value)) {
            return;
        }
        match expiry {
            SetExpiry::Clear => {}
            SetExpiry::At(at) => {
                self.expiry.assign(Expiry::At(at), node);
            }
            SetExpiry::Keep => {
                if let Some(at) = kept {
                    self.expiry.assign(Expiry::At(at), node);
                }
            }
        }
    }

    /// `DEL`: a new epoch holding a tombstone, if `stamp` is newer than the current epoch.
    pub fn delete(&mut self, stamp: Stamp) {
        self.new_epoch(stamp, None);
    }

    fn new_epoch(&mut self, stamp: Stamp, value: Option<Vec<u8>>) -> bool {
        if stamp <= self.epoch {
            return false;
        }
        *self = RedisString {
            epoch: stamp,
            value,
            counter: PnCounter::new(),
            expiry: MvRegister::new(),
        };
        true
    }

    /// Whether the state is a `DEL`'s tombstone and nothing more: written, no value, no
    /// increment since. Such a state reads as absent at any time, and removing it from
    /// every replica (tombstone collection) changes no answer.
    pub fn is_tombstone(&self) -> bool {
        *self != RedisString::new() && self.value.is_none() && self.counter == PnCounter::new()
    }

    /// Whether the key exists at `now_ms`.
    pub fn exists(&self, now_ms: u64) -> bool {
        let live = self.value.is_some() || self.counter != PnCounter::new();
        live && self.expires_at().is_none_or(|at| at > now_ms)
    }

    /// `GET` at `now_ms`: the bytes, or `None` when absent, deleted or expired.
    pub fn get(&self, now_ms: u64) -> Option<Vec<u8>> {
        if !self.exists(now_ms) {
            return None;
        }
        if self.counter == PnCounter::new() {
            return self.value.clone();
        }
        // Increments exist only in epochs whose register is an integer or empty.
        let base = self.value.as_deref().and_then(parse_integer).unwrap_or(0);
        Some(
            (i128::from(base) + self.counter.value())
                .to_string()
                .into_bytes(),
        )
    }

    /// `INCRBY delta` by `node` at `now_ms` (`stamp` starts a fresh epoch when the key has
    /// expired; it must be newer than [`RedisString::epoch`], as a stamp from an HLC that
    /// has observed this state is): the new value, or why not (the state is then unchanged).
    pub fn incr(
        &mut self,
        delta: i64,
        node: NodeId,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, StringError> {
        let current = if self.exists(now_ms) {
            let base = match &self.value {
                Some(bytes) => parse_integer(bytes).ok_or(StringError::NotInteger)?,
                None => 0,
            };
            i128::from(base) + self.counter.value()
        } else {
            0
        };
        let next = i64::try_from(current + i128::from(delta)).map_err(|_| StringError::Overflow)?;
        if !self.exists(now_ms) && (self.value.is_some() || self.counter != PnCounter::new()) {
            // Expired: the increment starts from nothing, in a new epoch.
            assert!(
                stamp > self.epoch,
                "incr on an expired key needs a newer stamp"
            );
            self.delete(stamp);
        }
        if delta == 0 && !self.exists(now_ms) {
            // `INCRBY k 0` creates the key with 0, as in Redis: one increment and one
            // decrement by `node` leave the sum alone but make the counter non-zero,
            // without a new epoch that would discard concurrent increments.
            self.counter.add(node, 1);
            self.counter.add(node, -1);
        }
        self.counter.add(node, delta);
        Ok(next)
    }

    /// `EXPIRE`/`PEXPIRE`/`EXPIREAT` (`Expiry::At`) or `PERSIST` (`Expiry::Never`) by `node`.
    pub fn expire(&mut self, expiry: Expiry, node: NodeId) {
        self.expiry.assign(expiry, node);
    }

    /// When the key expires: `None` for never. Concurrent expiries resolve to the longest,
    /// and `Never` beats any deadline.
    pub fn expires_at(&self) -> Option<u64> {
        let mut latest = None;
        for e in self.expiry.read() {
            match e {
                Expiry::Never => return None,
                Expiry::At(at) => latest = latest.max(Some(*at)),
            }
        }
        latest
    }
}

impl Crdt for RedisString {
    /// The value as `GET` would see it ignoring expiry.
    type Value = Option<Vec<u8>>;

    fn merge(&mut self, other: &Self) {
        match other.epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Greater => *self = other.clone(),
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                // One stamp names one write, so the values are equal; `max` keeps the
                // merge deterministic should a broken clock ever repeat a stamp.
                if other.value > self.value {
                    self.value = other.value.clone();
                }
                self.counter.merge(&other.counter);
                self.expiry.merge(&other.expiry);
            }
        }
    }

    fn value(&self) -> Option<Vec<u8>> {
        self.get(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn merged(a: &RedisString, b: &RedisString) -> RedisString {
        let ab = a.merged(b);
        assert_eq!(ab, b.merged(a), "merge must commute");
        ab
    }

    /// A key written once, copied to two replicas that then act concurrently.
    fn forked(setup: impl Fn(&mut RedisString)) -> (RedisString, RedisString) {
        let mut base = RedisString::new();
        setup(&mut base);
        (base.clone(), base)
    }

    #[test]
    fn only_a_delete_with_nothing_after_it_is_a_tombstone() {
        let mut k = RedisString::new();
        assert!(!k.is_tombstone(), "never written");
        k.set(b"v".to_vec(), (1, A), A, SetExpiry::Clear);
        assert!(!k.is_tombstone());
        k.delete((2, A));
        assert!(k.is_tombstone());
        k.incr(1, B, (3, B), 0).unwrap();
        assert!(
            !k.is_tombstone(),
            "an increment after the delete revives the key"
        );
        k.delete((4, B));
        k.expire(Expiry::At(10), A);
        assert!(
            k.is_tombstone() && !k.exists(0),
            "an expiry alone does not revive it"
        );
    }

    #[test]
    fn set_vs_set_the_greater_stamp_wins() {
        let (mut a, mut b) = forked(|_| {});
        a.set(b"a".to_vec(), (10, A), A, SetExpiry::Clear);
        b.set(b"b".to_vec(), (10, B), B, SetExpiry::Clear);
        assert_eq!(merged(&a, &b).get(0), Some(b"b".to_vec()));
        b.set(b"older".to_vec(), (5, B), B, SetExpiry::Clear);
        assert_eq!(
            b.get(0),
            Some(b"b".to_vec()),
            "an older stamp changes nothing"
        );
    }

    #[test]
    fn set_vs_incr_the_set_wins() {
        let (mut a, mut b) = forked(|k| k.set(b"5".to_vec(), (1, A), A, SetExpiry::Clear));
        assert_eq!(a.incr(3, A, (2, A), 0), Ok(8));
        b.set(b"x".to_vec(), (3, B), B, SetExpiry::Clear);
        assert_eq!(merged(&a, &b).get(0), Some(b"x".to_vec()));
    }

    #[test]
    fn incr_vs_incr_both_count() {
        let (mut a, mut b) = forked(|k| k.set(b"10".to_vec(), (1, A), A, SetExpiry::Clear));
        assert_eq!(a.incr(7, A, (2, A), 0), Ok(17));
        assert_eq!(b.incr(-3, B, (2, B), 0), Ok(7));
        let m = merged(&a, &b);
        assert_eq!(m.get(0), Some(b"14".to_vec()));
        // Increments on a key that never existed start from 0.
        let (mut a, mut b) = forked(|_| {});
        a.incr(1, A, (1, A), 0).unwrap();
        b.incr(1, B, (1, B), 0).unwrap();
        assert_eq!(merged(&a, &b).get(0), Some(b"2".to_vec()));
    }

    #[test]
    fn del_vs_incr_the_delete_wins_and_del_vs_set_by_stamp() {
        let (mut a, mut b) = forked(|k| {
            k.incr(5, A, (1, A), 0).unwrap();
        });
        a.incr(1, A, (2, A), 0).unwrap();
        b.delete((3, B));
        let m = merged(&a, &b);
        assert_eq!(m.get(0), None);
        assert!(!m.exists(0));
        // After the delete, increments count from 0 again.
        let mut after = m.clone();
        assert_eq!(after.incr(2, A, (4, A), 0), Ok(2));

        let (mut a, mut b) = forked(|k| k.set(b"v".to_vec(), (1, A), A, SetExpiry::Clear));
        a.delete((5, A));
        b.set(b"w".to_vec(), (6, B), B, SetExpiry::Clear);
        assert_eq!(merged(&a, &b).get(0), Some(b"w".to_vec()));
        let (mut a, mut b) = forked(|k| k.set(b"v".to_vec(), (1, A), A, SetExpiry::Clear));
        a.delete((7, A));
        b.set(b"w".to_vec(), (6, B), B, SetExpiry::Clear);
        assert_eq!(merged(&a, &b).get(0), None);
    }

    #[test]
    fn concurrent_expiries_keep_the_longest_and_persist_wins() {
        let (mut a, mut b) = forked(|k| k.set(b"v".to_vec(), (1, A), A, SetExpiry::Clear));
        a.expire(Expiry::At(1_000), A);
        b.expire(Expiry::At(5_000), B);
        let m = merged(&a, &b);
        assert_eq!(m.expires_at(), Some(5_000));
        assert!(m.exists(4_999));
        assert!(!m.exists(5_000));
        assert_eq!(m.get(5_000), None);

        let (mut a, mut b) = forked(|k| k.set(b"v".to_vec(), (1, A), A, SetExpiry::At(9_000)));
        a.expire(Expiry::At(1_000_000), A);
        b.expire(Expiry::Never, B);
        assert_eq!(merged(&a, &b).expires_at(), None);

        // Sequential expiries: the later replaces the earlier, even if shorter.
        let mut k = RedisString::new();
        k.set(b"v".to_vec(), (1, A), A, SetExpiry::At(9_000));
        k.expire(Expiry::At(2_000), A);
        assert_eq!(k.expires_at(), Some(2_000));
    }

    #[test]
    fn set_vs_expire_the_set_and_its_own_expiry_win() {
        let (mut a, mut b) = forked(|k| k.set(b"v".to_vec(), (1, A), A, SetExpiry::Clear));
        a.expire(Expiry::At(1_000), A);
        b.set(b"w".to_vec(), (2, B), B, SetExpiry::Clear);
        let m = merged(&a, &b);
        assert_eq!((m.get(2_000), m.expires_at()), (Some(b"w".to_vec()), None));
        // KEEPTTL keeps what this replica knew.
        let mut k = RedisString::new();
        k.set(b"v".to_vec(), (1, A), A, SetExpiry::At(3_000));
        k.set(b"w".to_vec(), (2, A), A, SetExpiry::Keep);
        assert_eq!(k.expires_at(), Some(3_000));
    }

    #[test]
    fn incr_refuses_non_integers_and_overflow_without_changing_anything() {
        let mut k = RedisString::new();
        k.set(b"abc".to_vec(), (1, A), A, SetExpiry::Clear);
        let before = k.clone();
        assert_eq!(k.incr(1, A, (2, A), 0), Err(StringError::NotInteger));
        assert_eq!(k, before);
        k.set(
            i64::MAX.to_string().into_bytes(),
            (3, A),
            A,
            SetExpiry::Clear,
        );
        let before = k.clone();
        assert_eq!(k.incr(1, A, (4, A), 0), Err(StringError::Overflow));
        assert_eq!(k, before);
        assert_eq!(
            StringError::NotInteger.to_string(),
            "ERR value is not an integer or out of range"
        );
        // An expired key counts from 0 in a fresh epoch.
        let mut k = RedisString::new();
        k.set(b"abc".to_vec(), (1, A), A, SetExpiry::At(100));
        assert_eq!(k.incr(4, A, (2, A), 200), Ok(4));
        assert_eq!(k.get(200), Some(b"4".to_vec()));
    }

    #[test]
    fn redis_integers_parse_as_string2ll_does() {
        for ok in [
            "0",
            "-1",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert!(parse_integer(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in [
            "",
            "-",
            "+1",
            " 1",
            "1 ",
            "01",
            "-0",
            "1.5",
            "9223372036854775808",
            "x",
        ] {
            assert_eq!(parse_integer(bad.as_bytes()), None, "{bad}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u64),
        Del(u64),
        Incr(i8),
        Expire(Option<u16>),
        Merge(usize),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, 0..20u64).prop_map(|(v, t)| Op::Set(v, t)),
            (0..20u64).prop_map(Op::Del),
            any::<i8>().prop_map(Op::Incr),
            prop::option::of(any::<u16>()).prop_map(Op::Expire),
            (0..3usize).prop_map(Op::Merge),
        ]
    }

    /// Three replicas acting and merging at random.
    fn run(ops: &[(usize, Op)]) -> Vec<RedisString> {
        let mut replicas = vec![RedisString::new(); 3];
        for (step, (i, op)) in ops.iter().enumerate() {
            let node = NodeId(*i as u64 + 1);
            let before = replicas[*i].clone();
            match op {
                Op::Set(v, t) => {
                    replicas[*i].set(vec![b'0' + v], (*t, node), node, SetExpiry::Clear)
                }
                Op::Del(t) => replicas[*i].delete((*t, node)),
                Op::Incr(d) => {
                    let stamp = (1000 + step as u64, node);
                    let _ = replicas[*i].incr(i64::from(*d), node, stamp, 0);
                }
                Op::Expire(e) => replicas[*i].expire(
                    e.map_or(Expiry::Never, |at| Expiry::At(u64::from(at))),
                    node,
                ),
                Op::Merge(j) => {
                    let other = replicas[*j].clone();
                    replicas[*i].merge(&other);
                }
            }
            // Guarantee 2: an operation only moves the state up.
            let after = replicas[*i].clone();
            assert_eq!(after.merged(&before), after);
        }
        replicas
    }

    proptest! {
        /// Guarantee 1 on states reached by random operations and merges.
        #[test]
        fn merge_is_a_join(ops in prop::collection::vec((0..3usize, arb_op()), 0..40)) {
            let r = run(&ops);
            let (a, b, c) = (&r[0], &r[1], &r[2]);
            prop_assert_eq!(a.merged(b), b.merged(a));
            prop_assert_eq!(a.merged(b).merged(c), a.merged(&b.merged(c)));
            prop_assert_eq!(a.merged(a), a.clone());
            // Replicas that exchange everything agree.
            let all = a.merged(b).merged(c);
            prop_assert_eq!(c.merged(a).merged(b), all);
        }
    }
}
