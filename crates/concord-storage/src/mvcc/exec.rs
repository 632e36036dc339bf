//! Execution of commands inside one redb write transaction: etcd's apply logic for put,
//! delete-range, txn (with its compares and nested txns), compaction, leases and alarms.
//!
//! # Guarantees
//!
//! 1. A command either fails its checks with a [`RequestError`] and changes nothing, or
//!    applies completely: every check etcd makes before executing (lease exists, key
//!    exists for `ignore_*`, revisions in range, no duplicate keys, NOSPACE) runs on the
//!    whole path of a transaction before its first write.
//! 2. All changes of one command share one main revision, with sub-revisions in execution
//!    order; a command that changes no key does not advance the revision.
//! 3. Compares of a transaction, nested ones included, are evaluated against the state
//!    before the transaction, as etcd does.

use std::ops::Bound;

use redb::{ReadableTable, Table};

use super::index::{KeyIndex, Latest};
use super::keys::{encode_row, lease_key, lease_key_entry, seal, unseal, Revision, Version};
use super::read::{get_at, range_at, read_many, Rows};
use super::types::*;
use crate::errors::{RequestError, StoreError};

pub(crate) type T<'a> = Table<'a, &'static [u8], &'static [u8]>;

/// Open tables and counters of one write transaction, and the key index it updates as
/// it writes (the caller rebuilds the index if the transaction fails).
pub(crate) struct Exec<'a> {
    pub(crate) revs: T<'a>,
    pub(crate) index: &'a mut KeyIndex,
    pub(crate) leases: T<'a>,
    pub(crate) lease_keys: T<'a>,
    pub(crate) cluster: T<'a>,
    /// Store revision before the current command.
    pub(crate) current: i64,
    pub(crate) compacted: i64,
    /// Member ids whose NOSPACE alarm is raised, sorted; writes are refused while any is.
    pub(crate) alarms: Vec<u64>,
    /// The `revs` rows written, in revision order (the store's overlay while their
    /// transaction stays open, see `MvccStore::apply_batch`).
    pub(crate) written: Vec<(Revision, Vec<u8>)>,
    /// Whether anything was written to `leases`, `lease_keys` or `cluster`, which have no
    /// overlay: their transaction must commit before anyone reads them.
    pub(crate) side_tables: bool,
    // Changes made by the current command so far.
    sub: i64,
}

type Outcome = Result<Response, RequestError>;

