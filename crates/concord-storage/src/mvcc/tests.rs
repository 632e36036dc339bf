use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::keys::{encode_version, key_rev, seal, Version};
use super::types::*;
use super::{load_index, MvccConfig, MvccStore, LEGACY_KEY_REVS, LEGACY_REV_KEYS, REVS};
use crate::disk::{SimDisk, Tear};
use crate::errors::RequestError;

fn store() -> (SimDisk, MvccStore<SimDisk>) {
    let disk = SimDisk::new();
    let s = MvccStore::open(
        disk.clone(),
        Path::new("/db/state.redb"),
        MvccConfig::default(),
    )
    .unwrap();
    (disk, s)
}

/// The model: every version of every key, as a list per key.
#[derive(Clone, Debug, Default)]
struct Model {
    versions: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    // Lease id -> attached keys.
    leases: BTreeMap<i64, std::collections::BTreeSet<Vec<u8>>>,
    rev: i64,
    compacted: i64,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Model {
    fn get(&self, key: &[u8], at: i64) -> Option<KeyValue> {
        self.versions
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= at)
            .and_then(|(_, v)| v.clone())
    }

    fn live(&self, key: &[u8], end: &[u8], at: i64) -> Vec<KeyValue> {
        self.versions
            .keys()
            .filter(|k| in_range(k, key, end))
            .filter_map(|k| self.get(k, at))
            .collect()
    }

    fn range(&self, r: &RangeRequest, current: i64) -> Result<RangeResponse, RequestError> {
        if r.revision > current {
            return Err(RequestError::FutureRevision);
        }
        if r.revision > 0 && r.revision < self.compacted {
            return Err(RequestError::Compacted);
        }
        let at = if r.revision > 0 { r.revision } else { current };
        let all = self.live(&r.key, &r.range_end, at);
        let count = all.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                revision: current,
                kvs: vec![],
                more: false,
                count,
            });
        }
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            .filter(|kv| r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            .filter(|kv| r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
            .filter(|kv| r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            .collect();
        let key_of = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match r.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match r.sort_order {
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
            _ => kvs.sort_by_key(key_of),
        }
        let more = r.limit > 0 && kvs.len() > r.limit as usize;
        if r.limit > 0 {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse {
            revision: current,
            kvs,
            more,
            count,
        })
    }

    // etcd's checks before a put runs (gRPC layer, then apply's `checkRequestPut`).
    fn check_put(&self, p: &PutRequest) -> Result<(), RequestError> {
        if p.ignore_value && !p.value.is_empty() {
            return Err(RequestError::ValueProvided);
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(RequestError::LeaseProvided);
        }
        if (p.ignore_value || p.ignore_lease) && self.get(&p.key, self.rev).is_none() {
            return Err(RequestError::KeyNotFound);
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(RequestError::LeaseNotFound);
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> bool {
        let kvs = self.live(&c.key, &c.range_end, self.rev);
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return cmp_one(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| cmp_one(c, kv))
    }
}

fn cmp_one(c: &Compare, kv: &KeyValue) -> bool {
    let o = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.cmp(v),
    };
    match c.result {
        CompareResult::Equal => o.is_eq(),
        CompareResult::NotEqual => o.is_ne(),
        CompareResult::Greater => o.is_gt(),
        CompareResult::Less => o.is_lt(),
    }
}

/// A write command being applied to the model: pending versions share `main`.
struct ModelTxn<'m> {
    m: &'m mut Model,
    sub: i64,
}

impl ModelTxn<'_> {
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.m.rev + 1
        } else {
            self.m.rev
        }
    }
    fn put(&mut self, p: &PutRequest) -> PutResponse {
        let prev = self.m.get(&p.key, self.read_rev());
        let main = self.m.rev + 1;
        self.sub += 1;
        let lease = match (&prev, p.ignore_lease) {
            (Some(k), true) => k.lease,
            _ => p.lease,
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(main, |k| k.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: match (&prev, p.ignore_value) {
                (Some(k), true) => k.value.clone(),
                _ => p.value.clone(),
            },
            lease,
        };
        for keys in self.m.leases.values_mut() {
            keys.remove(&p.key);
        }
        if lease != 0 {
            self.m
                .leases
                .entry(lease)
                .or_default()
                .insert(p.key.clone());
        }
        self.m
            .versions
            .entry(p.key.clone())
            .or_default()
            .push((main, Some(kv)));
        PutResponse {
            revision: 0,
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }
    fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let kvs = self.m.live(&d.key, &d.range_end, self.read_rev());
        let main = self.m.rev + 1;
        for kv in &kvs {
            self.sub += 1;
            for keys in self.m.leases.values_mut() {
                keys.remove(&kv.key);
            }
            self.m
                .versions
                .entry(kv.key.clone())
                .or_default()
                .push((main, None));
        }
        DeleteRangeResponse {
            revision: 0,
            deleted: kvs.len() as i64,
            prev_kvs: if d.prev_kv { kvs } else { vec![] },
        }
    }
    fn finish(self) -> i64 {
        if self.sub > 0 {
            self.m.rev += 1;
        }
        self.m.rev
    }
}

fn fill(t: &mut TxnResponse, rev: i64) {
    t.revision = rev;
    for r in &mut t.responses {
        match r {
            ResponseOp::Put(p) => p.revision = rev,
            ResponseOp::DeleteRange(d) => d.revision = rev,
            ResponseOp::Txn(i) => fill(i, rev),
            ResponseOp::Range(_) => {}
        }
    }
}

