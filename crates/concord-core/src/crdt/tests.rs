//! Lattice laws and convergence for every CRDT of the module.
//!
//! States are never generated directly: each test runs a random history of valid operations
//! at 3 or 4 replicas, with state transfers sent at random points and delivered later, in any
//! order, duplicated or stale (as rust-crdt's `prop_merge_*` tests build states from ops).

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::clock::Hlc;
use crate::NodeId;
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crdt::{
    Crdt, EnableWinsFlag, GCounter, LwwRegister, MvRegister, OrMap, OrSet, PnCounter,
};

/// A CRDT under test: its operations and what a reader observes.
trait Model: Crdt + Clone + Default + PartialEq + Debug + Serialize + DeserializeOwned {
    type Op: Clone + Debug + 'static;
    type Observed: PartialEq + Debug;

    fn op() -> BoxedStrategy<Self::Op>;
    /// Applies `op` at replica `node`, whose HLC is `hlc`.
    fn apply(&mut self, node: NodeId, hlc: &mut Hlc, op: &Self::Op);
    fn observed(&self) -> Self::Observed;
}

impl Model for GCounter {
    type Op = u8;
    type Observed = u64;
    fn op() -> BoxedStrategy<u8> {
        (0u8..5).boxed()
    }
    fn apply(&mut self, node: NodeId, _: &mut Hlc, by: &u8) {
        self.increment(node, u64::from(*by));
    }
    fn observed(&self) -> u64 {
        self.value()
    }
}

impl Model for PnCounter {
    type Op = i8;
    type Observed = i128;
    fn op() -> BoxedStrategy<i8> {
        (-5i8..5).boxed()
    }
    fn apply(&mut self, node: NodeId, _: &mut Hlc, delta: &i8) {
        self.add(node, i64::from(*delta));
    }
    fn observed(&self) -> i128 {
        self.value()
    }
}

impl Model for LwwRegister<u8> {
    /// (value, physical time in ms): small times make cross-node timestamp ties common.
    type Op = (u8, u64);
    type Observed = Option<u8>;
    fn op() -> BoxedStrategy<(u8, u64)> {
        (0u8..4, 0u64..3).boxed()
    }
    fn apply(&mut self, node: NodeId, hlc: &mut Hlc, &(value, physical_ms): &(u8, u64)) {
        let ts = hlc.now(physical_ms);
        self.set(value, ts, node);
    }
    fn observed(&self) -> Option<u8> {
        self.value()
    }
}

impl Model for MvRegister<u8> {
    type Op = u8;
    type Observed = Vec<u8>;
    fn op() -> BoxedStrategy<u8> {
        (0u8..4).boxed()
    }
    fn apply(&mut self, node: NodeId, _: &mut Hlc, value: &u8) {
        self.assign(*value, node);
    }
    fn observed(&self) -> Vec<u8> {
        self.value()
    }
}

#[derive(Debug, Clone)]
enum SetOp {
    Add(u8),
    Remove(u8),
}

impl Model for OrSet<u8> {
    type Op = SetOp;
    type Observed = std::collections::BTreeSet<u8>;
    fn op() -> BoxedStrategy<SetOp> {
        prop_oneof![
            (0u8..4).prop_map(SetOp::Add),
            (0u8..4).prop_map(SetOp::Remove)
        ]
        .boxed()
    }
    fn apply(&mut self, node: NodeId, _: &mut Hlc, op: &SetOp) {
        match *op {
            SetOp::Add(e) => {
                self.add(e, node);
            }
            SetOp::Remove(e) => {
                self.remove(&e);
            }
        }
    }
    fn observed(&self) -> Self::Observed {
        self.value()
    }
}

impl Model for EnableWinsFlag {
    type Op = bool;
    type Observed = bool;
    fn op() -> BoxedStrategy<bool> {
        any::<bool>().boxed()
    }
    fn apply(&mut self, node: NodeId, _: &mut Hlc, enable: &bool) {
        if *enable {
            self.enable(node);
        } else {
            self.disable();
        }
    }
    fn observed(&self) -> bool {
        self.value()
    }
}

#[derive(Debug, Clone)]
enum MapOp<Op> {
    Update(u8, Op),
    Remove(u8),
}

