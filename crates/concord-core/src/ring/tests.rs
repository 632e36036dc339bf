use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn sample_keys(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("key-{i}").into_bytes())
        .collect()
}

fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<NodeId> {
    range.map(NodeId).collect()
}

/// Asserts guarantee 5 for one change: a key's owner changed iff its token is in exactly one
/// returned range, whose `from`/`to` are the old and new owners.
fn assert_moves_exact(before: &Ring, after: &Ring, moved: &[TokenRange], keys: &[Vec<u8>]) {
    for key in keys {
        let token = Token::of_key(key);
        let old = before.owner_of_token(token);
        let new = after.owner_of_token(token);
        let hits: Vec<&TokenRange> = moved.iter().filter(|r| r.contains(token)).collect();
        if old == new {
            assert!(hits.is_empty(), "unmoved token {token} in {hits:?}");
        } else {
            assert_eq!(hits.len(), 1, "moved token {token} in {hits:?}");
            assert_eq!(hits[0].from, old);
            assert_eq!(hits[0].to, new);
        }
    }
    // The range boundaries themselves are the tokens most likely to be off by one.
    for range in moved {
        for token in [range.end, Token(range.start.0.wrapping_add(1))] {
            assert_ne!(
                before.owner_of_token(token),
                after.owner_of_token(token),
                "boundary {token} of {range:?} did not move"
            );
        }
        if !range.is_full() {
            assert_eq!(
                before.owner_of_token(range.start) == after.owner_of_token(range.start),
                !moved.iter().any(|r| r.contains(range.start)),
            );
        }
    }
}

fn assert_within_15_percent(values: &BTreeMap<NodeId, f64>) {
    let mean = values.values().sum::<f64>() / values.len() as f64;
    for (node, value) in values {
        let deviation = (value - mean) / mean;
        assert!(
            deviation.abs() <= 0.15,
            "node {node}: {value} deviates {:.1}% from mean {mean}",
            deviation * 100.0
        );
    }
}