// Model of a txn whose nested txns hold only ranges and deletes (see the generator).
fn model_txn(m: &mut Model, t: &TxnRequest) -> Result<Response, RequestError> {
    for branch in [&t.success, &t.failure] {
        let mut puts: Vec<&[u8]> = vec![];
        let mut dels: Vec<(&[u8], &[u8])> = vec![];
        for op in branch.iter() {
            match op {
                RequestOp::Put(p) => puts.push(&p.key),
                RequestOp::DeleteRange(d) => dels.push((&d.key, &d.range_end)),
                RequestOp::Txn(i) => {
                    for op in i.success.iter().chain(&i.failure) {
                        if let RequestOp::DeleteRange(d) = op {
                            dels.push((&d.key, &d.range_end));
                        }
                    }
                }
                RequestOp::Range(_) => {}
            }
        }
        for (i, k) in puts.iter().enumerate() {
            if puts[..i].contains(k) || dels.iter().any(|(s, e)| in_range(k, s, e)) {
                return Err(RequestError::DuplicateKey);
            }
        }
    }
    let ok = t.compare.iter().all(|c| m.compare(c));
    let ops = if ok { &t.success } else { &t.failure };
    // Nested compares see the state before the txn.
    let nested: Vec<bool> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::Txn(i) => Some(i.compare.iter().all(|c| m.compare(c))),
            _ => None,
        })
        .collect();
    let current = m.rev;
    for op in ops {
        if let RequestOp::Range(r) = op {
            if r.revision > current {
                return Err(RequestError::FutureRevision);
            }
            if r.revision > 0 && r.revision < m.compacted {
                return Err(RequestError::Compacted);
            }
        }
        if let RequestOp::Put(p) = op {
            m.check_put(p)?;
        }
    }
    let mut tx = ModelTxn { m, sub: 0 };
    let mut responses = vec![];
    let mut nested = nested.into_iter();
    for op in ops {
        responses.push(match op {
            RequestOp::Put(p) => ResponseOp::Put(tx.put(p)),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(tx.delete(d)),
            RequestOp::Range(r) => {
                let rev = tx.read_rev();
                ResponseOp::Range(tx.m.range(r, rev).expect("checked"))
            }
            RequestOp::Txn(i) => {
                let ok = nested.next().unwrap_or(false);
                let mut rs = vec![];
                for op in if ok { &i.success } else { &i.failure } {
                    rs.push(match op {
                        RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(tx.delete(d)),
                        RequestOp::Range(r) => {
                            let rev = tx.read_rev();
                            ResponseOp::Range(tx.m.range(r, rev).expect("checked"))
                        }
                        _ => unreachable!("generator makes none"),
                    });
                }
                ResponseOp::Txn(TxnResponse {
                    revision: 0,
                    succeeded: ok,
                    responses: rs,
                })
            }
        });
    }
    let rev = tx.finish();
    let mut resp = TxnResponse {
        revision: rev,
        succeeded: ok,
        responses,
    };
    fill(&mut resp, rev);
    Ok(Response::Txn(resp))
}

fn model_apply(m: &mut Model, cmd: &Command) -> Result<Response, RequestError> {
    match cmd {
        Command::Put(p) => {
            m.check_put(p)?;
            let mut tx = ModelTxn { m, sub: 0 };
            let mut r = tx.put(p);
            r.revision = tx.finish();
            Ok(Response::Put(r))
        }
        Command::DeleteRange(d) => {
            let mut tx = ModelTxn { m, sub: 0 };
            let mut r = tx.delete(d);
            r.revision = tx.finish();
            Ok(Response::DeleteRange(r))
        }
        Command::Txn(t) => model_txn(m, t),
        Command::Compact { revision } => {
            if *revision <= m.compacted {
                Err(RequestError::Compacted)
            } else if *revision > m.rev {
                Err(RequestError::FutureRevision)
            } else {
                m.compacted = *revision;
                Ok(Response::Revision(m.rev))
            }
        }
        Command::LeaseGrant { id, ttl: _ } => {
            if m.leases.contains_key(id) {
                return Err(RequestError::LeaseExists);
            }
            m.leases.insert(*id, Default::default());
            Ok(Response::Revision(m.rev))
        }
        Command::LeaseRevoke { id } => {
            let Some(keys) = m.leases.remove(id) else {
                return Err(RequestError::LeaseNotFound);
            };
            let mut tx = ModelTxn { m, sub: 0 };
            for key in keys {
                tx.delete(&DeleteRangeRequest {
                    key,
                    range_end: vec![],
                    prev_kv: false,
                });
            }
            Ok(Response::Revision(tx.finish()))
        }
        _ => unreachable!("generator makes none"),
    }
}

const KEYS: [&[u8]; 6] = [b"a", b"a\0", b"b", b"ba", b"c", b"d"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    (0..KEYS.len()).prop_map(|i| KEYS[i].to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        (0..KEYS.len()).prop_map(|i| KEYS[i].to_vec()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, 0..3)
}

fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        any::<bool>(),
        prop_oneof![4 => Just(0i64), 1 => 1i64..3],
        (0u8..8, 0u8..8),
    )
        .prop_map(|(key, value, prev_kv, lease, (iv, il))| PutRequest {
            key,
            // Mostly well-formed: an ignored value comes without one.
            value: if iv == 0 { vec![] } else { value },
            lease: if il == 0 { 0 } else { lease },
            prev_kv,
            ignore_value: iv < 2,
            ignore_lease: il < 2,
        })
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

// Revisions are given as offsets back from "now", resolved when the op runs.
fn range(back: i64) -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        range_end(),
        0..=back,
        0i64..4,
        (0usize..3, 0usize..5),
        (any::<bool>(), any::<bool>()),
        (0i64..6, 0i64..6, 0i64..6, 0i64..6),
    )
        .prop_map(
            |(key, range_end, revision, limit, (o, t), (k, c), f)| RangeRequest {
                key,
                range_end,
                limit,
                revision: -revision,
                sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][o],
                sort_target: [
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ][t],
                keys_only: k,
                count_only: c,
                min_mod_revision: f.0,
                max_mod_revision: f.1 * 3,
                min_create_revision: f.2,
                max_create_revision: f.3 * 3,
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![Just(vec![]), range_end()],
        0usize..4,
        0usize..5,
        0i64..6,
        value(),
    )
        .prop_map(|(key, range_end, r, t, n, v)| Compare {
            result: [
                CompareResult::Equal,
                CompareResult::Greater,
                CompareResult::Less,
                CompareResult::NotEqual,
            ][r],
            target: match t {
                0 => CompareTarget::Version(n),
                1 => CompareTarget::Create(n * 2),
                2 => CompareTarget::Mod(n * 2),
                3 => CompareTarget::Lease(n % 3),
                _ => CompareTarget::Value(v),
            },
            key,
            range_end,
        })
}

