//! A Redis key as one state-based CRDT: what an AP bucket stores per key for the string,
//! counter, set and expiry commands (`docs/ap.md` has the conflict table this implements).
//!
//! * The **register** holds the last written bytes, or nothing (a tombstone after `DEL`),
//!   and the [`Stamp`] (HLC timestamp, node) of that write, which names an **epoch**. The
//!   greater stamp wins; a state of a newer epoch replaces an older one whole.
//! * Within an epoch, a **PN-counter** holds the increments made on top of the register's
//!   integer (0 when there is none), one entry per acting node.
//! * Within an epoch, an **add-wins OR-set** holds the members of a Redis set (`SADD`,
//!   `SREM`), and an **observed-remove map** the fields of a Redis hash (`HSET`, `HDEL`),
//!   each field a [`HashField`]: a register whose writes start field epochs, and a counter
//!   (`HINCRBY`). The state keeps the HLC time of the latest remove of either (tombstone
//!   collection counts its grace period from the last write of any kind).
//! * Within an epoch, a **multi-value register** holds the expiry: concurrent expiries both
//!   survive and resolve to the longest deadline, with "no expiry" (`PERSIST`) beating any.
//!
//! The key's **type** is a string when the register holds bytes or the counter is not zero,
//! else a hash when it has fields, else a set when it has members, else the key does not
//! exist. Two types can only meet in one epoch when writes of each, each on a key its
//! replica saw as absent, were concurrent; the type first in that order then wins
//! (deterministically, on every replica), and the other's contents stay hidden until a
//! `SET` or `DEL` starts a new epoch.
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
//!    leaving the state unchanged; string operations refuse a set and set operations a
//!    string ([`ValueError::WrongType`]).
//! 5. `SREM` removes only the adds of a member its replica has seen; an add concurrent with
//!    it survives (add wins), and no merge brings a removed add back. `HDEL` likewise for
//!    the writes of a field: a concurrent `HSET` or `HINCRBY` of the field survives it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clock::{Dot, DvvSet, VectorClock};
use crate::crdt::{Crdt, DotContext, MvRegister, OrMap, OrSet, PnCounter};
use crate::NodeId;

/// The order of register writes: (HLC timestamp, node), unique per write when each node's
/// HLC never repeats a timestamp.
pub type Stamp = (u64, NodeId);

/// What a state of a key has seen, in brief: its epoch and, per node that acted in that
/// epoch, how far its events go (increments, decrements, and the newest dot of its expiry,
/// set, hash and sibling events; a remove counts as an event). A few dozen bytes where the state may
/// hold megabytes, it is what a session token keeps per key ([`RedisValue::covers`]).
///
/// It is exact for states made by this module's operations, each node acting on its own
/// state: a node's events in one epoch are made one after another on a state holding all
/// its earlier ones, so a state holding a node's newest event holds all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Seen {
    epoch: Stamp,
    nodes: BTreeMap<NodeId, [u64; 6]>,
}

impl Seen {
    /// Whether nothing was seen (a key never written).
    pub fn is_empty(&self) -> bool {
        *self == Seen::default()
    }

    /// The summary of the join of the states `self` and `other` summarise.
    pub fn join(&mut self, other: &Seen) {
        match other.epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Greater => *self = other.clone(),
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                for (node, theirs) in &other.nodes {
                    let mine = self.nodes.entry(*node).or_default();
                    for (m, t) in mine.iter_mut().zip(theirs) {
                        *m = (*m).max(*t);
                    }
                }
            }
        }
    }
}

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
pub enum ValueError {
    /// The key holds another type.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// `HINCRBY` on a field that is not a Redis integer.
    #[error("ERR hash value is not an integer")]
    HashNotInteger,
    /// The value is not a Redis integer.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// The result would not fit a signed 64-bit integer.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
}

/// The type of a key that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (bytes or a counter).
    String,
    /// A set.
    Set,
    /// A hash.
    Hash,
    /// Sibling values (a key of a bucket in siblings mode).
    Siblings,
}

/// One Redis key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RedisValue {
    /// The epoch: the stamp of the last register write ((0, 0) before any).
    epoch: Stamp,
    /// The register; `None` before any write and after a `DEL`.
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    /// Increments made in `epoch`.
    counter: PnCounter,
    /// Expiries set in `epoch` (empty: none).
    expiry: MvRegister<Expiry>,
    /// Set members added in `epoch`.
    set: OrSet<Vec<u8>>,
    /// Hash fields written in `epoch`.
    hash: OrMap<Vec<u8>, HashField>,
    /// HLC time of the latest `SREM` or `HDEL` in `epoch` that removed something (0: none).
    removed: u64,
    /// Sibling values written in `epoch` with a causal context (buckets in siblings mode):
    /// each write replaces the values its context saw, concurrent ones are all kept; `None`
    /// is a delete.
    siblings: DvvSet<Option<Vec<u8>>>,
}

/// One field of a Redis hash: the string key's register and counter, without expiry. A
/// write (`HSET`) starts an epoch named by its stamp, the greater stamp wins; `HINCRBY`
/// adds to the epoch's counter, so concurrent increments all count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HashField {
    epoch: Stamp,
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    counter: PnCounter,
}

impl HashField {
    /// The field's value: the register's bytes, or its integer plus the increments.
    pub fn get(&self) -> Vec<u8> {
        counted(&self.value, &self.counter)
    }

    fn set(&mut self, value: Vec<u8>, stamp: Stamp) {
        if stamp > self.epoch {
            *self = HashField {
                epoch: stamp,
                value: Some(value),
                counter: PnCounter::new(),
            };
        }
    }
}

/// A register with the increments of its epoch, as `GET` and `HGET` read it: the bytes when
/// nothing was added, else the register's integer (0 when empty; increments exist only on
/// an integer or an empty register) plus the counter, exactly.
fn counted(value: &Option<Vec<u8>>, counter: &PnCounter) -> Vec<u8> {
    if *counter == PnCounter::new() {
        return value.clone().unwrap_or_default();
    }
    let base = value.as_deref().and_then(parse_integer).unwrap_or(0);
    (i128::from(base) + counter.value())
        .to_string()
        .into_bytes()
}