#[test]
fn hash_key_is_stable_xxh3() {
    // Reference values of XXH3-64 (seed 0); a change here is a persistent-format change.
    assert_eq!(hash_key(b""), 0x2d06_8005_38d3_94c2);
    assert_eq!(hash_key(b"a"), 0xe6c6_32b6_1e96_4e1f);
    assert_eq!(
        vnode_token(NodeId(1), 0),
        Token(hash_key(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    );
}

#[test]
fn invalid_vnode_counts_are_rejected() {
    assert_eq!(
        Ring::new(0),
        Err(RingError::InvalidVnodeCount {
            count: 0,
            max: MAX_VNODES_PER_NODE
        })
    );
    assert!(Ring::new(MAX_VNODES_PER_NODE + 1).is_err());
    assert!(Ring::new(MAX_VNODES_PER_NODE).is_ok());
}

#[test]
fn membership_errors_are_typed() {
    let mut ring = Ring::with_nodes(8, ids(1..=3)).unwrap();
    assert_eq!(
        ring.add_node(NodeId(2)),
        Err(RingError::NodeExists(NodeId(2)))
    );
    assert_eq!(
        ring.remove_node(NodeId(9)),
        Err(RingError::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        Ring::with_nodes(8, [NodeId(1), NodeId(1)]),
        Err(RingError::NodeExists(NodeId(1)))
    );
    assert_eq!(
        ring,
        Ring::with_nodes(8, ids(1..=3)).unwrap(),
        "errors change nothing"
    );
}

#[test]
fn empty_ring_has_no_owner() {
    let ring = Ring::new(16).unwrap();
    assert_eq!(ring.owner(b"x"), None);
    assert!(ring.preference_list(b"x", 3).is_empty());
    assert!(ring.ownership().is_empty());
}

#[test]
fn balance_10_nodes_256_vnodes() {
    let ring = Ring::with_nodes(256, ids(1..=10)).unwrap();
    let owned = ring.ownership();
    assert_eq!(owned.values().sum::<u128>(), 1u128 << 64);
    let fractions: BTreeMap<NodeId, f64> = owned
        .iter()
        .map(|(&n, &o)| (n, o as f64 / 2f64.powi(64)))
        .collect();
    assert_within_15_percent(&fractions);

    let mut counts: BTreeMap<NodeId, f64> = BTreeMap::new();
    for key in sample_keys(100_000) {
        *counts.entry(ring.owner(&key).unwrap()).or_insert(0.0) += 1.0;
    }
    assert_eq!(counts.len(), 10);
    assert_within_15_percent(&counts);
}

#[test]
fn adding_11th_node_moves_about_one_eleventh_only_to_it() {
    let before = Ring::with_nodes(256, ids(1..=10)).unwrap();
    let mut after = before.clone();
    let moved = after.add_node(NodeId(11)).unwrap();
    assert_eq!(after, Ring::with_nodes(256, ids(1..=11)).unwrap());

    let keys = sample_keys(100_000);
    let mut moved_keys = 0usize;
    for key in &keys {
        let (old, new) = (before.owner(key), after.owner(key));
        if old != new {
            assert_eq!(new, Some(NodeId(11)), "a key moved to an old node");
            moved_keys += 1;
        }
    }
    let fraction = moved_keys as f64 / keys.len() as f64;
    assert!((0.06..=0.13).contains(&fraction), "moved {fraction}");
    assert!(moved
        .iter()
        .all(|r| r.to == Some(NodeId(11)) && r.from.is_some()));
    assert_moves_exact(&before, &after, &moved, &keys[..20_000]);

    // Removing it again is the exact inverse.
    let mut back = after.clone();
    let returned = back.remove_node(NodeId(11)).unwrap();
    assert_eq!(back, before);
    let inverted: Vec<TokenRange> = moved
        .iter()
        .map(|r| TokenRange {
            from: r.to,
            to: r.from,
            ..*r
        })
        .collect();
    assert_eq!(returned, inverted);
    assert_moves_exact(&after, &back, &returned, &keys[..20_000]);
}

#[test]
fn first_and_last_node_move_the_whole_circle() {
    let mut ring = Ring::new(4).unwrap();
    let moved = ring.add_node(NodeId(7)).unwrap();
    assert_eq!(moved.len(), 1);
    assert!(moved[0].is_full());
    assert_eq!((moved[0].from, moved[0].to), (None, Some(NodeId(7))));
    let moved = ring.remove_node(NodeId(7)).unwrap();
    assert_eq!(moved.len(), 1);
    assert!(moved[0].is_full());
    assert_eq!((moved[0].from, moved[0].to), (Some(NodeId(7)), None));
}

#[test]
fn token_range_contains_handles_wrap() {
    let r = |s, e| TokenRange {
        start: Token(s),
        end: Token(e),
        from: None,
        to: None,
    };
    assert!(r(10, 20).contains(Token(20)));
    assert!(!r(10, 20).contains(Token(10)));
    assert!(!r(10, 20).contains(Token(21)));
    assert!(r(20, 10).contains(Token(u64::MAX)));
    assert!(r(20, 10).contains(Token(0)));
    assert!(r(20, 10).contains(Token(10)));
    assert!(!r(20, 10).contains(Token(20)));
    assert!(!r(20, 10).contains(Token(15)));
    assert!(r(5, 5).contains(Token(5)));
}

#[test]
fn token_collisions_go_to_the_smaller_node() {
    let entries = |pairs: &[(u64, u64)]| {
        Entries::from_sorted(pairs.iter().map(|&(t, n)| (Token(t), NodeId(n))).collect())
    };
    let old = entries(&[(100, 2), (200, 3)]);
    let new = entries(&[(100, 1), (100, 2), (200, 3)]);
    assert_eq!(new.owner_index(Token(100)), Some(0));
    assert_eq!(new.owner_at(0), Some(NodeId(1)));
    assert_eq!(new.owner_index(Token(101)), Some(2));
    assert_eq!(new.owner_index(Token(201)), Some(0));
    // Node 1 takes the arc (200, 100] from node 2, including the wrap; node 2 keeps nothing.
    assert_eq!(
        moved_ranges(&old, &new),
        vec![TokenRange {
            start: Token(200),
            end: Token(100),
            from: Some(NodeId(2)),
            to: Some(NodeId(1)),
        }]
    );
    // A colliding larger node takes nothing.
    let newer = entries(&[(100, 2), (100, 5), (200, 3)]);
    assert!(moved_ranges(&old, &newer).is_empty());
}

#[test]
fn moved_ranges_coalesce_across_the_wrap() {
    let entries = |pairs: &[(u64, u64)]| {
        Entries::from_sorted(pairs.iter().map(|&(t, n)| (Token(t), NodeId(n))).collect())
    };
    let old = entries(&[(10, 1), (50, 2), (90, 1)]);
    let new = entries(&[(5, 3), (10, 1), (50, 2), (90, 1), (95, 3)]);
    // Node 3 takes (90, 95] and (95, 5] from node 1: one arc (90, 5] across 0.
    assert_eq!(
        moved_ranges(&old, &new),
        vec![TokenRange {
            start: Token(90),
            end: Token(5),
            from: Some(NodeId(1)),
            to: Some(NodeId(3)),
        }]
    );
}

#[test]
fn preference_list_is_distinct_and_starts_with_owner() {
    let ring = Ring::with_nodes(64, ids(1..=5)).unwrap();
    for key in sample_keys(2_000) {
        let owner = ring.owner(&key).unwrap();
        for n in [1, 3, 5, 8] {
            let list = ring.preference_list(&key, n);
            assert_eq!(list.len(), n.min(5));
            assert_eq!(list[0], owner);
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicates in {list:?}");
        }
        // A shorter list is a prefix of a longer one.
        assert_eq!(
            ring.preference_list(&key, 2),
            ring.preference_list(&key, 4)[..2]
        );
    }
    assert!(ring.preference_list(b"k", 0).is_empty());
}

#[test]
fn large_preference_list_uses_all_nodes() {
    let ring = Ring::with_nodes(8, ids(1..=40)).unwrap();
    let mut list = ring.preference_list(b"k", 100);
    assert_eq!(list.len(), 40);
    list.sort();
    assert_eq!(list, ids(1..=40));
}

#[test]
fn ring_is_independent_of_insertion_order() {
    let mut forward = Ring::new(32).unwrap();
    for id in 1..=6 {
        forward.add_node(NodeId(id)).unwrap();
    }
    let mut backward = Ring::new(32).unwrap();
    for id in (1..=6).rev() {
        backward.add_node(NodeId(id)).unwrap();
    }
    assert_eq!(forward, backward);
}

#[test]
fn serde_round_trips_through_the_description() {
    let ring = Ring::with_nodes(16, [NodeId(3), NodeId(1), NodeId(2)]).unwrap();
    let json = serde_json::to_string(&ring).unwrap();
    assert_eq!(json, r#"{"vnodes_per_node":16,"nodes":[1,2,3]}"#);
    let back: Ring = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ring);
    assert!(serde_json::from_str::<Ring>(r#"{"vnodes_per_node":0,"nodes":[]}"#).is_err());
    assert!(serde_json::from_str::<Ring>(r#"{"vnodes_per_node":4,"nodes":[1,1]}"#).is_err());
}

proptest! {
    #[test]
    fn prop_shared_spans_are_exactly_where_both_are_replicas(
        nodes in proptest::collection::btree_set(0u64..16, 1..8),
        vnodes in 1u32..24,
        n in 1usize..5,
        lo in any::<u64>(),
        width in prop_oneof![Just(u64::MAX), 0u64..1 << 20, any::<u64>()],
        probes in proptest::collection::vec(any::<u64>(), 100),
    ) {
        let ring = Ring::with_nodes(vnodes, nodes.iter().map(|&n| NodeId(n))).unwrap();
        let ids: Vec<NodeId> = nodes.iter().map(|&n| NodeId(n)).collect();
        let (a, b) = (ids[0], ids[ids.len() - 1]);
        let hi = lo.saturating_add(width);
        let spans = ring.shared_spans(Token(lo), Token(hi), n, a, b);
        // In order, inside the range, disjoint and not adjacent (joined).
        for w in spans.windows(2) {
            prop_assert!(w[0].1 .0.saturating_add(1) < w[1].0 .0);
        }
        for (s, e) in &spans {
            prop_assert!(lo <= s.0 && s.0 <= e.0 && e.0 <= hi);
        }
        // A token of the range is in a span exactly when both are among its replicas:
        // probes anywhere in it, at the range's ends, and at the spans' ends and just
        // past them.
        let mut tokens: Vec<u64> = probes.iter().map(|p| lo + p % (hi - lo).saturating_add(1).max(1)).collect();
        tokens.extend([lo, hi]);
        for (s, e) in &spans {
            tokens.extend([s.0, e.0, s.0.saturating_sub(1), e.0.saturating_add(1)]);
        }
        for t in tokens.into_iter().filter(|t| (lo..=hi).contains(t)) {
            let list = ring.preference_list_of_token(Token(t), n);
            let shared = list.contains(&a) && list.contains(&b);
            let inside = spans.iter().any(|(s, e)| s.0 <= t && t <= e.0);
            prop_assert_eq!(shared, inside, "token {:#x}", t);
        }
    }

    #[test]
    fn prop_membership_changes_move_exactly_the_changed_tokens(
        initial in proptest::collection::btree_set(0u64..64, 0..8),
        changes in proptest::collection::vec(0u64..64, 1..6),
        vnodes in 1u32..24,
        probes in proptest::collection::vec(any::<u64>(), 200),
    ) {
        let mut ring = Ring::with_nodes(vnodes, initial.iter().map(|&n| NodeId(n))).unwrap();
        let keys: Vec<Vec<u8>> = probes.iter().map(|p| p.to_le_bytes().to_vec()).collect();
        for id in changes {
            let node = NodeId(id);
            let before = ring.clone();
            let moved = if ring.contains(node) {
                let moved = ring.remove_node(node).unwrap();
                prop_assert!(moved.iter().all(|r| r.from == Some(node) && r.to != Some(node)));
                moved
            } else {
                let moved = ring.add_node(node).unwrap();
                prop_assert!(moved.iter().all(|r| r.to == Some(node) && r.from != Some(node)));
                moved
            };
            prop_assert_eq!(ring.validate(), Ok(()));
            assert_moves_exact(&before, &ring, &moved, &keys);
            // The moved ranges add up to exactly the ownership the node gained or lost.
            let size = |r: &TokenRange| -> u128 {
                if r.is_full() { 1 << 64 } else { u128::from(r.end.0.wrapping_sub(r.start.0)) }
            };
            let total: u128 = moved.iter().map(size).sum();
            let share = before.ownership().get(&node).copied()
                .or_else(|| ring.ownership().get(&node).copied())
                .unwrap_or(0);
            prop_assert_eq!(total, share);
        }
        let rebuilt = Ring::with_nodes(vnodes, ring.nodes().collect::<Vec<_>>()).unwrap();
        prop_assert_eq!(&ring, &rebuilt);
    }

    #[test]
    fn prop_preference_lists_are_distinct(
        nodes in proptest::collection::btree_set(any::<u64>(), 1..12),
        vnodes in 1u32..16,
        key in proptest::collection::vec(any::<u8>(), 0..16),
        n in 0usize..15,
    ) {
        let ring = Ring::with_nodes(vnodes, nodes.iter().map(|&n| NodeId(n))).unwrap();
        let list = ring.preference_list(&key, n);
        prop_assert_eq!(list.len(), n.min(nodes.len()));
        if n > 0 {
            prop_assert_eq!(Some(list[0]), ring.owner(&key));
        }
        let distinct: std::collections::BTreeSet<_> = list.iter().collect();
        prop_assert_eq!(distinct.len(), list.len());
        // The owner is the node of the first vnode at or after the key's token.
        let token = Token::of_key(&key);
        let expected = nodes
            .iter()
            .flat_map(|&n| (0..vnodes).map(move |i| (vnode_token(NodeId(n), i), NodeId(n))))
            .min_by_key(|&(t, n)| (t < token, t, n))
            .map(|(_, n)| n);
        prop_assert_eq!(ring.owner(&key), expected);
    }
}