fn op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        put().prop_map(RequestOp::Put),
        delete().prop_map(RequestOp::DeleteRange),
        range(2).prop_map(RequestOp::Range),
    ]
}

fn nested() -> impl Strategy<Value = RequestOp> {
    let inner = prop_oneof![
        delete().prop_map(RequestOp::DeleteRange),
        range(0).prop_map(RequestOp::Range),
    ];
    (
        proptest::collection::vec(compare(), 0..2),
        proptest::collection::vec(inner.clone(), 0..2),
        proptest::collection::vec(inner, 0..2),
    )
        .prop_map(|(compare, success, failure)| {
            RequestOp::Txn(TxnRequest {
                compare,
                success,
                failure,
            })
        })
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let any_op = prop_oneof![4 => op(), 1 => nested()];
    (
        proptest::collection::vec(compare(), 0..3),
        proptest::collection::vec(any_op.clone(), 0..4),
        proptest::collection::vec(any_op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

#[derive(Clone, Debug)]
enum Op {
    Apply(Command),
    Range(RangeRequest),
    Compact(i64),
    CompactStep,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => put().prop_map(|p| Op::Apply(Command::Put(p))),
        2 => delete().prop_map(|d| Op::Apply(Command::DeleteRange(d))),
        3 => txn().prop_map(|t| Op::Apply(Command::Txn(t))),
        4 => range(8).prop_map(Op::Range),
        1 => (0i64..6).prop_map(Op::Compact),
        1 => (1i64..3).prop_map(|id| Op::Apply(Command::LeaseGrant { id, ttl: 10 })),
        1 => (1i64..3).prop_map(|id| Op::Apply(Command::LeaseRevoke { id })),
        2 => Just(Op::CompactStep),
    ];
    proptest::collection::vec(op, 1..60)
}

// Resolves "revision offsets" (stored negated) against the current revision.
fn resolve_range(r: &mut RangeRequest, now: i64) {
    if r.revision < 0 {
        r.revision = (now + r.revision).max(0);
    }
}

fn resolve(cmd: &mut Command, now: i64) {
    fn ops(v: &mut [RequestOp], now: i64) {
        for op in v {
            match op {
                RequestOp::Range(r) => resolve_range(r, now),
                RequestOp::Txn(t) => {
                    ops(&mut t.success, now);
                    ops(&mut t.failure, now);
                }
                _ => {}
            }
        }
    }
    if let Command::Txn(t) = cmd {
        ops(&mut t.success, now);
        ops(&mut t.failure, now);
    }
}

fn check_all_revisions(s: &MvccStore<SimDisk>, m: &Model) {
    for at in 0..=m.rev + 1 {
        let r = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: at,
            ..RangeRequest::default()
        };
        assert_eq!(
            s.range(&r).unwrap(),
            m.range(&r, m.rev),
            "full range at {at}"
        );
    }
}

proptest! {
    #[test]
    fn mvcc_agrees_with_a_model(ops in ops()) {
        let (disk, mut s) = store();
        // etcd: a new store is at revision 1, so the first write gets revision 2.
        let mut m = Model { rev: 1, ..Model::default() };
        let mut index = 0;
        for op in ops {
            match op {
                Op::Apply(mut cmd) => {
                    resolve(&mut cmd, m.rev);
                    index += 1;
                    let got = s.apply(index, &cmd).unwrap();
                    let want = model_apply(&mut m, &cmd);
                    prop_assert_eq!(got, Some(want), "{:?}", cmd);
                }
                Op::Range(mut r) => {
                    resolve_range(&mut r, m.rev);
                    prop_assert_eq!(s.range(&r).unwrap(), m.range(&r, m.rev), "{:?}", r);
                }
                Op::Compact(back) => {
                    index += 1;
                    let cmd = Command::Compact { revision: m.rev - back };
                    let got = s.apply(index, &cmd).unwrap();
                    prop_assert_eq!(got, Some(model_apply(&mut m, &cmd)));
                }
                Op::CompactStep => {
                    s.compact_step().unwrap();
                    prop_assert_eq!(&load_index(s.db().unwrap()).unwrap(), &s.index);
                }
            }
            prop_assert_eq!(s.revision(), m.rev);
        }
        let hash_before = s.hash_kv(0).unwrap();
        while !s.compact_step().unwrap() {}
        prop_assert_eq!(s.hash_kv(0).unwrap(), hash_before);
        check_all_revisions(&s, &m);
        prop_assert_eq!(s.lease_ids().unwrap(), m.leases.keys().copied().collect::<Vec<_>>());
        for (id, keys) in &m.leases {
            let got = s.lease(*id).unwrap().map(|l| l.keys);
            prop_assert_eq!(got, Some(keys.iter().cloned().collect::<Vec<_>>()));
        }
        // The change log from the compacted revision on matches the model's history.
        let from = m.compacted.max(1);
        let mut want: Vec<(i64, Vec<u8>, Option<KeyValue>)> = vec![];
        for (k, vs) in &m.versions {
            for (r, v) in vs {
                if *r >= from {
                    want.push((*r, k.clone(), v.clone()));
                }
            }
        }
        want.sort_by_key(|w| w.0);
        let got: Vec<(i64, Vec<u8>, Option<KeyValue>)> = s
            .events(from, usize::MAX, false)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| (e.kv.mod_revision, e.kv.key.clone(), (e.kind == EventKind::Put).then_some(e.kv)))
            .collect();
        // Same revisions; within one revision, sub-revision order (the model keeps
        // per-key order only, so compare as sorted sets per revision).
        let norm = |mut v: Vec<(i64, Vec<u8>, Option<KeyValue>)>| {
            v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            v
        };
        prop_assert_eq!(norm(got), norm(want));
        if m.compacted > 1 {
            prop_assert_eq!(s.events(m.compacted - 1, 1, false).unwrap(), Err(RequestError::Compacted));
        }
        // Physical compaction kept exactly the versions reads at >= compacted need: no
        // version superseded below it, no tombstone below it.
        for (key, rev, v) in s.dump().unwrap() {
            let later = m.versions[&key].iter().any(|(r, _)| *r > rev.main && *r < m.compacted);
            prop_assert!(!later, "version {:?}@{:?} survived compaction", key, rev);
            prop_assert!(v.is_some() || rev.main >= m.compacted, "tombstone {:?}@{:?} survived", key, rev);
        }
        // The key index mirrors the table, and a reopened store rebuilds the same one.
        prop_assert_eq!(&load_index(s.db().unwrap()).unwrap(), &s.index);
        s.sync().unwrap();
        // Closed first: two databases on one file would overwrite each other's pages.
        let (path, index) = (s.path().to_path_buf(), s.index.clone());
        drop(s);
        let reopened = MvccStore::open(disk.clone(), path, MvccConfig::default()).unwrap();
        prop_assert_eq!(&reopened.index, &index);
        check_all_revisions(&reopened, &m);
    }
}