impl Crdt for HashField {
    type Value = Vec<u8>;

    fn merge(&mut self, other: &Self) {
        match other.epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Greater => *self = other.clone(),
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                if other.value > self.value {
                    self.value = other.value.clone();
                }
                self.counter.merge(&other.counter);
            }
        }
    }

    fn value(&self) -> Vec<u8> {
        self.get()
    }
}

/// The fields of a key that never held set members, in the order of the first encoding
/// (before sets existed): what [`RedisValue::string_layout`] gives and
/// [`RedisValue::from`] takes, so that such keys keep their bytes.
#[derive(Debug, Serialize)]
pub struct StringLayoutRef<'a> {
    epoch: &'a Stamp,
    #[serde(with = "serde_bytes")]
    value: &'a Option<Vec<u8>>,
    counter: &'a PnCounter,
    expiry: &'a MvRegister<Expiry>,
}

/// [`StringLayoutRef`], decoded.
#[derive(Debug, Deserialize)]
pub struct StringLayout {
    epoch: Stamp,
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    counter: PnCounter,
    expiry: MvRegister<Expiry>,
}

impl From<StringLayout> for RedisValue {
    fn from(l: StringLayout) -> Self {
        RedisValue {
            epoch: l.epoch,
            value: l.value,
            counter: l.counter,
            expiry: l.expiry,
            set: OrSet::new(),
            hash: OrMap::new(),
            removed: 0,
            siblings: DvvSet::new(),
        }
    }
}

/// The fields of a key that never held siblings, in the order of the second encoding
/// (before siblings existed): what [`RedisValue::collections_layout`] gives and
/// [`RedisValue::from`] takes, so that such keys keep their bytes.
#[derive(Debug, Serialize)]
pub struct CollectionsLayoutRef<'a> {
    epoch: &'a Stamp,
    #[serde(with = "serde_bytes")]
    value: &'a Option<Vec<u8>>,
    counter: &'a PnCounter,
    expiry: &'a MvRegister<Expiry>,
    set: &'a OrSet<Vec<u8>>,
    hash: &'a OrMap<Vec<u8>, HashField>,
    removed: u64,
}

/// [`CollectionsLayoutRef`], decoded.
#[derive(Debug, Deserialize)]
pub struct CollectionsLayout {
    epoch: Stamp,
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    counter: PnCounter,
    expiry: MvRegister<Expiry>,
    set: OrSet<Vec<u8>>,
    hash: OrMap<Vec<u8>, HashField>,
    removed: u64,
}

impl From<CollectionsLayout> for RedisValue {
    fn from(l: CollectionsLayout) -> Self {
        RedisValue {
            epoch: l.epoch,
            value: l.value,
            counter: l.counter,
            expiry: l.expiry,
            set: l.set,
            hash: l.hash,
            removed: l.removed,
            siblings: DvvSet::new(),
        }
    }
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

impl RedisValue {
    /// A key that was never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stamp of the current epoch.
    pub fn epoch(&self) -> Stamp {
        self.epoch
    }

    /// HLC time of the last write this state records: its epoch, or a later `SREM`. A
    /// tombstone's grace period counts from here.
    pub fn last_write(&self) -> u64 {
        self.epoch.0.max(self.removed)
    }

    /// This state's [`Seen`].
    pub fn seen(&self) -> Seen {
        let mut nodes: BTreeMap<NodeId, [u64; 6]> = BTreeMap::new();
        for (node, n) in self.counter.increments().iter() {
            nodes.entry(node).or_default()[0] = n;
        }
        for (node, n) in self.counter.decrements().iter() {
            nodes.entry(node).or_default()[1] = n;
        }
        let contexts = [
            self.expiry.context(),
            self.set.context(),
            self.hash.context(),
        ];
        for (i, context) in contexts.into_iter().enumerate() {
            let clock = context.clock().iter().map(|(node, _)| node);
            let cloud = context.cloud().iter().map(|d| d.node);
            for node in clock.chain(cloud) {
                nodes.entry(node).or_default()[2 + i] = context.max_counter(node);
            }
        }
        for (node, n) in self.siblings.context().iter() {
            nodes.entry(node).or_default()[5] = n;
        }
        Seen {
            epoch: self.epoch,
            nodes,
        }
    }

    /// Whether `node` has acted in this state's epoch (an increment, a dot of an expiry,
    /// set, hash or sibling event): its events live on in this state, and a node that lost
    /// it must not act on the key again under the same identity (it would reuse counts and
    /// dots that others hold).
    pub fn acted(&self, node: NodeId) -> bool {
        self.seen().nodes.contains_key(&node)
    }

    /// Whether this state holds everything a state summarised by `seen` held (merging
    /// that state in would change nothing): a newer epoch, or the same one with every
    /// node's events up to those of `seen`.
    pub fn covers(&self, seen: &Seen) -> bool {
        match self.epoch.cmp(&seen.epoch) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => seen.nodes.iter().all(|(node, [inc, dec, e, s, h, v])| {
                let holds = |context: &DotContext, counter: u64| {
                    counter == 0 || context.contains(Dot::new(*node, counter))
                };
                self.counter.increments().count(*node) >= *inc
                    && self.counter.decrements().count(*node) >= *dec
                    && holds(self.expiry.context(), *e)
                    && holds(self.set.context(), *s)
                    && holds(self.hash.context(), *h)
                    && self.siblings.context().get(*node) >= *v
            }),
        }
    }