impl<'a> Exec<'a> {
    // One argument per table and counter, all from one write transaction.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        revs: T<'a>,
        index: &'a mut KeyIndex,
        leases: T<'a>,
        lease_keys: T<'a>,
        cluster: T<'a>,
        current: i64,
        compacted: i64,
        alarms: Vec<u64>,
    ) -> Self {
        Self {
            revs,
            index,
            leases,
            lease_keys,
            cluster,
            current,
            compacted,
            alarms,
            written: Vec::new(),
            side_tables: false,
            sub: 0,
        }
    }

    fn nospace(&self) -> bool {
        !self.alarms.is_empty()
    }

    fn raise(&mut self, member: u64) {
        if let Err(at) = self.alarms.binary_search(&member) {
            self.alarms.insert(at, member);
        }
    }

    fn main(&self) -> i64 {
        self.current + 1
    }

    /// Revision a read inside the current command sees.
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main()
        } else {
            self.current
        }
    }

    /// Runs one command; on return the revision is advanced if it changed anything.
    pub(crate) fn run(&mut self, cmd: &Command) -> Result<Outcome, StoreError> {
        self.sub = 0;
        let out = self.dispatch(cmd)?;
        if self.sub > 0 {
            self.current += 1;
        }
        Ok(out.map(|r| fill_revision(r, self.current)))
    }

    fn dispatch(&mut self, cmd: &Command) -> Result<Outcome, StoreError> {
        match cmd {
            Command::Noop => Ok(Ok(Response::Revision(0))),
            // The check the wrapper carries is the server's (it unwraps before the store).
            Command::Authorized { cmd, .. } => self.dispatch(cmd),
            Command::Put(p) => {
                if self.nospace() {
                    return Ok(Err(RequestError::NoSpace));
                }
                if let Err(e) = self.check_put(p)? {
                    return Ok(Err(e));
                }
                Ok(Ok(Response::Put(self.put(p)?)))
            }
            Command::DeleteRange(d) => {
                if d.key.is_empty() {
                    return Ok(Err(RequestError::EmptyKey));
                }
                Ok(Ok(Response::DeleteRange(self.delete_range(d)?)))
            }
            Command::Txn(t) => {
                if self.nospace() && txn_has_put(t) {
                    return Ok(Err(RequestError::NoSpace));
                }
                if let Err(e) = check_intervals(&t.success).and(check_intervals(&t.failure)) {
                    return Ok(Err(e));
                }
                let mut path = Vec::new();
                self.compare_path(t, &mut path)?;
                let mut at = 0;
                if let Err(e) = self.check_txn(t, &path, &mut at)? {
                    return Ok(Err(e));
                }
                let mut at = 0;
                Ok(Ok(Response::Txn(self.txn(t, &path, &mut at)?)))
            }
            Command::Compact { revision } => {
                if *revision <= self.compacted {
                    return Ok(Err(RequestError::Compacted));
                }
                if *revision > self.current {
                    return Ok(Err(RequestError::FutureRevision));
                }
                self.compacted = *revision;
                Ok(Ok(Response::Revision(0)))
            }
            Command::LeaseGrant { id, ttl } => {
                if self.nospace() {
                    return Ok(Err(RequestError::NoSpace));
                }
                if *id == 0 {
                    return Ok(Err(RequestError::ZeroLeaseId));
                }
                if self.leases.get(lease_key(*id).as_slice())?.is_some() {
                    return Ok(Err(RequestError::LeaseExists));
                }
                let mut v = ttl.to_le_bytes().to_vec();
                v.extend_from_slice(&0i64.to_le_bytes());
                let k = lease_key(*id);
                self.side_tables = true;
                self.leases.insert(k.as_slice(), seal(&k, &v).as_slice())?;
                Ok(Ok(Response::Revision(0)))
            }
            Command::LeaseRevoke { id } => {
                if self.leases.get(lease_key(*id).as_slice())?.is_none() {
                    return Ok(Err(RequestError::LeaseNotFound));
                }
                for key in lease_keys_of(&self.lease_keys, *id)? {
                    let d = DeleteRangeRequest {
                        key,
                        range_end: Vec::new(),
                        prev_kv: false,
                    };
                    self.delete_range(&d)?;
                }
                self.side_tables = true;
                self.leases.remove(lease_key(*id).as_slice())?;
                Ok(Ok(Response::Revision(0)))
            }
            Command::LeaseCheckpoint { id, remaining_ttl } => {
                let k = lease_key(*id);
                let ttl = match self.leases.get(k.as_slice())? {
                    None => return Ok(Err(RequestError::LeaseNotFound)),
                    Some(v) => unseal(&k, v.value())
                        .filter(|v| v.len() == 16)
                        .map(|b| b[..8].to_vec()),
                };
                let mut v = ttl.ok_or_else(|| StoreError::Corrupt("lease record".into()))?;
                v.extend_from_slice(&remaining_ttl.to_le_bytes());
                self.side_tables = true;
                self.leases.insert(k.as_slice(), seal(&k, &v).as_slice())?;
                Ok(Ok(Response::Revision(0)))
            }
            Command::AlarmNoSpace => {
                self.raise(0);
                Ok(Ok(Response::Revision(0)))
            }
            Command::AlarmDisarm => {
                self.alarms.clear();
                Ok(Ok(Response::Revision(0)))
            }
            Command::AlarmActivate { member } => {
                self.raise(*member);
                Ok(Ok(Response::Revision(0)))
            }
            Command::AlarmDeactivate { member } => {
                self.alarms.retain(|m| m != member);
                Ok(Ok(Response::Revision(0)))
            }
            Command::ClusterMetaCas { key, expect, value } => {
                let now = self
                    .cluster
                    .get(key.as_slice())?
                    .map(|v| v.value().to_vec());
                if now != *expect {
                    return Ok(Err(RequestError::MetaChanged));
                }
                self.set_meta(key, value.as_deref())?;
                Ok(Ok(Response::Revision(0)))
            }
            Command::ClusterMeta { key, value } => {
                self.set_meta(key, value.as_deref())?;
                Ok(Ok(Response::Revision(0)))
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) a cluster metadata entry.
    fn set_meta(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.side_tables = true;
        match value {
            Some(v) => {
                self.cluster.insert(key, v)?;
            }
            None => {
                self.cluster.remove(key)?;
            }
        }
        Ok(())
    }

    fn lease_exists(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.leases.get(lease_key(id).as_slice())?.is_some())
    }

    fn check_put(&self, p: &PutRequest) -> Result<Result<(), RequestError>, StoreError> {
        if p.key.is_empty() {
            return Ok(Err(RequestError::EmptyKey));
        }
        if p.ignore_value && !p.value.is_empty() {
            return Ok(Err(RequestError::ValueProvided));
        }
        if p.ignore_lease && p.lease != 0 {
            return Ok(Err(RequestError::LeaseProvided));
        }
        // The latest version is the one live at `read_rev`.
        if (p.ignore_value || p.ignore_lease) && self.index.latest(&p.key).is_none() {
            return Ok(Err(RequestError::KeyNotFound));
        }
        if p.lease != 0 && !self.lease_exists(p.lease)? {
            return Ok(Err(RequestError::LeaseNotFound));
        }
        Ok(Ok(()))
    }

    fn check_range(&self, r: &RangeRequest) -> Result<(), RequestError> {
        if r.key.is_empty() {
            return Err(RequestError::EmptyKey);
        }
        if r.revision > self.current {
            return Err(RequestError::FutureRevision);
        }
        if r.revision > 0 && r.revision < self.compacted {
            return Err(RequestError::Compacted);
        }
        Ok(())
    }

    fn check_txn(
        &self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<Result<(), RequestError>, StoreError> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            let r = match op {
                RequestOp::Range(r) => self.check_range(r),
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange(d) if d.key.is_empty() => Err(RequestError::EmptyKey),
                RequestOp::DeleteRange(_) => Ok(()),
                RequestOp::Txn(inner) => self.check_txn(inner, path, at)?,
            };
            if r.is_err() {
                return Ok(r);
            }
        }
        Ok(Ok(()))
    }

    // Evaluates the compares of `t` and of the nested txns on the path taken, in the
    // order the ops will run, all against the state before the transaction.
    fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), StoreError> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let RequestOp::Txn(inner) = op {
                self.compare_path(inner, path)?;
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> Result<bool, StoreError> {
        // An empty `range_end` is the single key.
        let kvs = range_at(
            self.index,
            &Rows::of(&self.revs),
            &c.key,
            &c.range_end,
            self.current,
        )?;
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    fn txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, StoreError> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    let rev = self.read_rev();
                    ResponseOp::Range(range_request(self.index, &Rows::of(&self.revs), r, rev)?)
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(inner) => ResponseOp::Txn(self.txn(inner, path, at)?),
            });
        }
        Ok(TxnResponse {
            revision: 0,
            succeeded: ok,
            responses,
        })
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision {
            main: self.main(),
            sub: self.sub,
        };
        self.sub += 1;
        r
    }

    fn write_version(&mut self, key: &[u8], rev: Revision, v: &Version) -> Result<(), StoreError> {
        let row = encode_row(rev, key, v);
        self.revs
            .insert(rev.to_bytes().as_slice(), row.as_slice())?;
        self.written.push((rev, row));
        let live = match v {
            Version::Live(kv) => Some(Latest::of(kv)),
            Version::Tombstone => None,
        };
        self.index.push(key, rev, live);
        Ok(())
    }

    // Assumes `check_put` passed.
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, StoreError> {
        // The version replaced is the latest (the one live at `read_rev`); the index
        // knows what a put needs of it, so its row is read only to return or keep its
        // value.
        let cur = self.index.latest(&p.key);
        let prev = if p.prev_kv || p.ignore_value {
            get_at(self.index, &Rows::of(&self.revs), &p.key, self.read_rev())?
        } else {
            None
        };
        let rev = self.next_rev();
        let old_lease = cur.map_or(0, |c| c.lease);
        let lease = match cur {
            Some(_) if p.ignore_lease => old_lease,
            _ => p.lease,
        };
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: cur.map_or(rev.main, |c| c.create_revision),
            mod_revision: rev.main,
            version: cur.map_or(1, |c| c.version + 1),
            value,
            lease,
        };
        self.write_version(&p.key, rev, &Version::Live(kv))?;
        if lease != old_lease {
            self.side_tables = true;
        }
        if old_lease != 0 && old_lease != lease {
            self.lease_keys
                .remove(lease_key_entry(old_lease, &p.key).as_slice())?;
        }
        // A key already attached to `lease` has its row.
        if lease != 0 && lease != old_lease {
            let k = lease_key_entry(lease, &p.key);
            self.lease_keys
                .insert(k.as_slice(), seal(&k, &[]).as_slice())?;
        }
        Ok(PutResponse {
            revision: 0,
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, StoreError> {
        // An empty `range_end` is the single key.
        let kvs = range_at(
            self.index,
            &Rows::of(&self.revs),
            &d.key,
            &d.range_end,
            self.read_rev(),
        )?;
        for kv in &kvs {
            let rev = self.next_rev();
            self.write_version(&kv.key, rev, &Version::Tombstone)?;
            if kv.lease != 0 {
                self.side_tables = true;
                self.lease_keys
                    .remove(lease_key_entry(kv.lease, &kv.key).as_slice())?;
            }
        }
        Ok(DeleteRangeResponse {
            revision: 0,
            deleted: kvs.len() as i64,
            prev_kvs: if d.prev_kv { kvs } else { Vec::new() },
        })
    }
}

/// Keys attached to lease `id`.
pub(crate) fn lease_keys_of<L: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &L,
    id: i64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let start = lease_key(id);
    let end = (id as u64).checked_add(1).map(u64::to_be_bytes);
    let range = (
        Bound::Included(start.as_slice()),
        end.as_ref()
            .map_or(Bound::Unbounded, |e| Bound::Excluded(e.as_slice())),
    );
    let mut out = Vec::new();
    for item in t.range::<&[u8]>(range)? {
        let (k, v) = item?;
        let key = unseal(k.value(), v.value())
            .and_then(|_| k.value().get(8..))
            .ok_or_else(|| StoreError::Corrupt("lease_keys row".into()))?;
        out.push(key.to_vec());
    }
    Ok(out)
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(inner) => txn_has_put(inner),
        _ => false,
    })
}