fn put_cmd(key: &[u8], value: &[u8], lease: i64) -> Command {
    Command::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..PutRequest::default()
    })
}

fn get(s: &MvccStore<SimDisk>, key: &[u8]) -> Option<KeyValue> {
    s.range(&RangeRequest {
        key: key.to_vec(),
        ..RangeRequest::default()
    })
    .unwrap()
    .unwrap()
    .kvs
    .pop()
}

#[test]
fn etcd_error_strings() {
    assert_eq!(
        RequestError::Compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        RequestError::FutureRevision.to_string(),
        "mvcc: required revision is a future revision"
    );
    assert_eq!(
        RequestError::LeaseNotFound.to_string(),
        "etcdserver: requested lease not found"
    );
    assert_eq!(
        RequestError::NoSpace.to_string(),
        "etcdserver: mvcc: database space exceeded"
    );
}

#[test]
fn leases_attach_and_revoke_deletes_keys_in_one_revision() {
    let (_d, mut s) = store();
    assert_eq!(
        s.apply(1, &put_cmd(b"k", b"v", 7)).unwrap(),
        Some(Err(RequestError::LeaseNotFound))
    );
    assert_eq!(
        s.revision(),
        1,
        "a failed put writes no revision; a new store is at 1"
    );
    s.apply(2, &Command::LeaseGrant { id: 7, ttl: 10 }).unwrap();
    assert_eq!(
        s.apply(3, &Command::LeaseGrant { id: 7, ttl: 10 }).unwrap(),
        Some(Err(RequestError::LeaseExists))
    );
    s.apply(4, &put_cmd(b"k1", b"v", 7)).unwrap();
    s.apply(5, &put_cmd(b"k2", b"v", 7)).unwrap();
    s.apply(6, &put_cmd(b"k3", b"v", 0)).unwrap();
    // ignore_lease keeps the lease; a plain put without lease detaches it.
    let keep = Command::Put(PutRequest {
        key: b"k2".to_vec(),
        value: b"w".to_vec(),
        ignore_lease: true,
        ..PutRequest::default()
    });
    s.apply(7, &keep).unwrap();
    assert_eq!(get(&s, b"k2").unwrap().lease, 7);
    s.apply(
        8,
        &Command::LeaseCheckpoint {
            id: 7,
            remaining_ttl: 4,
        },
    )
    .unwrap();
    let lease = s.lease(7).unwrap().unwrap();
    assert_eq!((lease.ttl, lease.remaining_ttl), (10, 4));
    assert_eq!(lease.keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
    // A LEASE compare sees the attachment.
    let txn = Command::Txn(TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Lease(7),
            key: b"k1".to_vec(),
            range_end: b"k3".to_vec(),
        }],
        success: vec![],
        failure: vec![],
    });
    match s.apply(9, &txn).unwrap() {
        Some(Ok(Response::Txn(t))) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
    let before = s.revision();
    assert_eq!(
        s.apply(10, &Command::LeaseRevoke { id: 7 }).unwrap(),
        Some(Ok(Response::Revision(before + 1)))
    );
    assert!(get(&s, b"k1").is_none());
    assert!(get(&s, b"k2").is_none());
    assert!(get(&s, b"k3").is_some());
    assert_eq!(s.lease(7).unwrap(), None);
    assert_eq!(
        s.apply(11, &Command::LeaseRevoke { id: 7 }).unwrap(),
        Some(Err(RequestError::LeaseNotFound))
    );
    // The revoke's deletes are one revision, in the change log.
    let events = s.events(before + 1, 10, true).unwrap().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == before + 1));
    assert_eq!(events[0].prev_kv.as_ref().map(|kv| kv.lease), Some(7));
    assert_eq!(s.lease_ids().unwrap(), Vec::<i64>::new());
}

#[test]
fn ignore_value_and_errors() {
    let (_d, mut s) = store();
    let iv = Command::Put(PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        ..PutRequest::default()
    });
    assert_eq!(
        s.apply(1, &iv).unwrap(),
        Some(Err(RequestError::KeyNotFound))
    );
    s.apply(2, &put_cmd(b"k", b"v1", 0)).unwrap();
    s.apply(3, &iv).unwrap();
    let kv = get(&s, b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (b"v1".as_slice(), 2));
    let dup = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"x".to_vec(),
                ..PutRequest::default()
            }),
            RequestOp::Put(PutRequest {
                key: b"x".to_vec(),
                ..PutRequest::default()
            }),
        ],
        failure: vec![],
    });
    assert_eq!(
        s.apply(4, &dup).unwrap(),
        Some(Err(RequestError::DuplicateKey))
    );
    let r = RangeRequest {
        key: b"k".to_vec(),
        revision: 99,
        ..RangeRequest::default()
    };
    assert_eq!(s.range(&r).unwrap(), Err(RequestError::FutureRevision));
}

