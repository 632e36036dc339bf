//! Enable-wins flag.
//!
//! The flag is on while it holds at least one live dot. Enabling creates a fresh dot (and
//! supersedes the observed ones); disabling drops the dots this replica holds, which stay in
//! the causal context. An enable that a disable had not observed keeps its dot through the
//! merge, so the flag ends up enabled: enable wins over a concurrent disable, exactly as an
//! add wins over a concurrent remove in the [`OrSet`](crate::crdt::OrSet).
//!
//! # Guarantees
//!
//! 1. `merge` is a join (dotted-store join over the [`DotContext`]).
//! 2. A disable cancels exactly the observed enables; a concurrent enable wins.
//! 3. The state holds at most one dot per concurrent enable.

use std::collections::BTreeSet;

use crate::clock::Dot;
use crate::NodeId;
use serde::{Deserialize, Serialize};

use crate::crdt::context::{check_covered, join_dot_sets};
use crate::crdt::{Crdt, CrdtError, DotContext};

/// A boolean flag where enable wins over a concurrent disable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawFlag")]
pub struct EnableWinsFlag {
    // Invariant: every dot here is in `context`.
    #[serde(rename = "dots")]
    dots: BTreeSet<Dot>,
    #[serde(rename = "context")]
    context: DotContext,
}

#[derive(Deserialize)]
struct RawFlag {
    dots: BTreeSet<Dot>,
    context: DotContext,
}

impl TryFrom<RawFlag> for EnableWinsFlag {
    type Error = CrdtError;

    fn try_from(raw: RawFlag) -> Result<Self, CrdtError> {
        for &dot in &raw.dots {
            check_covered(dot, &raw.context)?;
        }
        Ok(Self {
            dots: raw.dots,
            context: raw.context,
        })
    }
}

impl EnableWinsFlag {
    /// A disabled flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enables the flag on behalf of `node`; returns the enable's dot.
    pub fn enable(&mut self, node: NodeId) -> Dot {
        let dot = self.context.next_dot(node);
        self.dots.clear();
        self.dots.insert(dot);
        dot
    }

    /// Disables the flag, cancelling the enables this replica has observed.
    pub fn disable(&mut self) {
        self.dots.clear();
    }

    /// Whether the flag is enabled.
    pub fn is_enabled(&self) -> bool {
        !self.dots.is_empty()
    }

    /// Every enable and disable this state has seen.
    pub fn context(&self) -> &DotContext {
        &self.context
    }
}

impl Crdt for EnableWinsFlag {
    /// Whether the flag is enabled.
    type Value = bool;

    fn merge(&mut self, other: &Self) {
        join_dot_sets(&mut self.dots, &self.context, &other.dots, &other.context);
        self.context.merge(&other.context);
    }

    fn value(&self) -> bool {
        self.is_enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn concurrent_enable_and_disable_is_enabled() {
        let mut a = EnableWinsFlag::new();
        a.enable(A);
        let mut b = a.clone();
        a.disable();
        b.enable(B);
        assert!(a.merged(&b).is_enabled());
        assert!(b.merged(&a).is_enabled());
    }

    #[test]
    fn disable_of_an_observed_enable_sticks() {
        let mut a = EnableWinsFlag::new();
        a.enable(A);
        let b = a.clone();
        a.disable();
        assert!(!a.merged(&b).is_enabled());
        assert!(!b.merged(&a).is_enabled());
        // Disable while another replica concurrently disables too: still off.
        let mut c = b.clone();
        c.disable();
        assert!(!a.merged(&c).is_enabled());
    }

    #[test]
    fn golden_json() {
        let mut a = EnableWinsFlag::new();
        a.enable(A);
        a.enable(A);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"dots":[{"node":1,"counter":2}],"context":{"vv":{"1":2},"cloud":[]}}"#
        );
        assert_eq!(serde_json::from_str::<EnableWinsFlag>(&json).unwrap(), a);
        let bad = r#"{"dots":[{"node":1,"counter":3}],"context":{"vv":{"1":2},"cloud":[]}}"#;
        assert!(serde_json::from_str::<EnableWinsFlag>(bad).is_err());
    }
}