    /// The state in the second encoding's layout, when it holds nothing of siblings.
    pub fn collections_layout(&self) -> Option<CollectionsLayoutRef<'_>> {
        (self.siblings == DvvSet::new()).then_some(CollectionsLayoutRef {
            epoch: &self.epoch,
            value: &self.value,
            counter: &self.counter,
            expiry: &self.expiry,
            set: &self.set,
            hash: &self.hash,
            removed: self.removed,
        })
    }

    /// The state in the first encoding's layout, when it holds nothing of a set, a hash or
    /// siblings.
    pub fn string_layout(&self) -> Option<StringLayoutRef<'_>> {
        let plain = self.set == OrSet::new()
            && self.hash == OrMap::new()
            && self.removed == 0
            && self.siblings == DvvSet::new();
        plain.then_some(StringLayoutRef {
            epoch: &self.epoch,
            value: &self.value,
            counter: &self.counter,
            expiry: &self.expiry,
        })
    }

    // Whether the register or the counter holds something.
    fn string_live(&self) -> bool {
        self.value.is_some() || self.counter != PnCounter::new()
    }

    /// The key's type at `now_ms`, `None` when it does not exist.
    pub fn kind(&self, now_ms: u64) -> Option<Kind> {
        if !self.exists(now_ms) {
            None
        } else if self.string_live() {
            Some(Kind::String)
        } else if !self.hash.is_empty() {
            Some(Kind::Hash)
        } else if !self.set.is_empty() {
            Some(Kind::Set)
        } else {
            Some(Kind::Siblings)
        }
    }

    // Refuses a key that exists with another type than `want`.
    fn check_kind(&self, want: Kind, now_ms: u64) -> Result<(), ValueError> {
        match self.kind(now_ms) {
            Some(k) if k != want => Err(ValueError::WrongType),
            _ => Ok(()),
        }
    }

    /// Before a write that creates the key when it is absent at `now_ms`: an expired key,
    /// or an absent one whose epoch still carries an expiry, starts a fresh epoch at
    /// `stamp` (newer than [`RedisValue::epoch`]), so that nothing of its earlier life
    /// (values, members, deadline) carries over. A never-written or deleted key stays in
    /// its epoch, where concurrent creations (increments, adds) all count.
    fn revive(&mut self, stamp: Stamp, now_ms: u64) {
        let leftovers = self.string_live()
            || !self.set.is_empty()
            || !self.hash.is_empty()
            || !self.expiry.is_empty();
        if !self.exists(now_ms) && leftovers {
            // A stamp not above the epoch (only a corrupt or hostile state can make the
            // caller's stamp so) revives nothing: `delete` ignores it.
            self.delete(stamp);
        }
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
        *self = RedisValue {
            epoch: stamp,
            value,
            ..RedisValue::default()
        };
        true
    }

    /// `SADD` by `node` at `now_ms` (`stamp` starts a fresh epoch when the key has expired;
    /// it must be newer than [`RedisValue::epoch`]): how many members were not there. Every
    /// member given gets a new add, also one already present, so that the add wins over a
    /// concurrent remove of it.
    pub fn sadd(
        &mut self,
        members: &[Vec<u8>],
        node: NodeId,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        self.check_kind(Kind::Set, now_ms)?;
        self.revive(stamp, now_ms);
        let mut added = 0;
        for m in members {
            added += i64::from(!self.set.contains(m));
            self.set.add(m.clone(), node);
        }
        Ok(added)
    }

    /// `SREM` at `now_ms` by the node and HLC time of `stamp`: how many of `members` were
    /// removed. Removes the adds of them this state has seen, no others.
    pub fn srem(
        &mut self,
        members: &[Vec<u8>],
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        self.check_kind(Kind::Set, now_ms)?;
        if !self.exists(now_ms) {
            return Ok(0);
        }
        let removed = members.iter().filter(|m| self.set.remove(m)).count();
        if removed > 0 {
            self.set.mark(stamp.1);
        }
        Ok(self.note_removed(removed, stamp.0))
    }

    /// Records a remove of `count` members or fields at HLC time `at` (the time tombstone
    /// collection counts from); returns the count.
    fn note_removed(&mut self, count: usize, at: u64) -> i64 {
        if count > 0 {
            self.removed = self.removed.max(at);
        }
        count as i64
    }

    /// A `*STORE` command's result: a new epoch at `stamp` holding exactly `members` (none:
    /// the key is deleted), if `stamp` is newer than the current epoch.
    pub fn replace_set(&mut self, members: &[Vec<u8>], stamp: Stamp, node: NodeId) {
        if self.new_epoch(stamp, None) {
            for m in members {
                self.set.add(m.clone(), node);
            }
        }
    }

    /// The set's members when the key is a set at `now_ms`; an empty set when it does not
    /// exist; [`ValueError::WrongType`] when it is a string.
    pub fn members(&self, now_ms: u64) -> Result<BTreeSet<&[u8]>, ValueError> {
        match self.kind(now_ms) {
            Some(Kind::Set) => Ok(self.set.elements().map(Vec::as_slice).collect()),
            Some(_) => Err(ValueError::WrongType),
            None => Ok(BTreeSet::new()),
        }
    }

    /// `HSET` (and `HMSET`) by `node` at `now_ms`: how many of the fields are new. A field
    /// given twice takes its last value. Each field's write is stamped after that field's
    /// own epoch, so it supersedes what this replica has seen of it.
    pub fn hset(
        &mut self,
        pairs: &[(Vec<u8>, Vec<u8>)],
        node: NodeId,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        self.check_kind(Kind::Hash, now_ms)?;
        self.revive(stamp, now_ms);
        let last: BTreeMap<&Vec<u8>, &Vec<u8>> = pairs.iter().map(|(f, v)| (f, v)).collect();
        let mut created = 0;
        for (field, value) in last {
            created += i64::from(!self.hash.contains_key(field));
            self.hash.update(field.clone(), node, |f| {
                let at = (stamp.0.max(f.epoch.0.saturating_add(1)), stamp.1);
                f.set(value.clone(), at);
            });
        }
        Ok(created)
    }

    /// `HSETNX`: sets `field` only when the hash does not have it; whether it did.
    pub fn hsetnx(
        &mut self,
        field: &[u8],
        value: &[u8],
        node: NodeId,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        if self.hfield(field, now_ms)?.is_some() {
            return Ok(0);
        }
        self.hset(&[(field.to_vec(), value.to_vec())], node, stamp, now_ms)
    }

    /// `HDEL` by the node and HLC time of `stamp`: how many of `fields` were removed (only
    /// the writes of them this replica has seen).
    pub fn hdel(
        &mut self,
        fields: &[Vec<u8>],
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        self.check_kind(Kind::Hash, now_ms)?;
        if !self.exists(now_ms) {
            return Ok(0);
        }
        let removed = fields.iter().filter(|f| self.hash.remove(f)).count();
        if removed > 0 {
            self.hash.mark(stamp.1);
        }
        Ok(self.note_removed(removed, stamp.0))
    }

    /// `HINCRBY` by `node` at `now_ms`: the field's new value. Refuses a field that is not
    /// an integer and a result outside `i64`, changing nothing.
    pub fn hincrby(
        &mut self,
        field: &[u8],
        delta: i64,
        node: NodeId,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        let current = match self.hfield(field, now_ms)? {
            None => 0,
            Some(v) => i128::from(parse_integer(&v).ok_or(ValueError::HashNotInteger)?),
        };
        let next = i64::try_from(current + i128::from(delta)).map_err(|_| ValueError::Overflow)?;
        self.revive(stamp, now_ms);
        self.hash.update(field.to_vec(), node, |f| {
            if f.value.is_none() && f.counter == PnCounter::new() && delta == 0 {
                // `HINCRBY h f 0` creates the field with 0 (as `INCRBY k 0` does).
                f.counter.add(node, 1);
                f.counter.add(node, -1);
            }
            f.counter.add(node, delta);
        });
        Ok(next)
    }

    /// The hash's fields and values at `now_ms` (empty when the key does not exist);
    /// [`ValueError::WrongType`] for another type.
    pub fn hfields(&self, now_ms: u64) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ValueError> {
        match self.kind(now_ms) {
            Some(Kind::Hash) => Ok(self
                .hash
                .keys()
                .filter_map(|k| self.hash.get(k).map(|f| (k.clone(), f.get())))
                .collect()),
            Some(_) => Err(ValueError::WrongType),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The value of one hash field at `now_ms`.
    pub fn hfield(&self, field: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, ValueError> {
        match self.kind(now_ms) {
            Some(Kind::Hash) => Ok(self.hash.get(&field.to_vec()).map(|f| f.get())),
            Some(_) => Err(ValueError::WrongType),
            None => Ok(None),
        }
    }

    /// Whether `member` is in the set at `now_ms` (false when the key does not exist).
    pub fn is_member(&self, member: &[u8], now_ms: u64) -> Result<bool, ValueError> {
        match self.kind(now_ms) {
            Some(Kind::Set) => Ok(self.set.contains(&member.to_vec())),
            Some(_) => Err(ValueError::WrongType),
            None => Ok(false),
        }
    }

    /// Whether the state is a `DEL`'s tombstone and nothing more: written, no value, no
    /// increment since. Such a state reads as absent at any time, and removing it from
    /// every replica (tombstone collection) changes no answer.
    /// A key that ever held siblings is never one: its deletes carry no time to count a
    /// grace period from, and its causal context is what keeps an older value from coming
    /// back.
    pub fn is_tombstone(&self) -> bool {
        *self != RedisValue::new()
            && !self.string_live()
            && self.set.is_empty()
            && self.hash.is_empty()
            && self.siblings == DvvSet::new()
    }

    /// Whether the key exists at `now_ms`.
    pub fn exists(&self, now_ms: u64) -> bool {
        let live = self.string_live()
            || !self.set.is_empty()
            || !self.hash.is_empty()
            || self.siblings.values().any(Option::is_some);
        live && self.expires_at().is_none_or(|at| at > now_ms)
    }

    /// A write of a bucket in siblings mode, coordinated by `node`: `value` (`None`: a
    /// delete) replaces the values whose writes `context` (what the client read) holds;
    /// values it did not see stay as siblings. An empty context adds a sibling.
    pub fn sibling_put(&mut self, context: &VectorClock, value: Option<Vec<u8>>, node: NodeId) {
        self.siblings.update(context, node, value);
    }

    /// The sibling values (deletes left out) and the causal context a client sends back
    /// with its next write of the key.
    pub fn siblings(&self) -> (Vec<&[u8]>, &VectorClock) {
        let values = self
            .siblings
            .values()
            .filter_map(Option::as_deref)
            .collect();
        (values, self.siblings.context())
    }

    /// `GET` at `now_ms`: the bytes, or `None` when absent, deleted, expired or not a
    /// string (see [`RedisValue::kind`]).
    pub fn get(&self, now_ms: u64) -> Option<Vec<u8>> {
        if self.kind(now_ms) != Some(Kind::String) {
            return None;
        }
        Some(counted(&self.value, &self.counter))
    }

    /// `INCRBY delta` by `node` at `now_ms` (`stamp` starts a fresh epoch when the key has
    /// expired; it must be newer than [`RedisValue::epoch`], as a stamp from an HLC that
    /// has observed this state is): the new value, or why not (the state is then unchanged).
    pub fn incr(
        &mut self,
        delta: i64,
        node: NodeId,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<i64, ValueError> {
        self.check_kind(Kind::String, now_ms)?;
        let current = if self.exists(now_ms) {
            let base = match &self.value {
                Some(bytes) => parse_integer(bytes).ok_or(ValueError::NotInteger)?,
                None => 0,
            };
            i128::from(base) + self.counter.value()
        } else {
            0
        };
        let next = i64::try_from(current + i128::from(delta)).map_err(|_| ValueError::Overflow)?;
        // Expired: the increment starts from nothing, in a new epoch.
        self.revive(stamp, now_ms);
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

impl Crdt for RedisValue {
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
                self.set.merge(&other.set);
                self.hash.merge(&other.hash);
                self.removed = self.removed.max(other.removed);
                self.siblings.sync(&other.siblings);
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

    fn merged(a: &RedisValue, b: &RedisValue) -> RedisValue {
        let ab = a.merged(b);
        assert_eq!(ab, b.merged(a), "merge must commute");
        ab
    }

    /// A key written once, copied to two replicas that then act concurrently.
    fn forked(setup: impl Fn(&mut RedisValue)) -> (RedisValue, RedisValue) {
        let mut base = RedisValue::new();
        setup(&mut base);
        (base.clone(), base)
    }

    #[test]
    fn siblings_keep_concurrent_writes_and_a_write_with_context_replaces_them() {
        let blind = VectorClock::new();
        let (mut a, mut b) = forked(|_| {});
        a.sibling_put(&blind, Some(m("x")), A);
        b.sibling_put(&blind, Some(m("y")), B);
        let both = merged(&a, &b);
        assert_eq!(both.siblings().0, [b"x".as_slice(), b"y"]);
        assert_eq!(both.kind(0), Some(Kind::Siblings));
        assert!(both.exists(0) && !both.is_tombstone());
        // A write with the context of that read replaces both; a write concurrent with it
        // (made on a state that had seen only x) stays beside it.
        let mut c = both.clone();
        c.sibling_put(both.siblings().1, Some(m("z")), A);
        // (B acts on its own replica, which holds y.)
        let mut d = b.clone();
        d.sibling_put(a.siblings().1, Some(m("w")), B);
        let all = merged(&merged(&c, &d), &both);
        assert_eq!(all.siblings().0, [b"z".as_slice(), b"w"]);
        // A delete with the context of everything leaves no value, yet the key keeps its
        // history (never a collectable tombstone).
        let mut gone = all.clone();
        gone.sibling_put(all.siblings().1, None, B);
        assert!(gone.siblings().0.is_empty());
        assert!(!gone.exists(0) && !gone.is_tombstone());
        assert!(gone.covers(&all.seen()) && !all.covers(&gone.seen()));
    }

    #[test]
    fn a_remove_is_seen_only_by_states_that_hold_it() {
        let mut a = RedisValue::new();
        a.sadd(&[m("x"), m("y")], A, (1, A), 0).unwrap();
        let mut b = a.clone();
        assert!(b.covers(&a.seen()) && a.covers(&b.seen()));
        b.srem(&[m("x")], (2, B), 0).unwrap();
        assert!(!a.covers(&b.seen()), "a still holds x");
        assert!(b.covers(&a.seen()));
        // A later remove of another member by A does not stand for B's.
        a.srem(&[m("y")], (3, A), 0).unwrap();
        assert!(!a.covers(&b.seen()));
        assert!(a.merged(&b).covers(&b.seen()));
        // A newer epoch covers everything before it.
        let mut c = a.clone();
        c.delete((4, A));
        assert!(c.covers(&b.seen()) && !b.covers(&c.seen()));
        assert!(RedisValue::new().covers(&Seen::default()));
    }

    #[test]
    fn only_a_delete_with_nothing_after_it_is_a_tombstone() {
        let mut k = RedisValue::new();
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
        let mut k = RedisValue::new();
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
        let mut k = RedisValue::new();
        k.set(b"v".to_vec(), (1, A), A, SetExpiry::At(3_000));
        k.set(b"w".to_vec(), (2, A), A, SetExpiry::Keep);
        assert_eq!(k.expires_at(), Some(3_000));
    }

    #[test]
    fn incr_refuses_non_integers_and_overflow_without_changing_anything() {
        let mut k = RedisValue::new();
        k.set(b"abc".to_vec(), (1, A), A, SetExpiry::Clear);
        let before = k.clone();
        assert_eq!(k.incr(1, A, (2, A), 0), Err(ValueError::NotInteger));
        assert_eq!(k, before);
        k.set(
            i64::MAX.to_string().into_bytes(),
            (3, A),
            A,
            SetExpiry::Clear,
        );
        let before = k.clone();
        assert_eq!(k.incr(1, A, (4, A), 0), Err(ValueError::Overflow));
        assert_eq!(k, before);
        assert_eq!(
            ValueError::NotInteger.to_string(),
            "ERR value is not an integer or out of range"
        );
        // An expired key counts from 0 in a fresh epoch.
        let mut k = RedisValue::new();
        k.set(b"abc".to_vec(), (1, A), A, SetExpiry::At(100));
        assert_eq!(k.incr(4, A, (2, A), 200), Ok(4));
        assert_eq!(k.get(200), Some(b"4".to_vec()));
    }

    fn m(v: &str) -> Vec<u8> {
        v.as_bytes().to_vec()
    }

    fn members(k: &RedisValue) -> Vec<Vec<u8>> {
        k.members(0)
            .unwrap()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn sadd_and_srem_count_what_changed() {
        let mut k = RedisValue::new();
        assert_eq!(k.sadd(&[m("a"), m("b"), m("a")], A, (1, A), 0), Ok(2));
        assert_eq!(k.sadd(&[m("a"), m("c")], A, (2, A), 0), Ok(1));
        assert_eq!(k.kind(0), Some(Kind::Set));
        assert_eq!(k.srem(&[m("a"), m("x")], (3, A), 0), Ok(1));
        assert_eq!(members(&k), vec![m("b"), m("c")]);
        assert!(k.is_member(b"b", 0).unwrap() && !k.is_member(b"a", 0).unwrap());
        assert_eq!(k.srem(&[m("b"), m("c")], (4, A), 0), Ok(2));
        assert!(!k.exists(0), "an empty set is no key");
        assert!(k.is_tombstone());
        assert_eq!(
            k.last_write(),
            4,
            "its grace period counts from the last remove"
        );
        assert_eq!(k.srem(&[m("b")], (5, A), 0), Ok(0));
    }

    #[test]
    fn srem_vs_sadd_the_add_wins_and_a_removed_member_never_comes_back() {
        let (mut a, mut b) = forked(|k| {
            k.sadd(&[m("x"), m("y")], A, (1, A), 0).unwrap();
        });
        // A removes x and y; B concurrently adds x again.
        assert_eq!(a.srem(&[m("x"), m("y")], (2, A), 0), Ok(2));
        assert_eq!(b.sadd(&[m("x")], B, (2, B), 0), Ok(0));
        let joined = merged(&a, &b);
        assert_eq!(
            members(&joined),
            vec![m("x")],
            "B's add of x was concurrent: it wins"
        );
        // y was removed by A and nobody re-added it: a replica still holding it (the
        // original state) does not bring it back.
        let mut original = RedisValue::new();
        original.sadd(&[m("x"), m("y")], A, (1, A), 0).unwrap();
        assert_eq!(members(&joined.merged(&original)), vec![m("x")]);
    }

    #[test]
    fn del_and_set_vs_sadd_the_new_epoch_wins() {
        let (mut a, mut b) = forked(|k| {
            k.sadd(&[m("x")], A, (1, A), 0).unwrap();
        });
        a.delete((5, A));
        b.sadd(&[m("y")], B, (6, B), 0).unwrap();
        assert!(
            !merged(&a, &b).exists(0),
            "DEL wins over an add into the set it deleted"
        );

        let (mut a, mut b) = forked(|k| {
            k.sadd(&[m("x")], A, (1, A), 0).unwrap();
        });
        a.set(m("v"), (5, A), A, SetExpiry::Clear);
        b.sadd(&[m("y")], B, (6, B), 0).unwrap();
        let j = merged(&a, &b);
        assert_eq!((j.kind(0), j.get(0)), (Some(Kind::String), Some(m("v"))));
    }

    #[test]
    fn a_string_and_a_set_created_concurrently_resolve_to_the_string_everywhere() {
        let (mut a, mut b) = forked(|_| {});
        a.incr(3, A, (1, A), 0).unwrap();
        b.sadd(&[m("x")], B, (1, B), 0).unwrap();
        let j = merged(&a, &b);
        assert_eq!((j.kind(0), j.get(0)), (Some(Kind::String), Some(m("3"))));
        assert_eq!(j.members(0), Err(ValueError::WrongType));
        // A DEL clears the hidden members too.
        let mut d = j.clone();
        d.delete((9, A));
        assert!(!d.exists(0));
        assert_eq!(d.sadd(&[m("z")], A, (10, A), 0), Ok(1));
        assert_eq!(members(&d), vec![m("z")]);
    }

    #[test]
    fn operations_on_the_wrong_type_are_refused_and_change_nothing() {
        let mut s = RedisValue::new();
        s.set(m("v"), (1, A), A, SetExpiry::Clear);
        let before = s.clone();
        assert_eq!(s.sadd(&[m("x")], A, (2, A), 0), Err(ValueError::WrongType));
        assert_eq!(s.srem(&[m("x")], (2, A), 0), Err(ValueError::WrongType));
        assert_eq!(s.members(0), Err(ValueError::WrongType));
        assert_eq!(s.is_member(b"x", 0), Err(ValueError::WrongType));
        assert_eq!(s, before);
        let mut t = RedisValue::new();
        t.sadd(&[m("x")], A, (1, A), 0).unwrap();
        let before = t.clone();
        assert_eq!(t.incr(1, A, (2, A), 0), Err(ValueError::WrongType));
        assert_eq!((t.get(0), &t), (None, &before));
        assert_eq!(
            ValueError::WrongType.to_string(),
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        // SET replaces a set, as in Redis.
        t.set(m("v"), (3, A), A, SetExpiry::Clear);
        assert_eq!(t.get(0), Some(m("v")));
    }

    #[test]
    fn a_set_created_again_after_expiry_or_emptying_keeps_nothing_of_before() {
        let mut k = RedisValue::new();
        k.sadd(&[m("old")], A, (1, A), 0).unwrap();
        k.expire(Expiry::At(100), A);
        assert_eq!(k.members(200), Ok(BTreeSet::new()), "expired");
        assert_eq!(k.sadd(&[m("new")], A, (2, A), 200), Ok(1));
        assert_eq!(
            (k.members(200).unwrap().len(), k.expires_at()),
            (1, None),
            "only the new member, no deadline"
        );
        // Emptied by SREM while it had a deadline: the next add starts without it.
        k.expire(Expiry::At(1_000), A);
        k.srem(&[m("new")], (3, A), 200).unwrap();
        k.sadd(&[m("again")], A, (4, A), 200).unwrap();
        assert_eq!(k.expires_at(), None);
        assert!(k.exists(5_000));
    }

    #[test]
    fn replace_set_starts_an_epoch_with_exactly_the_members() {
        let mut k = RedisValue::new();
        k.sadd(&[m("a")], A, (1, A), 0).unwrap();
        k.replace_set(&[m("b"), m("c")], (2, B), B);
        assert_eq!(members(&k), vec![m("b"), m("c")]);
        k.replace_set(&[], (3, B), B);
        assert!(!k.exists(0) && k.is_tombstone());
        k.replace_set(&[m("z")], (2, A), A);
        assert!(!k.exists(0), "an older stamp changes nothing");
    }

    /// The registers' bytes are encoded as byte strings (one copy instead of a call per
    /// byte), which postcard writes exactly as it wrote the sequences of `u8` they were:
    /// stored states and replica messages keep their bytes, both ways.
    #[test]
    fn byte_strings_encode_as_the_sequences_of_bytes_they_were() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            epoch: Stamp,
            value: Option<Vec<u8>>,
            counter: PnCounter,
            expiry: MvRegister<Expiry>,
            set: OrSet<Vec<u8>>,
            hash: OrMap<Vec<u8>, HashField>,
            removed: u64,
        }
        for len in [
            None,
            Some(0),
            Some(1),
            Some(127),
            Some(128),
            Some(300),
            Some(20_000),
        ] {
            let mut k = RedisValue::new();
            if let Some(n) = len {
                let value: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                k.set(value, (1, A), A, SetExpiry::At(9));
            }
            let before = Before {
                epoch: k.epoch,
                value: k.value.clone(),
                counter: k.counter.clone(),
                expiry: k.expiry.clone(),
                set: k.set.clone(),
                hash: k.hash.clone(),
                removed: k.removed,
            };
            let old = postcard::to_allocvec(&before).unwrap();
            let new = postcard::to_allocvec(&k.collections_layout().unwrap()).unwrap();
            assert_eq!(new, old, "collections layout, {len:?} bytes");
            let back: CollectionsLayout = postcard::from_bytes(&old).unwrap();
            assert_eq!(RedisValue::from(back), k);
            assert_eq!(postcard::from_bytes::<Before>(&new).unwrap(), before);
            let string = postcard::to_allocvec(&k.string_layout().unwrap()).unwrap();
            assert_eq!(string, old[..string.len()], "string layout, {len:?} bytes");
        }
        #[derive(Serialize)]
        struct FieldBefore {
            epoch: Stamp,
            value: Option<Vec<u8>>,
            counter: PnCounter,
        }
        for value in [None, Some(vec![]), Some(vec![3u8; 300])] {
            let field = HashField {
                epoch: (4, B),
                value: value.clone(),
                counter: PnCounter::new(),
            };
            let before = FieldBefore {
                epoch: (4, B),
                value,
                counter: PnCounter::new(),
            };
            assert_eq!(
                postcard::to_allocvec(&field).unwrap(),
                postcard::to_allocvec(&before).unwrap()
            );
        }
    }

    #[test]
    fn keys_without_set_members_keep_the_first_layout() {
        let mut k = RedisValue::new();
        k.set(m("v"), (1, A), A, SetExpiry::At(7));
        k.incr(0, B, (2, B), 0).ok();
        let bytes = postcard::to_allocvec(&k.string_layout().unwrap()).unwrap();
        let back: StringLayout = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(RedisValue::from(back), k);
        k.delete((3, A));
        k.sadd(&[m("x")], A, (4, A), 0).unwrap();
        assert!(k.string_layout().is_none());
    }

    fn fields(k: &RedisValue) -> Vec<(Vec<u8>, Vec<u8>)> {
        k.hfields(0).unwrap().into_iter().collect()
    }

    fn pair(f: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (m(f), m(v))
    }

    #[test]
    fn hset_and_hdel_count_fields_and_the_last_value_of_a_repeated_field_wins() {
        let mut k = RedisValue::new();
        let pairs = [pair("f", "1"), pair("g", "2"), pair("f", "3")];
        assert_eq!(k.hset(&pairs, A, (1, A), 0), Ok(2));
        assert_eq!(fields(&k), vec![pair("f", "3"), pair("g", "2")]);
        assert_eq!(k.kind(0), Some(Kind::Hash));
        assert_eq!(
            k.hset(&[pair("g", "4"), pair("h", "5")], A, (2, A), 0),
            Ok(1)
        );
        assert_eq!(k.hdel(&[m("f"), m("x")], (3, A), 0), Ok(1));
        assert_eq!(k.hfield(b"g", 0), Ok(Some(m("4"))));
        assert_eq!(k.hsetnx(b"g", b"9", A, (4, A), 0), Ok(0));
        assert_eq!(k.hsetnx(b"n", b"9", A, (4, A), 0), Ok(1));
        assert_eq!(k.hdel(&[m("g"), m("h"), m("n")], (5, A), 0), Ok(3));
        assert!(!k.exists(0) && k.is_tombstone());
        assert_eq!(k.last_write(), 5);
    }

    #[test]
    fn concurrent_field_writes_merge_per_field_and_the_greater_stamp_wins_a_field() {
        let (mut a, mut b) = forked(|k| {
            k.hset(&[pair("f", "0")], A, (1, A), 0).unwrap();
        });
        a.hset(&[pair("x", "a"), pair("f", "from-a")], A, (5, A), 0)
            .unwrap();
        b.hset(&[pair("y", "b"), pair("f", "from-b")], B, (5, B), 0)
            .unwrap();
        assert_eq!(
            fields(&merged(&a, &b)),
            vec![pair("f", "from-b"), pair("x", "a"), pair("y", "b")]
        );
    }

    #[test]
    fn hdel_vs_hset_of_the_field_the_write_wins() {
        let (mut a, mut b) = forked(|k| {
            k.hset(&[pair("f", "old"), pair("g", "1")], A, (1, A), 0)
                .unwrap();
        });
        assert_eq!(a.hdel(&[m("f"), m("g")], (2, A), 0), Ok(2));
        b.hset(&[pair("f", "new")], B, (2, B), 0).unwrap();
        let j = merged(&a, &b);
        assert_eq!(fields(&j), vec![pair("f", "new")], "g stays deleted");
    }

    #[test]
    fn hincrby_vs_hincrby_both_count_and_hset_vs_hincrby_the_write_wins() {
        let (mut a, mut b) = forked(|_| {});
        assert_eq!(a.hincrby(b"n", 2, A, (1, A), 0), Ok(2));
        assert_eq!(b.hincrby(b"n", 3, B, (1, B), 0), Ok(3));
        assert_eq!(merged(&a, &b).hfield(b"n", 0), Ok(Some(m("5"))));
        let (mut a, mut b) = forked(|k| {
            k.hset(&[pair("n", "10")], A, (1, A), 0).unwrap();
        });
        assert_eq!(a.hincrby(b"n", 1, A, (2, A), 0), Ok(11));
        b.hset(&[pair("n", "x")], B, (3, B), 0).unwrap();
        assert_eq!(merged(&a, &b).hfield(b"n", 0), Ok(Some(m("x"))));
        // Errors change nothing.
        let mut k = RedisValue::new();
        k.hset(
            &[pair("t", "text"), pair("big", &i64::MAX.to_string())],
            A,
            (1, A),
            0,
        )
        .unwrap();
        let before = k.clone();
        assert_eq!(
            k.hincrby(b"t", 1, A, (2, A), 0),
            Err(ValueError::HashNotInteger)
        );
        assert_eq!(
            k.hincrby(b"big", 1, A, (2, A), 0),
            Err(ValueError::Overflow)
        );
        assert_eq!(k, before);
        assert_eq!(
            ValueError::HashNotInteger.to_string(),
            "ERR hash value is not an integer"
        );
    }

    #[test]
    fn types_created_concurrently_resolve_string_then_hash_then_set() {
        let (mut a, mut b) = forked(|_| {});
        a.hset(&[pair("f", "v")], A, (1, A), 0).unwrap();
        b.sadd(&[m("x")], B, (1, B), 0).unwrap();
        let j = merged(&a, &b);
        assert_eq!(j.kind(0), Some(Kind::Hash));
        assert_eq!(j.members(0), Err(ValueError::WrongType));
        let mut c = RedisValue::new();
        c.incr(1, NodeId(3), (1, NodeId(3)), 0).unwrap();
        assert_eq!(j.merged(&c).kind(0), Some(Kind::String));
        // Hash operations refuse the other types.
        let mut s = RedisValue::new();
        s.set(m("v"), (1, A), A, SetExpiry::Clear);
        assert_eq!(
            s.hset(&[pair("f", "v")], A, (2, A), 0),
            Err(ValueError::WrongType)
        );
        assert_eq!(s.hfields(0), Err(ValueError::WrongType));
        assert_eq!(s.hincrby(b"f", 1, A, (2, A), 0), Err(ValueError::WrongType));
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
        Sadd(u8),
        Srem(u8),
        Hset(u8, u8),
        Hdel(u8),
        Hincr(u8, i8),
        /// A sibling write with the context read from that replica (none: blind), or a
        /// sibling delete (value `None`).
        Sput(Option<usize>, Option<u8>),
        Merge(usize),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, 0..20u64).prop_map(|(v, t)| Op::Set(v, t)),
            (0..20u64).prop_map(Op::Del),
            any::<i8>().prop_map(Op::Incr),
            prop::option::of(any::<u16>()).prop_map(Op::Expire),
            (0..4u8).prop_map(Op::Sadd),
            (0..4u8).prop_map(Op::Srem),
            (0..3u8, 0..4u8).prop_map(|(f, v)| Op::Hset(f, v)),
            (0..3u8).prop_map(Op::Hdel),
            (0..3u8, any::<i8>()).prop_map(|(f, d)| Op::Hincr(f, d)),
            (prop::option::of(0..3usize), prop::option::of(0..4u8))
                .prop_map(|(from, v)| Op::Sput(from, v)),
            (0..3usize).prop_map(Op::Merge),
        ]
    }

    /// Three replicas acting and merging at random. With `unique`, no two register writes
    /// share a stamp (as with real clocks); without, they may.
    fn run(ops: &[(usize, Op)], unique: bool) -> Vec<RedisValue> {
        let mut replicas = vec![RedisValue::new(); 3];
        for (step, (i, op)) in ops.iter().enumerate() {
            let node = NodeId(*i as u64 + 1);
            let before = replicas[*i].clone();
            let at = |t: u64| if unique { t * 100 + step as u64 } else { t };
            match op {
                Op::Set(v, t) => {
                    replicas[*i].set(vec![b'0' + v], (at(*t), node), node, SetExpiry::Clear)
                }
                Op::Del(t) => replicas[*i].delete((at(*t), node)),
                Op::Incr(d) => {
                    let stamp = (1000 + step as u64, node);
                    let _ = replicas[*i].incr(i64::from(*d), node, stamp, 0);
                }
                Op::Expire(e) => replicas[*i].expire(
                    e.map_or(Expiry::Never, |at| Expiry::At(u64::from(at))),
                    node,
                ),
                Op::Sadd(v) => {
                    let stamp = (1000 + step as u64, node);
                    let _ = replicas[*i].sadd(&[vec![b'0' + v]], node, stamp, 0);
                }
                Op::Srem(v) => {
                    let _ = replicas[*i].srem(&[vec![b'0' + v]], (1000 + step as u64, node), 0);
                }
                Op::Hset(f, v) => {
                    let stamp = (1000 + step as u64, node);
                    let pairs = [(vec![b'f', *f], vec![b'0' + v])];
                    let _ = replicas[*i].hset(&pairs, node, stamp, 0);
                }
                Op::Hdel(f) => {
                    let _ = replicas[*i].hdel(&[vec![b'f', *f]], (1000 + step as u64, node), 0);
                }
                Op::Hincr(f, d) => {
                    let stamp = (1000 + step as u64, node);
                    let _ = replicas[*i].hincrby(&[b'f', *f], i64::from(*d), node, stamp, 0);
                }
                Op::Sput(from, v) => {
                    let context =
                        from.map_or_else(VectorClock::new, |j| replicas[j].siblings().1.clone());
                    let value = v.map(|v| vec![b'0' + v]);
                    replicas[*i].sibling_put(&context, value, node);
                }
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
            let r = run(&ops, false);
            let (a, b, c) = (&r[0], &r[1], &r[2]);
            prop_assert_eq!(a.merged(b), b.merged(a));
            prop_assert_eq!(a.merged(b).merged(c), a.merged(&b.merged(c)));
            prop_assert_eq!(a.merged(a), a.clone());
            // Replicas that exchange everything agree.
            let all = a.merged(b).merged(c);
            prop_assert_eq!(c.merged(a).merged(b), all);
        }

        /// `seen` and `covers` on states reached by random operations and merges: a state
        /// covers what it merged (complete), covering means merging changes nothing
        /// (sound), and the join of two summaries is covered exactly when both are.
        #[test]
        fn covers_is_exact(ops in prop::collection::vec((0..3usize, arb_op()), 0..60)) {
            let r = run(&ops, true);
            let mut states = r.clone();
            states.push(r[0].merged(&r[1]));
            states.push(r[1].merged(&r[2]));
            for x in &states {
                for y in &states {
                    let (sx, sy) = (x.seen(), y.seen());
                    prop_assert!(x.merged(y).covers(&sy));
                    prop_assert_eq!(x.covers(&sy), x.merged(y) == *x);
                    let mut both = sx.clone();
                    both.join(&sy);
                    for z in &states {
                        prop_assert_eq!(z.covers(&both), z.covers(&sx) && z.covers(&sy));
                    }
                }
            }
        }
    }
}