#[test]
fn nospace_alarm_refuses_writes_but_not_reads_or_deletes() {
    let disk = SimDisk::new();
    let config = MvccConfig {
        quota_bytes: 1,
        ..MvccConfig::default()
    };
    let mut s = MvccStore::open(disk, Path::new("/db/s.redb"), config).unwrap();
    let put = put_cmd(b"k", b"v", 0);
    assert_eq!(s.admit(&put).unwrap(), Err(RequestError::NoSpace));
    assert_eq!(s.admit(&Command::Noop).unwrap(), Ok(()));
    s.apply(1, &put).unwrap();
    s.apply(2, &Command::AlarmNoSpace).unwrap();
    assert!(s.nospace());
    assert_eq!(s.apply(3, &put).unwrap(), Some(Err(RequestError::NoSpace)));
    assert_eq!(
        s.apply(4, &Command::LeaseGrant { id: 1, ttl: 5 }).unwrap(),
        Some(Err(RequestError::NoSpace))
    );
    assert!(get(&s, b"k").is_some());
    let del = Command::DeleteRange(DeleteRangeRequest {
        key: b"k".to_vec(),
        ..DeleteRangeRequest::default()
    });
    assert!(matches!(s.apply(5, &del).unwrap(), Some(Ok(_))));
    s.apply(6, &Command::AlarmDisarm).unwrap();
    assert!(matches!(s.apply(7, &put).unwrap(), Some(Ok(_))));
}

#[test]
fn alarms_name_members_and_survive_a_reopen() {
    let disk = SimDisk::new();
    let path = Path::new("/db/alarms.redb");
    let mut s = MvccStore::open(disk.clone(), path, MvccConfig::default()).unwrap();
    let put = put_cmd(b"k", b"v", 0);
    s.apply(1, &Command::AlarmActivate { member: 7 }).unwrap();
    s.apply(2, &Command::AlarmActivate { member: 0 }).unwrap();
    s.apply(3, &Command::AlarmActivate { member: 7 }).unwrap();
    assert_eq!(s.alarm_members(), [0, 7]);
    assert!(s.nospace());
    assert_eq!(s.apply(4, &put).unwrap(), Some(Err(RequestError::NoSpace)));
    s.apply(5, &Command::AlarmDeactivate { member: 0 }).unwrap();
    assert_eq!(s.alarm_members(), [7]);
    assert_eq!(s.apply(6, &put).unwrap(), Some(Err(RequestError::NoSpace)));
    s.sync().unwrap();
    drop(s);
    let mut s = MvccStore::open(disk, path, MvccConfig::default()).unwrap();
    assert_eq!(s.alarm_members(), [7], "alarms are durable");
    assert!(s.nospace());
    s.apply(7, &Command::AlarmDeactivate { member: 7 }).unwrap();
    assert!(!s.nospace() && s.alarm_members().is_empty());
    assert!(matches!(s.apply(8, &put).unwrap(), Some(Ok(_))));
    // The member-less form written before raises member 0's alarm; disarm clears all.
    s.apply(9, &Command::AlarmNoSpace).unwrap();
    s.apply(10, &Command::AlarmActivate { member: 3 }).unwrap();
    assert_eq!(s.alarm_members(), [0, 3]);
    s.apply(11, &Command::AlarmDisarm).unwrap();
    assert!(!s.nospace() && s.alarm_members().is_empty());
}

#[test]
fn apply_is_idempotent_and_survives_power_cuts() {
    let (disk, mut s) = store();
    let cmds: Vec<Command> = (0..40u8)
        .map(|i| put_cmd(&[b'k', i % 7], &[i], 0))
        .collect();
    for (i, c) in cmds.iter().enumerate().take(20) {
        s.apply(i as u64 + 1, c).unwrap();
    }
    assert_eq!(s.sync().unwrap(), 20);
    for (i, c) in cmds.iter().enumerate().skip(20) {
        s.apply(i as u64 + 1, c).unwrap();
    }
    let hash = s.hash().unwrap();
    // Replaying everything changes nothing.
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(s.apply(i as u64 + 1, c).unwrap(), None);
    }
    assert_eq!(s.hash().unwrap(), hash);
    drop(s);
    disk.power_cut(Tear::Prefix, &mut SmallRng::seed_from_u64(3));
    let mut s = MvccStore::open(disk, Path::new("/db/state.redb"), MvccConfig::default()).unwrap();
    assert!(s.applied_index() >= 20);
    for (i, c) in cmds.iter().enumerate() {
        s.apply(i as u64 + 1, c).unwrap();
    }
    assert_eq!(s.applied_index(), 40);
    assert_eq!(s.hash().unwrap(), hash);
}

// Power cuts at random points, including in the middle of redb commits (a failing sync),
// then replay of the "WAL" (the command list) from the applied index: the store ends in
// exactly the state of one that never crashed.
#[test]
fn power_cuts_then_replay_equal_a_store_that_never_stopped() {
    use rand::Rng;
    for seed in 0..24u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let cmds: Vec<Command> = (0..400)
            .map(|i| match rng.gen_range(0..8) {
                0 => Command::DeleteRange(DeleteRangeRequest {
                    key: vec![b'k', rng.gen_range(0..20)],
                    range_end: vec![b'k', rng.gen_range(0..20)],
                    prev_kv: false,
                }),
                1 => Command::Compact { revision: i / 2 },
                _ => put_cmd(
                    &[b'k', rng.gen_range(0..20)],
                    &vec![i as u8; rng.gen_range(0..200)],
                    0,
                ),
            })
            .collect();
        let (_d, mut reference) = store();
        for (i, c) in cmds.iter().enumerate() {
            reference.apply(i as u64 + 1, c).unwrap();
        }
        while !reference.compact_step().unwrap() {}

        let disk = SimDisk::new();
        let config = MvccConfig {
            durable_every_commits: 8,
            compaction_batch: 5,
            ..MvccConfig::default()
        };
        let path = Path::new("/db/state.redb");
        let mut s = MvccStore::open(disk.clone(), path, config.clone()).unwrap();
        let mut crashes = 0;
        loop {
            let from = s.applied_index() as usize;
            if from == cmds.len() {
                break;
            }
            if crashes < 4 {
                disk.fail_syncs_after(Some(rng.gen_range(0..6)));
            }
            let mut failed = false;
            let mut i = from;
            while i < cmds.len() {
                let n = rng.gen_range(1..6).min(cmds.len() - i);
                let batch: Vec<(u64, &Command)> =
                    (i..i + n).map(|j| (j as u64 + 1, &cmds[j])).collect();
                if s.apply_batch(&batch).is_err() || s.compact_step().is_err() {
                    failed = true;
                    break;
                }
                i += n;
            }
            if !failed && crashes >= 4 {
                break;
            }
            // What the WAL would be allowed to drop must survive the crash.
            let durable = s.durable_applied_index();
            assert!(durable <= s.applied_index());
            drop(s);
            let tear = [
                Tear::None,
                Tear::Prefix,
                Tear::PrefixThenZeros,
                Tear::Sectors,
            ][rng.gen_range(0..4)];
            disk.power_cut(tear, &mut rng);
            crashes += 1;
            s = MvccStore::open(disk.clone(), path, config.clone())
                .unwrap_or_else(|e| panic!("seed {seed}: reopen after crash: {e}"));
            assert!(s.applied_index() as usize <= cmds.len());
            assert!(
                s.applied_index() >= durable,
                "seed {seed}: durable index {durable} lost (store at {})",
                s.applied_index()
            );
            assert_eq!(
                s.durable_applied_index(),
                0,
                "nothing durable yet in this process"
            );
        }
        while !s.compact_step().unwrap() {}
        assert_eq!(s.applied_index() as usize, cmds.len());
        assert_eq!(s.dump().unwrap(), reference.dump().unwrap(), "seed {seed}");
        assert_eq!(s.hash().unwrap(), reference.hash().unwrap(), "seed {seed}");
    }
}

