use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn ids_of(partitions: &[Partition]) -> Vec<u64> {
    partitions.iter().map(|p| p.id.0).collect()
}

/// g | 1 [b"", g) | 7 [g, p) | 3 [p, +inf)
fn three() -> RangePartitioner {
    let mut r = RangePartitioner::new(PartitionId(1));
    r.split(b"g", PartitionId(7)).unwrap();
    r.split(b"p", PartitionId(3)).unwrap();
    r
}

#[test]
fn new_covers_everything() {
    let r = RangePartitioner::new(PartitionId(5));
    for key in [&b""[..], b"a", &[0xff; 40]] {
        assert_eq!(r.lookup(key).id, PartitionId(5));
    }
    assert_eq!(r.validate(), Ok(()));
}

#[test]
fn lookup_respects_half_open_bounds() {
    let r = three();
    assert_eq!(r.lookup(b"").id, PartitionId(1));
    assert_eq!(r.lookup(b"f\xff\xff").id, PartitionId(1));
    assert_eq!(r.lookup(b"g").id, PartitionId(7));
    assert_eq!(r.lookup(b"g\0").id, PartitionId(7));
    assert_eq!(r.lookup(b"o").id, PartitionId(7));
    assert_eq!(r.lookup(b"p").id, PartitionId(3));
    assert_eq!(r.lookup(b"zzz").id, PartitionId(3));
    for key in [&b""[..], b"g", b"h", b"p", b"q"] {
        assert!(r.lookup(key).contains(key));
    }
}

#[test]
fn split_errors() {
    let mut r = three();
    assert_eq!(
        r.split(b"g", PartitionId(9)),
        Err(RangeError::SplitAtBoundary { id: PartitionId(7) })
    );
    assert_eq!(
        r.split(b"", PartitionId(9)),
        Err(RangeError::SplitAtBoundary { id: PartitionId(1) })
    );
    assert_eq!(
        r.split(b"k", PartitionId(3)),
        Err(RangeError::DuplicateId(PartitionId(3)))
    );
    assert_eq!(r, three(), "failed splits change nothing");
}

#[test]
fn split_then_merge_is_identity() {
    let mut r = three();
    assert_eq!(r.split(b"k", PartitionId(9)), Ok(PartitionId(7)));
    assert_eq!(ids_of(r.partitions()), [1, 7, 9, 3]);
    assert_eq!(r.get(PartitionId(9)).unwrap().start, b"k");
    assert_eq!(
        r.get(PartitionId(9)).unwrap().end.as_deref(),
        Some(&b"p"[..])
    );
    assert_eq!(r.merge(PartitionId(7)), Ok(PartitionId(9)));
    assert_eq!(r, three());
}

#[test]
fn merge_errors() {
    let mut r = three();
    assert_eq!(
        r.merge(PartitionId(3)),
        Err(RangeError::NoRightNeighbour(PartitionId(3)))
    );
    assert_eq!(
        r.merge(PartitionId(42)),
        Err(RangeError::UnknownPartition(PartitionId(42)))
    );
    assert_eq!(r.merge(PartitionId(1)), Ok(PartitionId(7)));
    assert_eq!(r.merge(PartitionId(1)), Ok(PartitionId(3)));
    assert_eq!(r, RangePartitioner::new(PartitionId(1)));
}

#[test]
fn overlapping_intervals() {
    let r = three();
    assert_eq!(ids_of(r.overlapping(b"", None)), [1, 7, 3]);
    assert_eq!(
        ids_of(r.overlapping(b"a", Some(b"g"))),
        [1],
        "end is exclusive"
    );
    assert_eq!(ids_of(r.overlapping(b"a", Some(b"g\0"))), [1, 7]);
    assert_eq!(ids_of(r.overlapping(b"g", Some(b"p"))), [7]);
    assert_eq!(ids_of(r.overlapping(b"h", None)), [7, 3]);
    assert!(r.overlapping(b"h", Some(b"h")).is_empty());
    assert!(r.overlapping(b"z", Some(b"a")).is_empty());
}