type Interval = (Vec<u8>, Vec<u8>);

fn intersects(dels: &[Interval], key: &[u8]) -> bool {
    dels.iter().any(|(s, e)| {
        if e.is_empty() {
            s.as_slice() == key
        } else if e.as_slice() == [0] {
            key >= s.as_slice()
        } else {
            key >= s.as_slice() && key < e.as_slice()
        }
    })
}

fn check_intervals(ops: &[RequestOp]) -> Result<(), RequestError> {
    intervals(ops).map(|_| ())
}

// etcd's `checkIntervals`: no key is put twice, nor put inside a deleted range, along any
// path through the transaction (the two branches of a nested txn exclude each other).
fn intervals(
    ops: &[RequestOp],
) -> Result<(std::collections::BTreeSet<Vec<u8>>, Vec<Interval>), RequestError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts = std::collections::BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || intersects(&dels, k) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || intersects(&dels, &p.key) {
            return Err(RequestError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

fn fill_revision(r: Response, rev: i64) -> Response {
    match r {
        Response::Revision(_) => Response::Revision(rev),
        Response::Put(mut p) => {
            p.revision = rev;
            Response::Put(p)
        }
        Response::DeleteRange(mut d) => {
            d.revision = rev;
            Response::DeleteRange(d)
        }
        Response::Txn(t) => Response::Txn(fill_txn(t, rev)),
    }
}

fn fill_txn(mut t: TxnResponse, rev: i64) -> TxnResponse {
    t.revision = rev;
    for r in &mut t.responses {
        match r {
            ResponseOp::Range(_) => {}
            ResponseOp::Put(p) => p.revision = rev,
            ResponseOp::DeleteRange(d) => d.revision = rev,
            ResponseOp::Txn(inner) => *inner = fill_txn(std::mem::take(inner), rev),
        }
    }
    t
}

/// etcd's range: count over the whole range, filters, sort, then limit (see
/// `etcdserver/apply.go`, `Range`). `rev` is the store's current revision as seen by the
/// caller; `r.revision <= 0` reads at it.
pub(crate) fn range_request<K: super::read::Tbl>(
    ix: &KeyIndex,
    t: &Rows<'_, K>,
    r: &RangeRequest,
    current: i64,
) -> Result<RangeResponse, StoreError> {
    let at = if r.revision > 0 { r.revision } else { current };
    let mut count = 0i64;
    let filtered = r.sort_order != SortOrder::None
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // etcd fetches limit + 1 keys to know `more` when nothing forces a full fetch.
    let fetch = if r.count_only {
        0
    } else if r.limit > 0 && !filtered {
        r.limit as usize + 1
    } else {
        usize::MAX
    };
    // The count covers the whole range and comes from the index; only the versions
    // returned are read from the table.
    let mut wanted = Vec::new();
    ix.scan(&r.key, &r.range_end, at, |k, rev| {
        count += 1;
        if wanted.len() < fetch {
            wanted.push((k, rev));
        }
        Ok::<_, StoreError>(true)
    })?;
    if r.count_only {
        return Ok(RangeResponse {
            revision: current,
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    let mut kvs = read_many(t, &wanted)?;
    kvs.retain(|kv| {
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    });
    let mut order = r.sort_order;
    if r.sort_target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if r.sort_target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    if order != SortOrder::None {
        // Stable, so keys with equal targets stay in key order.
        kvs.sort_by(|a, b| {
            let o = match r.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        revision: current,
        kvs,
        more,
        count,
    })
}