#[test]
fn a_damaged_database_file_is_an_error_naming_it() {
    use crate::disk::{Disk, DiskFile};
    let disk = SimDisk::new();
    let path = Path::new("/db/state.redb");
    disk.create_dir_all(Path::new("/db")).unwrap();
    let f = disk.open(path, true).unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    let junk: Vec<u8> = (0..20_000).map(|_| rand::Rng::gen(&mut rng)).collect();
    f.write_all_at(&junk, 0).unwrap();
    let err = MvccStore::open(disk, path, MvccConfig::default()).unwrap_err();
    assert!(err.to_string().contains("/db/state.redb"), "{err}");
}

// A flipped bit anywhere in the database file gives the right answer (the bit was in
// unused space), an error, or — for some damage to redb's own page structure, which redb
// 3.1 does not checksum on reads — a panic inside redb or a missing row; never a wrong
// value, because every row carries its own CRC32C.
#[test]
fn flipped_bits_in_the_database_never_give_wrong_answers() {
    let path = Path::new("/db/state.redb");
    let base = SimDisk::new();
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..RangeRequest::default()
    };
    let expected = {
        let mut s = MvccStore::open(base.clone(), path, MvccConfig::default()).unwrap();
        for i in 0..500u64 {
            let cmd = put_cmd(format!("k{i}").as_bytes(), &[i as u8; 100], (i % 2) as i64);
            if i == 0 {
                s.apply(1, &Command::LeaseGrant { id: 1, ttl: 5 }).unwrap();
            }
            s.apply(i + 2, &cmd).unwrap();
        }
        s.sync().unwrap();
        (s.range(&all).unwrap(), s.lease(1).unwrap())
    };
    let len = base.read_all(path).unwrap().len() as u64;
    let mut outcomes = BTreeMap::new();
    for seed in 0..200u64 {
        let d = base.fork();
        let mut rng = SmallRng::seed_from_u64(seed);
        let at = rand::Rng::gen_range(&mut rng, 0..len);
        d.flip_bit(path, at, (seed % 8) as u8).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let s = match MvccStore::open(d.clone(), path, MvccConfig::default()) {
                Err(_) => return "error",
                Ok(s) => s,
            };
            match (s.range(&all), s.lease(1)) {
                (Ok(r), Ok(l)) if (r.clone(), l.clone()) == expected => "right",
                (Ok(Ok(r)), Ok(l)) => {
                    // Rows may be missing (damage to redb's page structure, which redb
                    // does not checksum on reads), but nothing returned may differ.
                    let Ok(want) = &expected.0 else {
                        return "WRONG";
                    };
                    let subset = r.kvs.iter().all(|kv| want.kvs.contains(kv));
                    let lease_ok = match (&l, &expected.1) {
                        (Some(l), Some(w)) => l.keys.iter().all(|k| w.keys.contains(k)),
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                    if subset && lease_ok {
                        "rows missing"
                    } else {
                        "WRONG"
                    }
                }
                _ => "error",
            }
        }));
        *outcomes.entry(r.unwrap_or("panic in redb")).or_insert(0) += 1;
    }
    assert_eq!(outcomes.get("WRONG"), None, "{outcomes:?}");
    assert!(
        outcomes.get("error").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
}

/// A damaged database file is an error at open, never a panic, wherever the damage is.
#[test]
fn corrupt_files_fail_to_open_cleanly() {
    let (disk, mut s) = store();
    for i in 0..50u32 {
        let p = PutRequest {
            key: format!("k{i}").into_bytes(),
            value: vec![i as u8; 100],
            ..PutRequest::default()
        };
        s.apply(u64::from(i) + 1, &Command::Put(p)).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    let path = Path::new("/db/state.redb");
    let len = disk.read_all(path).unwrap().len() as u64;
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut outcomes = (0, 0);
    for step in 0..64u64 {
        let d = disk.fork();
        let offset = (step * 7919) % len;
        for b in 0..8 {
            d.flip_bit(path, (offset + b * 13) % len, (b % 8) as u8)
                .unwrap();
        }
        // Either the damage is detected (an error) or it hit unused bytes (opens); the
        // test fails only on a panic escaping `open`.
        match MvccStore::open(d, path, MvccConfig::default()) {
            Ok(_) => outcomes.0 += 1,
            Err(_) => outcomes.1 += 1,
        }
    }
    std::panic::set_hook(prev_hook);
    assert_eq!(outcomes.0 + outcomes.1, 64);
}

/// Deleting every key, compacting at the delete's revision and defragmenting gives the
/// space back (etcd's documented NOSPACE recovery), although the tombstones at the
/// compacted revision itself are kept for watches.
#[test]
fn compaction_at_a_delete_frees_the_deleted_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = MvccStore::open(
        crate::disk::RealDisk,
        dir.path().join("s.redb"),
        MvccConfig::default(),
    )
    .unwrap();
    let mut idx = 1;
    for i in 0..60u32 {
        let p = PutRequest {
            key: format!("q/{i:04}").into_bytes(),
            value: vec![b'q'; 100 * 1024],
            ..PutRequest::default()
        };
        s.apply(idx, &Command::Put(p)).unwrap();
        idx += 1;
    }
    let before = s.size_in_use_bytes().unwrap();
    let d = DeleteRangeRequest {
        key: b"q/".to_vec(),
        range_end: b"q0".to_vec(),
        prev_kv: false,
    };
    s.apply(idx, &Command::DeleteRange(d)).unwrap();
    idx += 1;
    let rev = s.revision();
    s.apply(idx, &Command::Compact { revision: rev }).unwrap();
    while !s.compact_step().unwrap() {}
    s.defragment().unwrap();
    let after = s.size_in_use_bytes().unwrap();
    assert!(after * 10 < before, "in use {before} -> {after}");
    // The deletions at the compacted revision are still there for a watch from it.
    let events = s.events(rev, 1000, false).unwrap().unwrap();
    assert_eq!(events.len(), 60);
    assert!(events.iter().all(|e| e.kind == EventKind::Delete));
}