impl<V: Model> Model for OrMap<u8, V> {
    type Op = MapOp<V::Op>;
    type Observed = BTreeMap<u8, V::Observed>;
    fn op() -> BoxedStrategy<Self::Op> {
        prop_oneof![
            3 => (0u8..3, V::op()).prop_map(|(k, op)| MapOp::Update(k, op)),
            1 => (0u8..3).prop_map(MapOp::Remove),
        ]
        .boxed()
    }
    fn apply(&mut self, node: NodeId, hlc: &mut Hlc, op: &Self::Op) {
        match op {
            MapOp::Update(k, op) => self.update(*k, node, |v| v.apply(node, hlc, op)),
            MapOp::Remove(k) => {
                self.remove(k);
            }
        }
    }
    fn observed(&self) -> Self::Observed {
        self.keys()
            .filter_map(|k| Some((*k, self.get(k)?.observed())))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Action<Op> {
    /// Replica `replica` applies `op`.
    Apply { replica: usize, op: Op },
    /// Replica `from` sends a snapshot of its state (delivered by a later `Deliver`).
    Send { from: usize },
    /// Snapshot number `msg` (modulo the number sent) is merged at `to`: any snapshot, so
    /// stale ones and duplicates are delivered too.
    Deliver { msg: usize, to: usize },
}

fn actions<T: Model>(replicas: usize) -> impl Strategy<Value = Vec<Action<T::Op>>> {
    let action = prop_oneof![
        3 => (0..replicas, T::op()).prop_map(|(replica, op)| Action::Apply { replica, op }),
        1 => (0..replicas).prop_map(|from| Action::Send { from }),
        2 => (any::<usize>(), 0..replicas).prop_map(|(msg, to)| Action::Deliver { msg, to }),
    ];
    proptest::collection::vec(action, 0..40)
}

/// Runs the history; returns the replicas' states and every snapshot sent.
fn run<T: Model>(replicas: usize, actions: &[Action<T::Op>]) -> (Vec<T>, Vec<T>) {
    let mut states = vec![T::default(); replicas];
    let mut clocks = vec![Hlc::new(1_000); replicas];
    let mut sent = Vec::new();
    for action in actions {
        match action {
            Action::Apply { replica, op } => {
                states[*replica].apply(NodeId(*replica as u64), &mut clocks[*replica], op);
            }
            Action::Send { from } => sent.push(states[*from].clone()),
            Action::Deliver { msg, to } => {
                if !sent.is_empty() {
                    let snapshot = &sent[msg % sent.len()];
                    states[*to].merge(snapshot);
                }
            }
        }
    }
    (states, sent)
}

/// Asserts two states are equal as states and as observed values.
fn same<T: Model>(x: &T, y: &T) -> Result<(), TestCaseError> {
    prop_assert_eq!(x, y);
    prop_assert_eq!(x.observed(), y.observed());
    Ok(())
}

fn check_laws<T: Model>(actions: &[Action<T::Op>]) -> Result<(), TestCaseError> {
    let (states, sent) = run::<T>(3, actions);
    let (a, b, c) = (&states[0], &states[1], &states[2]);
    same(&a.merged(b), &b.merged(a))?;
    same(&a.merged(b).merged(c), &a.merged(&b.merged(c)))?;
    same(&a.merged(a), a)?;
    // Absorption: merging a state already included (e.g. an old snapshot) changes nothing.
    same(&a.merged(b).merged(b), &a.merged(b))?;
    if let Some(old) = sent.first() {
        same(&a.merged(old).merged(old), &a.merged(old))?;
        same(&a.merged(old), &old.merged(a))?;
    }
    Ok(())
}

fn check_convergence<T: Model>(actions: &[Action<T::Op>]) -> Result<(), TestCaseError> {
    let (mut states, sent) = run::<T>(4, actions);
    // Every state survives the wire unchanged (and passes decode-time validation).
    for state in states.iter().chain(&sent) {
        let json = serde_json::to_string(state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: T =
            serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, state);
    }
    // Final all-to-all exchange, in a different order at every replica.
    let snapshot = states.clone();
    for (i, state) in states.iter_mut().enumerate() {
        for j in 0..snapshot.len() {
            state.merge(&snapshot[(i + j) % snapshot.len()]);
        }
    }
    for state in &states[1..] {
        same(state, &states[0])?;
    }
    // Late, duplicated and stale deliveries after convergence change nothing.
    let mut late = states[0].clone();
    for old in sent.iter().rev() {
        late.merge(old);
    }
    same(&late, &states[0])?;
    Ok(())
}

macro_rules! crdt_properties {
    ($name:ident, $ty:ty) => {
        mod $name {
            use super::*;

            proptest! {
                #[test]
                fn merge_is_commutative_associative_idempotent(
                    actions in actions::<$ty>(3)
                ) {
                    check_laws::<$ty>(&actions)?;
                }

                #[test]
                fn replicas_converge(actions in actions::<$ty>(4)) {
                    check_convergence::<$ty>(&actions)?;
                }
            }
        }
    };
}

crdt_properties!(g_counter, GCounter);
crdt_properties!(pn_counter, PnCounter);
crdt_properties!(lww_register, LwwRegister<u8>);
crdt_properties!(mv_register, MvRegister<u8>);
crdt_properties!(or_set, OrSet<u8>);
crdt_properties!(enable_wins_flag, EnableWinsFlag);
crdt_properties!(or_map_of_counters, OrMap<u8, PnCounter>);
crdt_properties!(or_map_of_sets, OrMap<u8, OrSet<u8>>);
crdt_properties!(or_map_of_maps, OrMap<u8, OrMap<u8, PnCounter>>);