#[test]
fn from_partitions_rejects_broken_layouts() {
    let p = |id, start: &[u8], end: Option<&[u8]>| Partition {
        id: PartitionId(id),
        start: start.to_vec(),
        end: end.map(<[u8]>::to_vec),
    };
    let reason = |layout: Vec<Partition>| match RangePartitioner::from_partitions(layout) {
        Err(RangeError::InvalidLayout { reason, .. }) => reason,
        other => panic!("accepted: {other:?}"),
    };
    assert_eq!(reason(vec![]), "no partitions");
    assert_eq!(
        reason(vec![p(1, b"a", None)]),
        "first partition does not start at the empty key"
    );
    assert_eq!(
        reason(vec![p(1, b"", Some(b"g")), p(2, b"h", None)]),
        "end differs from the next start"
    );
    assert_eq!(
        reason(vec![p(1, b"", Some(b"g")), p(2, b"g", Some(b"z"))]),
        "last partition is bounded"
    );
    assert_eq!(
        reason(vec![p(1, b"", Some(b"g")), p(1, b"g", None)]),
        "duplicate partition id"
    );
    assert_eq!(
        reason(vec![p(1, b"", Some(b"")), p(2, b"", None)]),
        "empty or reversed partition"
    );
    assert!(RangePartitioner::from_partitions(three().partitions().to_vec()).is_ok());
}

#[test]
fn serde_round_trip_validates() {
    let r = three();
    let json = serde_json::to_string(&r).unwrap();
    let back: RangePartitioner = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let gap = r#"{"partitions":[{"id":1,"start":[],"end":[5]},{"id":2,"start":[6],"end":null}]}"#;
    assert!(serde_json::from_str::<RangePartitioner>(gap).is_err());
}

/// The naive model: start key -> id, scanned linearly.
type Model = BTreeMap<Vec<u8>, PartitionId>;

fn model_partitions(model: &Model) -> Vec<Partition> {
    let starts: Vec<&Vec<u8>> = model.keys().collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, start)| Partition {
            id: model[*start],
            start: start.to_vec(),
            end: starts.get(i + 1).map(|s| s.to_vec()),
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Split(Vec<u8>, u64),
    Merge(u64),
    Lookup(Vec<u8>),
    Overlapping(Vec<u8>, Option<Vec<u8>>),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet makes equal keys, prefixes and boundary hits common.
    proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0xff)], 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), 0u64..24).prop_map(|(k, id)| Op::Split(k, id)),
        1 => (0u64..24).prop_map(Op::Merge),
        1 => key().prop_map(Op::Lookup),
        1 => (key(), proptest::option::of(key())).prop_map(|(s, e)| Op::Overlapping(s, e)),
    ]
}

proptest! {
    #[test]
    fn prop_matches_naive_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut r = RangePartitioner::new(PartitionId(0));
        let mut model: Model = BTreeMap::from([(Vec::new(), PartitionId(0))]);
        for op in ops {
            match op {
                Op::Split(k, id) => {
                    let id = PartitionId(id);
                    let containing = model.range(..=k.clone()).next_back().map(|(s, i)| (s.clone(), *i));
                    let (start, left) = containing.expect("model covers b\"\"");
                    let expected = if model.values().any(|&i| i == id) {
                        Err(RangeError::DuplicateId(id))
                    } else if start == k {
                        Err(RangeError::SplitAtBoundary { id: left })
                    } else {
                        model.insert(k.clone(), id);
                        Ok(left)
                    };
                    prop_assert_eq!(r.split(&k, id), expected);
                }
                Op::Merge(id) => {
                    let id = PartitionId(id);
                    let start = model.iter().find(|(_, &i)| i == id).map(|(s, _)| s.clone());
                    let expected = match start {
                        None => Err(RangeError::UnknownPartition(id)),
                        Some(start) => {
                            let next = model
                                .range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
                                .next()
                                .map(|(s, i)| (s.clone(), *i));
                            match next {
                                None => Err(RangeError::NoRightNeighbour(id)),
                                Some((next_start, next_id)) => {
                                    model.remove(&next_start);
                                    Ok(next_id)
                                }
                            }
                        }
                    };
                    prop_assert_eq!(r.merge(id), expected);
                }
                Op::Lookup(k) => {
                    let expected = model_partitions(&model)
                        .into_iter()
                        .find(|p| p.contains(&k))
                        .expect("model covers every key");
                    prop_assert_eq!(r.lookup(&k), &expected);
                }
                Op::Overlapping(s, e) => {
                    let expected: Vec<Partition> = model_partitions(&model)
                        .into_iter()
                        .filter(|p| {
                            let interval_nonempty = e.as_ref().is_none_or(|e| s < *e);
                            let starts_before_end = e.as_ref().is_none_or(|e| p.start < *e);
                            let ends_after_start = p.end.as_ref().is_none_or(|pe| *pe > s);
                            interval_nonempty && starts_before_end && ends_after_start
                        })
                        .collect();
                    prop_assert_eq!(r.overlapping(&s, e.as_deref()), expected.as_slice());
                }
            }
            prop_assert_eq!(r.validate(), Ok(()));
            let expected = model_partitions(&model);
            prop_assert_eq!(r.partitions(), expected.as_slice());
        }
    }
}