#[test]
fn background_flush_runs_ahead_of_the_periodic_durable_commit() {
    let disk = SimDisk::new();
    let config = MvccConfig {
        durable_every_commits: 8,
        background_flush: true,
        // One commit per apply: this test counts commits.
        batches_per_commit: 1,
        ..MvccConfig::default()
    };
    let mut s = MvccStore::open(disk.clone(), Path::new("/db/state.redb"), config).unwrap();
    let put = |s: &mut MvccStore<SimDisk>, i: u64| {
        s.apply(i, &put_cmd(format!("k{i}").as_bytes(), b"v", 0))
            .unwrap();
    };
    let base = disk.sync_count();
    for i in 1..=5 {
        put(&mut s, i);
    }
    assert_eq!(disk.sync_count(), base, "lazy commits do not sync");
    // The sixth lazy commit is three quarters of the way to the durable one: a flush.
    put(&mut s, 6);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disk.sync_count() == base {
        assert!(std::time::Instant::now() < deadline, "no background flush");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        s.durable_applied_index(),
        0,
        "a background flush is not a commit"
    );
    put(&mut s, 7);
    put(&mut s, 8);
    assert_eq!(s.durable_applied_index(), 8);
}

/// A store written in layout 1 (versions ordered by key in `key_revs`, a change log in
/// `rev_keys`) is converted when opened, and reads, history and writes carry on.
#[test]
fn a_layout_1_store_is_converted_at_open() {
    use redb::{ReadableDatabase, TableHandle};
    let (disk, mut s) = store();
    let mut index = 0;
    let mut apply = |s: &mut MvccStore<SimDisk>, cmd: Command| {
        index += 1;
        s.apply(index, &cmd).unwrap().unwrap().unwrap();
    };
    apply(&mut s, Command::LeaseGrant { id: 7, ttl: 60 });
    for i in 0..40u8 {
        apply(
            &mut s,
            put_cmd(&[b'k', i % 9, 0], &[i; 30], if i % 4 == 0 { 7 } else { 0 }),
        );
    }
    apply(
        &mut s,
        Command::DeleteRange(DeleteRangeRequest {
            key: vec![b'k', 3],
            range_end: vec![b'k', 6],
            prev_kv: false,
        }),
    );
    apply(&mut s, Command::Compact { revision: 20 });
    while !s.compact_step().unwrap() {}
    apply(&mut s, put_cmd(b"late", b"v", 0));
    let views = |s: &MvccStore<SimDisk>| {
        (20..=s.revision())
            .map(|at| {
                s.range(&RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: at,
                    ..RangeRequest::default()
                })
                .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (dump, before, events, lease) = (
        s.dump().unwrap(),
        views(&s),
        s.events(20, usize::MAX, true).unwrap(),
        s.lease(7).unwrap(),
    );
    let txn = s.db().unwrap().begin_write().unwrap();
    {
        let mut key_revs = txn.open_table(LEGACY_KEY_REVS).unwrap();
        let mut rev_keys = txn.open_table(LEGACY_REV_KEYS).unwrap();
        for (key, rev, v) in &dump {
            let k = key_rev(key, *rev);
            let version = v.clone().map_or(Version::Tombstone, Version::Live);
            key_revs
                .insert(k.as_slice(), encode_version(&k, &version).as_slice())
                .unwrap();
            let r = rev.to_bytes();
            rev_keys
                .insert(r.as_slice(), seal(&r, key).as_slice())
                .unwrap();
        }
    }
    assert!(txn.delete_table(REVS).unwrap());
    txn.commit().unwrap();
    let path = s.path().to_path_buf();
    drop(s);

    let mut s = MvccStore::open(disk.clone(), &path, MvccConfig::default()).unwrap();
    assert_eq!(s.dump().unwrap(), dump);
    assert_eq!(views(&s), before);
    assert_eq!(s.events(20, usize::MAX, true).unwrap(), events);
    let tables: Vec<String> = s
        .db()
        .unwrap()
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert!(
        !tables.iter().any(|t| t == "key_revs" || t == "rev_keys"),
        "{tables:?}"
    );
    assert_eq!(s.lease(7).unwrap(), lease);
    apply(&mut s, put_cmd(b"after", b"v", 7));
    assert_eq!(get(&s, b"after").unwrap().lease, 7);
    drop(s);
    let s = MvccStore::open(disk, &path, MvccConfig::default()).unwrap();
    assert_eq!(get(&s, b"after").unwrap().value, b"v");
}

/// A batch that fails half-way changes nothing: neither the table nor the key index.
#[test]
fn a_failed_batch_leaves_no_trace_in_the_index() {
    let (_disk, mut s) = store();
    let a = put_cmd(b"a", b"1", 0);
    let b = put_cmd(b"b", b"2", 0);
    let err = s.apply_batch(&[(1, &a), (3, &b)]).unwrap_err();
    assert!(
        matches!(err, crate::errors::StoreError::ApplyGap { .. }),
        "{err}"
    );
    assert_eq!(s.indexed_keys(), 0);
    assert_eq!(get(&s, b"a"), None);
    assert_eq!(s.applied_index(), 0);
    s.apply_batch(&[(1, &a), (2, &b)]).unwrap();
    assert_eq!(get(&s, b"a").unwrap().mod_revision, 2);
    assert_eq!(get(&s, b"b").unwrap().mod_revision, 3);
}

/// Guarantee 7: batches kept in an open transaction read exactly as committed ones. The
/// same random commands, in random batches, go to a store committing every batch and to
/// one committing every eighth; after each batch their ranges (now and in the past),
/// watch events (with previous versions) and leases agree, and so do their files at the
/// end. A reader of the file as a whole (`hash_kv`) commits the open transaction on the
/// way; the stores still agree after it.
#[test]
fn deferred_commits_read_like_committed_ones() {
    use rand::Rng;
    for seed in 0..16u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let open = |batches_per_commit| {
            MvccStore::open(
                SimDisk::new(),
                Path::new("/db/state.redb"),
                MvccConfig {
                    batches_per_commit,
                    ..MvccConfig::default()
                },
            )
            .unwrap()
        };
        let (mut each, mut deferred) = (open(1), open(8));
        let mut index = 0u64;
        let mut seen_open = 0;
        for _ in 0..120 {
            let n = rng.gen_range(1..6);
            let cmds: Vec<Command> = (0..n)
                .map(|_| {
                    let key = vec![b'k', rng.gen_range(0..12)];
                    match rng.gen_range(0..20) {
                        0 => Command::LeaseGrant {
                            id: rng.gen_range(1..4),
                            ttl: 10,
                        },
                        1 => Command::LeaseRevoke {
                            id: rng.gen_range(1..4),
                        },
                        2 => Command::Compact {
                            revision: (each.revision() - rng.gen_range(0..20)).max(1),
                        },
                        3..=5 => Command::DeleteRange(DeleteRangeRequest {
                            range_end: vec![b'k', rng.gen_range(0..12)],
                            key,
                            prev_kv: true,
                        }),
                        6 => put_cmd(&key, b"leased", rng.gen_range(1..4)),
                        _ => put_cmd(&key, &vec![b'v'; rng.gen_range(0..300)], 0),
                    }
                })
                .collect();
            let batch: Vec<(u64, &Command)> = cmds
                .iter()
                .map(|c| {
                    index += 1;
                    (index, c)
                })
                .collect();
            let want = each.apply_batch(&batch).unwrap();
            assert_eq!(deferred.apply_batch(&batch).unwrap(), want, "seed {seed}");
            if rng.gen_bool(0.3) {
                each.compact_step().unwrap();
                deferred.compact_step().unwrap();
            }
            if deferred.open_batches > 0 {
                seen_open += 1;
            }
            let now = each.revision();
            assert_eq!(deferred.revision(), now);
            for at in [0, rng.gen_range(0..=now)] {
                let r = RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: at,
                    ..RangeRequest::default()
                };
                assert_eq!(deferred.range(&r).unwrap(), each.range(&r).unwrap());
            }
            let from = rng.gen_range(0..=now + 1);
            let with_prev = rng.gen_bool(0.5);
            let max = rng.gen_range(1..200);
            assert_eq!(
                deferred.events(from, max, with_prev).unwrap(),
                each.events(from, max, with_prev).unwrap(),
                "seed {seed}: events from {from}"
            );
            for id in 1..4 {
                assert_eq!(deferred.lease(id).unwrap(), each.lease(id).unwrap());
            }
            if rng.gen_bool(0.05) {
                assert_eq!(deferred.hash_kv(0).unwrap(), each.hash_kv(0).unwrap());
                let open = deferred.open.lock().unwrap().0.is_some();
                assert!(!open, "hash_kv commits what is open");
            }
        }
        assert!(
            seen_open > 10,
            "seed {seed}: batches were deferred {seen_open} times"
        );
        while !each.compact_step().unwrap() {}
        while !deferred.compact_step().unwrap() {}
        assert_eq!(deferred.dump().unwrap(), each.dump().unwrap());
        assert_eq!(deferred.hash().unwrap(), each.hash().unwrap());
    }
}

