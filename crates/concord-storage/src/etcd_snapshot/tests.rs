use std::path::Path;

use base64::Engine as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::*;
use crate::disk::SimDisk;
use crate::errors::RequestError;
use crate::mvcc::types::{Command, RangeRequest};
use crate::mvcc::MvccConfig;
use crate::snapshot::tests::random_command;

const ETCD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/etcd-3.4");

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(ETCD).join(name)).unwrap()
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&testdata(name)).unwrap()
}

fn store(disk: &SimDisk, name: &str) -> MvccStore<SimDisk> {
    MvccStore::open(
        disk.clone(),
        Path::new("/n").join(name),
        MvccConfig::default(),
    )
    .unwrap()
}

fn all_at(s: &MvccStore<SimDisk>, revision: i64) -> Result<Vec<KeyValue>, RequestError> {
    let r = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    };
    s.range(&r).unwrap().map(|r| r.kvs)
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .unwrap()
}

/// etcd's JSON (`-w json`) of a `get` as key-values.
fn etcd_kvs(v: &Value) -> Vec<KeyValue> {
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    v["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| KeyValue {
            key: b64(&kv["key"]),
            create_revision: int(&kv["create_revision"]),
            mod_revision: int(&kv["mod_revision"]),
            version: int(&kv["version"]),
            value: b64(&kv["value"]),
            lease: int(&kv["lease"]),
        })
        .collect()
}

#[test]
fn a_snapshot_from_etcd_3_4_imports_with_its_history() {
    let file = testdata("snapshot.db");
    // `etcdctl snapshot status` of the same file.
    let want = json("status.json");
    let st = status(&file).unwrap();
    assert_eq!(i64::from(st.hash), want["hash"].as_i64().unwrap());
    assert_eq!(st.revision, want["revision"].as_i64().unwrap());
    assert_eq!(st.total_keys as i64, want["totalKey"].as_i64().unwrap());
    assert_eq!(st.total_size as i64, want["totalSize"].as_i64().unwrap());

    let disk = SimDisk::new();
    let mut s = store(&disk, "a.redb");
    let report = s.import_etcd(&file).unwrap();
    assert_eq!((report.revision, report.compacted), (313, 9));
    assert!(report.not_imported.iter().any(|n| n.contains("member")));
    for rev in [9, 10, 12, 313] {
        let got = all_at(&s, rev).unwrap();
        assert_eq!(got, etcd_kvs(&json(&format!("get-{rev}.json"))), "at {rev}");
    }
    assert_eq!(all_at(&s, 8), Err(RequestError::Compacted));
    let lease = json("lease.json");
    let l = s.lease(lease["id"].as_i64().unwrap()).unwrap().unwrap();
    assert_eq!(l.ttl, lease["granted-ttl"].as_i64().unwrap());
    let keys: Vec<Vec<u8>> = lease["keys"].as_array().unwrap().iter().map(b64).collect();
    assert_eq!(l.keys, keys);
    // The next write continues etcd's revisions.
    let put = Command::Put(crate::mvcc::types::PutRequest {
        key: b"after".to_vec(),
        ..Default::default()
    });
    s.apply(s.applied_index() + 1, &put).unwrap();
    assert_eq!(s.revision(), 314);

    // Written back out, the history is the same, and reads back the same.
    let back = s.export_etcd().unwrap();
    let mut again = store(&disk, "b.redb");
    again.import_etcd(&back).unwrap();
    assert_eq!(again.dump().unwrap(), s.dump().unwrap());
    assert_eq!(status(&back).unwrap().revision, 314);
    assert!(matches!(
        again.import_etcd(&back),
        Err(EtcdSnapshotError::NotEmpty)
    ));
}

#[test]
fn export_and_import_keep_every_version_lease_and_revision() {
    for seed in 0..20u64 {
        let disk = SimDisk::new();
        let mut s = store(&disk, "a.redb");
        let mut rng = SmallRng::seed_from_u64(seed);
        for i in 1..=rng.gen_range(1..400) {
            s.apply(i, &random_command(&mut rng)).unwrap();
            if rng.gen_bool(0.05) {
                s.compact_step().unwrap();
            }
        }
        let file = s.export_etcd().unwrap();
        let mut t = store(&disk, "b.redb");
        let report = t.import_etcd(&file).unwrap();
        assert_eq!(t.dump().unwrap(), s.dump().unwrap(), "seed {seed}");
        assert_eq!(report.revision, s.revision(), "seed {seed}");
        assert_eq!(report.compacted, s.compacted_revision(), "seed {seed}");
        assert_eq!(t.lease_ids().unwrap(), s.lease_ids().unwrap());
        for id in s.lease_ids().unwrap() {
            assert_eq!(t.lease(id).unwrap(), s.lease(id).unwrap(), "seed {seed}");
        }
        for rev in s.compacted_revision().max(1)..=s.revision() {
            assert_eq!(all_at(&t, rev), all_at(&s, rev), "seed {seed} rev {rev}");
        }
        assert_eq!(t.hash_kv(0).unwrap(), s.hash_kv(0).unwrap(), "seed {seed}");
    }
}

#[test]
fn damaged_and_foreign_files_are_refused() {
    let file = testdata("snapshot.db");
    let mut s = store(&SimDisk::new(), "a.redb");
    // One flipped bit: the trailing SHA-256 no longer matches.
    let mut bad = file.clone();
    bad[5000] ^= 1;
    assert!(matches!(status(&bad), Err(EtcdSnapshotError::Digest)));
    assert!(matches!(
        s.import_etcd(&bad),
        Err(EtcdSnapshotError::Digest)
    ));
    // Without the trailer (a member's `snap/db`), the same flip reaches the reader.
    let raw = &file[..file.len() - 32];
    assert!(status(raw).is_ok());
    assert!(matches!(
        s.import_etcd(&file[..4096 * 3]),
        Err(EtcdSnapshotError::Bolt(_))
    ));
    assert!(matches!(
        s.import_etcd(b"CSNP not a bbolt file"),
        Err(EtcdSnapshotError::Bolt(_))
    ));
    // A bucket that does not hold what etcd writes.
    let junk = vec![(vec![0u8; 17], b"\xff\xff".to_vec())];
    let db = crate::bbolt::write(&[(KEY, &junk)]);
    assert!(matches!(
        s.import_etcd(&db),
        Err(EtcdSnapshotError::Malformed(_))
    ));
    // Nothing was written by the failed imports.
    assert!(s.is_empty().unwrap());
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..200 {
        let mut f = raw.to_vec();
        for _ in 0..rng.gen_range(1..20) {
            let i = rng.gen_range(0..f.len());
            f[i] ^= rng.gen_range(1..=255u8);
        }
        let _ = status(&f);
        let mut t = store(&SimDisk::new(), "c.redb");
        let _ = t.import_etcd(&f);
    }
}
