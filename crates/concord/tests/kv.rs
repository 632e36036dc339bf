//! End-to-end tests of the KV service (Range, Put, DeleteRange, Txn, Compact) against a real
//! `concord server`, asserting etcd v3's documented semantics and error strings.

mod common;

use common::{expect_err, Cluster, BIN};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

fn values(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect()
}

async fn put_rev(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .expect("put")
        .header()
        .expect("put header")
        .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_header_prev_kv_and_versions() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;

    let r = c.put("a", "1", None).await.expect("put a=1");
    let h = r.header().expect("header");
    assert_ne!(h.cluster_id(), 0, "cluster_id must be set");
    assert_ne!(h.member_id(), 0, "member_id must be set");
    assert!(h.raft_term() > 0, "raft_term must be > 0");
    assert!(r.prev_key().is_none(), "no prev_kv unless asked");
    let r1 = h.revision();
    assert!(
        r1 >= 2,
        "first write of a fresh store is revision 2, got {r1}"
    );

    let r = c
        .put("a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put a=2");
    assert_eq!(r.header().unwrap().revision(), r1 + 1, "+1 per write");
    let prev = r.prev_key().expect("prev_kv requested");
    assert_eq!(prev.value(), b"1");
    assert_eq!(prev.version(), 1);
    assert_eq!(prev.mod_revision(), r1);

    // prev_kv on a new key: absent.
    let r = c
        .put("fresh", "x", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put fresh");
    assert!(r.prev_key().is_none());

    let g = c.get("a", None).await.expect("get a");
    assert_eq!(g.kvs().len(), 1);
    let kv = &g.kvs()[0];
    assert_eq!(kv.value(), b"2");
    assert_eq!(kv.create_revision(), r1);
    assert_eq!(kv.mod_revision(), r1 + 1);
    assert_eq!(kv.version(), 2);
    assert_eq!(kv.lease(), 0);
    assert_eq!(g.count(), 1);
    assert!(!g.more());
    // A read does not bump the revision: the header carries the store's current revision.
    assert_eq!(g.header().unwrap().revision(), r1 + 2);

    // A missing key: no kvs, count 0.
    let g = c.get("missing", None).await.expect("get missing");
    assert!(g.kvs().is_empty());
    assert_eq!(g.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_revision_increments_once_per_write() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let mut rev = put_rev(&mut c, "h0", "v").await;
    for i in 1..10 {
        let r = put_rev(&mut c, &format!("h{i}"), "v").await;
        assert_eq!(r, rev + 1, "put {i}");
        rev = r;
    }
    let d = c.delete("h0", None).await.expect("delete");
    assert_eq!(d.deleted(), 1);
    assert_eq!(
        d.header().unwrap().revision(),
        rev + 1,
        "a delete is a write"
    );
    rev += 1;
    // Deleting nothing changes nothing.
    let d = c.delete("h0", None).await.expect("delete again");
    assert_eq!(d.deleted(), 0);
    assert_eq!(
        d.header().unwrap().revision(),
        rev,
        "empty delete is not a write"
    );
    // A txn with two puts is one revision.
    let t = c
        .txn(Txn::new().and_then([TxnOp::put("t1", "a", None), TxnOp::put("t2", "b", None)]))
        .await
        .expect("txn");
    assert_eq!(t.header().unwrap().revision(), rev + 1);
    let g = c
        .get("t", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get t*");
    assert!(g.kvs().iter().all(|kv| kv.mod_revision() == rev + 1));
    // A read-only txn is not a write.
    let t = c
        .txn(Txn::new().and_then([TxnOp::get("t1", None)]))
        .await
        .expect("read txn");
    assert_eq!(t.header().unwrap().revision(), rev + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_ignore_value_and_ignore_lease() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;

    expect_err(
        c.put("nokey", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        "etcdserver: key not found",
    );
    expect_err(
        c.put("nokey", "", Some(PutOptions::new().with_ignore_lease()))
            .await,
        "etcdserver: key not found",
    );

    let lease = c.lease_grant(60, None).await.expect("grant").id();
    c.put("k", "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), lease);

    // ignore_lease keeps the lease while changing the value.
    c.put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("ignore_lease");
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"v2");
    assert_eq!(kv.lease(), lease, "ignore_lease keeps the current lease");
    assert_eq!(kv.version(), 2);

    // ignore_value keeps the value; lease 0 detaches the lease.
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("ignore_value");
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"v2", "ignore_value keeps the current value");
    assert_eq!(kv.lease(), 0, "a put without lease detaches it");
    assert_eq!(kv.version(), 3);

    // Contradictory options are rejected with etcd's messages.
    expect_err(
        c.put("k", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        "etcdserver: value is provided",
    );
    expect_err(
        c.put(
            "k",
            "x",
            Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
        )
        .await,
        "etcdserver: lease is provided",
    );
}

async fn seed_range_keys(c: &mut Client) {
    for k in ["a", "b", "c", "foo1", "foo2", "foo3", "z"] {
        c.put(k, format!("val-{k}"), None).await.expect("seed put");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prefix_range_from_key_and_all() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    seed_range_keys(&mut c).await;

    let g = c
        .get("foo", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["foo1", "foo2", "foo3"]);
    assert_eq!(values(g.kvs()), ["val-foo1", "val-foo2", "val-foo3"]);
    assert_eq!(g.count(), 3);

    let g = c
        .get("b", Some(GetOptions::new().with_range("foo2")))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["b", "c", "foo1"], "range_end is exclusive");

    let g = c
        .get("foo2", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(
        keys(g.kvs()),
        ["foo2", "foo3", "z"],
        "range_end \\0 = all keys >= key"
    );

    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["a", "b", "c", "foo1", "foo2", "foo3", "z"]);

    // An empty range (range_end <= key) returns nothing.
    let g = c
        .get("z", Some(GetOptions::new().with_range("a")))
        .await
        .unwrap();
    assert!(g.kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_limit_more_count_keys_only_count_only_serializable() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    seed_range_keys(&mut c).await;

    let g = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["foo1", "foo2"]);
    assert!(g.more(), "more: keys remain beyond the limit");
    assert_eq!(
        g.count(),
        3,
        "count is the total in range, not the page size"
    );

    let g = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(3)))
        .await
        .unwrap();
    assert_eq!(g.kvs().len(), 3);
    assert!(!g.more());

    let g = c
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["foo1", "foo2", "foo3"]);
    assert!(g.kvs().iter().all(|kv| kv.value().is_empty()), "keys_only");

    let g = c
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert!(g.kvs().is_empty(), "count_only returns no kvs");
    assert_eq!(g.count(), 3);

    let g = c
        .get("foo2", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(values(g.kvs()), ["val-foo2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sorted() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    // Created in order k3, k1, k2; values in another order; versions differ.
    c.put("s/k3", "b", None).await.unwrap();
    c.put("s/k1", "c", None).await.unwrap();
    c.put("s/k2", "a", None).await.unwrap();
    c.put("s/k3", "b", None).await.unwrap(); // k3: version 2, newest mod
    c.put("s/k3", "b", None).await.unwrap(); // k3: version 3
    c.put("s/k1", "c", None).await.unwrap(); // k1: version 2, newest mod

    let sorted = |t, o| GetOptions::new().with_prefix().with_sort(t, o);
    let g = c
        .get("s/", Some(sorted(SortTarget::Key, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["s/k3", "s/k2", "s/k1"]);
    let g = c
        .get("s/", Some(sorted(SortTarget::Create, SortOrder::Ascend)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["s/k3", "s/k1", "s/k2"]);
    let g = c
        .get("s/", Some(sorted(SortTarget::Mod, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["s/k1", "s/k3", "s/k2"]);
    let g = c
        .get("s/", Some(sorted(SortTarget::Version, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["s/k3", "s/k1", "s/k2"]);
    let g = c
        .get("s/", Some(sorted(SortTarget::Value, SortOrder::Ascend)))
        .await
        .unwrap();
    assert_eq!(values(g.kvs()), ["a", "b", "c"]);
    // etcd: sort order NONE with a target other than KEY sorts ascending.
    let g = c
        .get("s/", Some(sorted(SortTarget::Value, SortOrder::None)))
        .await
        .unwrap();
    assert_eq!(values(g.kvs()), ["a", "b", "c"]);
    // Sorting happens before the limit: the two largest values.
    let g = c
        .get(
            "s/",
            Some(sorted(SortTarget::Value, SortOrder::Descend).with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(values(g.kvs()), ["c", "b"]);
    assert!(g.more());
    assert_eq!(g.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_at_revision_and_revision_filters() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let ra = put_rev(&mut c, "f/a", "a1").await;
    let rb = put_rev(&mut c, "f/b", "b1").await;
    let rc = put_rev(&mut c, "f/c", "c1").await;
    let ra2 = put_rev(&mut c, "f/a", "a2").await;

    let g = c
        .get("f/a", Some(GetOptions::new().with_revision(ra)))
        .await
        .unwrap();
    assert_eq!(values(g.kvs()), ["a1"]);
    assert_eq!(g.kvs()[0].mod_revision(), ra);
    let g = c
        .get(
            "f/",
            Some(GetOptions::new().with_prefix().with_revision(rb)),
        )
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["f/a", "f/b"], "f/c did not exist at {rb}");
    let g = c
        .get("f/a", Some(GetOptions::new().with_revision(ra2)))
        .await
        .unwrap();
    assert_eq!(values(g.kvs()), ["a2"]);

    expect_err(
        c.get("f/a", Some(GetOptions::new().with_revision(ra2 + 1000)))
            .await,
        "etcdserver: mvcc: required revision is a future revision",
    );

    let pre = || GetOptions::new().with_prefix();
    let g = c
        .get("f/", Some(pre().with_min_mod_revision(rb)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["f/a", "f/b", "f/c"]);
    let g = c
        .get("f/", Some(pre().with_max_mod_revision(rc)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["f/b", "f/c"], "f/a was modified at {ra2}");
    let g = c
        .get("f/", Some(pre().with_min_create_revision(rb)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["f/b", "f/c"]);
    let g = c
        .get("f/", Some(pre().with_max_create_revision(ra)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["f/a"]);
    let g = c
        .get(
            "f/",
            Some(pre().with_min_mod_revision(rc).with_max_mod_revision(rc)),
        )
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["f/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_single_range_prefix_prev_kv() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    seed_range_keys(&mut c).await;

    let d = c.delete("a", None).await.unwrap();
    assert_eq!(d.deleted(), 1);
    assert!(d.prev_kvs().is_empty(), "no prev_kvs unless asked");
    assert!(c.get("a", None).await.unwrap().kvs().is_empty());

    let d = c
        .delete("b", Some(DeleteOptions::new().with_range("foo1")))
        .await
        .unwrap();
    assert_eq!(d.deleted(), 2, "b and c");

    let d = c
        .delete(
            "foo",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(d.deleted(), 3);
    let mut prev = d.prev_kvs().to_vec();
    prev.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(keys(&prev), ["foo1", "foo2", "foo3"]);
    assert_eq!(values(&prev), ["val-foo1", "val-foo2", "val-foo3"]);

    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["z"]);

    // A re-created key starts over: version 1, new create_revision.
    let r = put_rev(&mut c, "a", "again").await;
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.version(), 1);
    assert_eq!(kv.create_revision(), r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_branches() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let created = put_rev(&mut c, "tx", "m").await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();

    // (compare, expected outcome)
    let cases: Vec<(Compare, bool, &str)> = vec![
        (Compare::value("tx", CompareOp::Equal, "m"), true, "value ="),
        (
            Compare::value("tx", CompareOp::Equal, "x"),
            false,
            "value = (false)",
        ),
        (
            Compare::value("tx", CompareOp::Greater, "a"),
            true,
            "value >",
        ),
        (
            Compare::value("tx", CompareOp::Greater, "z"),
            false,
            "value > (false)",
        ),
        (Compare::value("tx", CompareOp::Less, "z"), true, "value <"),
        (
            Compare::value("tx", CompareOp::NotEqual, "m"),
            false,
            "value !=",
        ),
        (
            Compare::version("tx", CompareOp::Equal, 1),
            true,
            "version =",
        ),
        (
            Compare::version("tx", CompareOp::Greater, 0),
            true,
            "version >",
        ),
        (
            Compare::version("tx", CompareOp::Less, 1),
            false,
            "version <",
        ),
        (
            Compare::version("tx", CompareOp::NotEqual, 2),
            true,
            "version !=",
        ),
        (
            Compare::create_revision("tx", CompareOp::Equal, created),
            true,
            "create =",
        ),
        (
            Compare::create_revision("tx", CompareOp::Less, created),
            false,
            "create <",
        ),
        (
            Compare::mod_revision("tx", CompareOp::Equal, created),
            true,
            "mod =",
        ),
        (
            Compare::mod_revision("tx", CompareOp::Greater, created),
            false,
            "mod >",
        ),
        (
            Compare::mod_revision("tx", CompareOp::Less, created + 1),
            true,
            "mod <",
        ),
        (
            Compare::lease("leased", CompareOp::Equal, lease),
            true,
            "lease =",
        ),
        (
            Compare::lease("leased", CompareOp::NotEqual, lease),
            false,
            "lease !=",
        ),
        (Compare::lease("tx", CompareOp::Equal, 0), true, "lease = 0"),
        // A missing key has version 0 and create_revision 0: the "create if absent" idiom.
        (
            Compare::version("absent", CompareOp::Equal, 0),
            true,
            "absent version = 0",
        ),
        (
            Compare::create_revision("absent", CompareOp::Equal, 0),
            true,
            "absent create = 0",
        ),
        // Range compare: every key in range must satisfy it.
        (
            Compare::version("t", CompareOp::Greater, 0).with_prefix(),
            true,
            "range version >",
        ),
        (
            Compare::value("t", CompareOp::Equal, "m").with_prefix(),
            true,
            "range value =",
        ),
    ];
    for (cmp, expected, what) in cases {
        let t = c
            .txn(
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::get("tx", None)])
                    .or_else([TxnOp::get("leased", None)]),
            )
            .await
            .unwrap_or_else(|e| panic!("txn {what}: {e}"));
        assert_eq!(t.succeeded(), expected, "compare {what}");
        let resps = t.op_responses();
        assert_eq!(resps.len(), 1, "{what}: one op per branch");
        match &resps[0] {
            TxnOpResponse::Get(g) => {
                let want: &[u8] = if expected { b"tx" } else { b"leased" };
                assert_eq!(g.kvs()[0].key(), want, "{what}: wrong branch ran");
            }
            other => panic!("{what}: expected a range response, got {other:?}"),
        }
    }

    // Several compares are ANDed; the chosen branch's writes are applied, the other's not.
    let t = c
        .txn(
            Txn::new()
                .when([
                    Compare::value("tx", CompareOp::Equal, "m"),
                    Compare::version("tx", CompareOp::Equal, 99),
                ])
                .and_then([TxnOp::put("tx", "success", None)])
                .or_else([
                    TxnOp::put("tx", "failure", Some(PutOptions::new().with_prev_key())),
                    TxnOp::delete("leased", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("tx", None),
                ]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded());
    let resps = t.op_responses();
    assert_eq!(resps.len(), 3);
    match &resps[0] {
        TxnOpResponse::Put(p) => assert_eq!(p.prev_key().map(|kv| kv.value()), Some(&b"m"[..])),
        other => panic!("expected put response, got {other:?}"),
    }
    match &resps[1] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(values(d.prev_kvs()), ["v"]);
        }
        other => panic!("expected delete response, got {other:?}"),
    }
    match &resps[2] {
        // Reads inside a txn see the txn's earlier writes.
        TxnOpResponse::Get(g) => assert_eq!(values(g.kvs()), ["failure"]),
        other => panic!("expected range response, got {other:?}"),
    }
    let g = c.get("tx", None).await.unwrap();
    assert_eq!(values(g.kvs()), ["failure"]);
    assert!(c.get("leased", None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_nested_duplicate_keys_and_too_many_ops() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    c.put("n", "0", None).await.unwrap();

    // Nested txn (etcd >= 3.3): the inner compare is evaluated inside the outer success.
    let inner = Txn::new()
        .when([Compare::value("n", CompareOp::Equal, "0")])
        .and_then([TxnOp::put("n/inner", "yes", None)])
        .or_else([TxnOp::put("n/inner", "no", None)]);
    let t = c
        .txn(
            Txn::new()
                .when([Compare::version("n", CompareOp::Equal, 1)])
                .and_then([TxnOp::put("n/outer", "yes", None), TxnOp::txn(inner)]),
        )
        .await
        .expect("nested txn");
    assert!(t.succeeded());
    match &t.op_responses()[1] {
        TxnOpResponse::Txn(inner) => assert!(inner.succeeded()),
        other => panic!("expected a txn response, got {other:?}"),
    }
    assert_eq!(values(c.get("n/inner", None).await.unwrap().kvs()), ["yes"]);
    assert_eq!(values(c.get("n/outer", None).await.unwrap().kvs()), ["yes"]);

    // Writing the same key twice in one txn is refused.
    expect_err(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await,
        "etcdserver: duplicate key given in txn request",
    );
    // Also a put and a delete covering the same key.
    expect_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("dd/x", "1", None),
            TxnOp::delete("dd/", Some(DeleteOptions::new().with_prefix())),
        ]))
        .await,
        "etcdserver: duplicate key given in txn request",
    );
    assert!(
        c.get("d", None).await.unwrap().kvs().is_empty(),
        "nothing applied"
    );

    // Default --max-txn-ops is 128.
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("many/{i}"), "v", None))
        .collect();
    expect_err(
        c.txn(Txn::new().and_then(ops)).await,
        "etcdserver: too many operations in txn request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_then_old_revisions_are_gone() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let r1 = put_rev(&mut c, "c", "v1").await;
    let r2 = put_rev(&mut c, "c", "v2").await;
    let r3 = put_rev(&mut c, "c", "v3").await;

    c.compact(r2, None).await.expect("compact");
    expect_err(
        c.get("c", Some(GetOptions::new().with_revision(r1))).await,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let g = c
        .get("c", Some(GetOptions::new().with_revision(r2)))
        .await
        .expect("the compaction revision itself stays readable");
    assert_eq!(values(g.kvs()), ["v2"]);
    let g = c.get("c", None).await.unwrap();
    assert_eq!(values(g.kvs()), ["v3"]);
    assert_eq!(g.kvs()[0].mod_revision(), r3);
    assert_eq!(g.kvs()[0].version(), 3, "compaction keeps versions");

    expect_err(
        c.compact(r2, None).await,
        "etcdserver: mvcc: required revision has been compacted",
    );
    expect_err(
        c.compact(r1, None).await,
        "etcdserver: mvcc: required revision has been compacted",
    );
    expect_err(
        c.compact(r3 + 100, None).await,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Compacting to the current revision is allowed, with physical = wait for it.
    c.compact(
        r3,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact to current revision");
    assert_eq!(values(c.get("c", None).await.unwrap().kvs()), ["v3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_is_rejected() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    expect_err(
        c.put("", "v", None).await,
        "etcdserver: key is not provided",
    );
    expect_err(c.get("", None).await, "etcdserver: key is not provided");
    expect_err(c.delete("", None).await, "etcdserver: key is not provided");
    expect_err(
        c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
            .await,
        "etcdserver: key is not provided",
    );
    c.put("ok", "v", None).await.expect("node still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_larger_than_max_request_bytes_is_rejected() {
    let cluster = Cluster::builder(BIN, 1)
        .flag("--max-request-bytes", 1024 * 1024)
        .start()
        .await;
    let mut c = cluster.client(0).await;
    // etcd: a request above --max-request-bytes but within the gRPC receive limit
    // (max-request-bytes + 512 KiB) fails with "etcdserver: request is too large".
    let big = vec![b'x'; 1024 * 1024 + 200 * 1024];
    let e = expect_err(c.put("big", big, None).await, "request is too large");
    eprintln!("1.2 MiB put: {}", common::err_text(&e));
    // A 2 MiB request is refused too (etcd refuses it at the gRPC layer with
    // ResourceExhausted; "request is too large" is also accepted).
    let huge = vec![b'y'; 2 * 1024 * 1024];
    match c.put("huge", huge, None).await {
        Ok(r) => panic!("2 MiB put with --max-request-bytes 1 MiB succeeded: {r:?}"),
        Err(e) => {
            let text = common::err_text(&e);
            eprintln!("2 MiB put: {text}");
            assert!(
                text.contains("request is too large")
                    || text.contains("larger than max")
                    || text.starts_with("ResourceExhausted"),
                "unexpected error for a 2 MiB put: {text}"
            );
        }
    }
    assert!(c.get("big", None).await.unwrap().kvs().is_empty());
    // Just under the limit is fine, and the node keeps serving.
    let ok = vec![b'z'; 1024 * 1024 - 4096];
    c.put("almost", ok, None)
        .await
        .expect("put just under the limit");
    c.put("small", "v", None).await.expect("node still serves");
}