/// Guarantee 7: a store dropped with batches in its open transaction commits them (as
/// the commit per batch did), and a power cut loses at most what was not durable, which
/// the WAL replays.
#[test]
fn deferred_batches_survive_a_drop_and_are_replayed_after_a_power_cut() {
    let (disk, mut s) = store();
    for i in 1..=5u64 {
        s.apply(i, &put_cmd(&[b'k', i as u8], b"v", 0)).unwrap();
    }
    assert!(s.open_batches > 0, "the default defers commits");
    assert_eq!(s.durable_applied_index(), 0);
    let path = s.path().to_path_buf();
    drop(s);
    let mut s = MvccStore::open(disk.clone(), &path, MvccConfig::default()).unwrap();
    assert_eq!(
        s.applied_index(),
        5,
        "dropping the store committed its open batches"
    );
    for i in 6..=9u64 {
        s.apply(i, &put_cmd(&[b'k', i as u8], b"v", 0)).unwrap();
    }
    assert_eq!(s.sync().unwrap(), 9);
    for i in 10..=12u64 {
        s.apply(i, &put_cmd(&[b'k', i as u8], b"v", 0)).unwrap();
    }
    // A power cut: nothing after the sync was durable.
    std::mem::forget(s);
    disk.power_cut(Tear::None, &mut SmallRng::seed_from_u64(1));
    let mut s = MvccStore::open(disk, &path, MvccConfig::default()).unwrap();
    assert_eq!(s.applied_index(), 9);
    for i in 10..=12u64 {
        s.apply(i, &put_cmd(&[b'k', i as u8], b"v", 0)).unwrap();
    }
    assert_eq!(get(&s, &[b'k', 12]).unwrap().value, b"v");
    assert_eq!(s.indexed_keys(), 12);
}
