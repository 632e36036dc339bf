//! The window of append messages in flight to one follower.
//!
//! # Guarantees
//!
//! 1. At most `cap` messages and (when `max_bytes > 0`) about `max_bytes` bytes are
//!    outstanding: `full()` turns true at the limit and the leader stops sending.
//! 2. Freeing is by acknowledged index, so duplicated or reordered acknowledgements free
//!    nothing twice.

use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inflights {
    /// `(last index of the message, bytes)`, in increasing index order.
    window: VecDeque<(u64, u64)>,
    bytes: u64,
    cap: usize,
    max_bytes: u64,
}

impl Inflights {
    pub(crate) fn new(cap: usize, max_bytes: u64) -> Self {
        Self {
            window: VecDeque::new(),
            bytes: 0,
            cap,
            max_bytes,
        }
    }

    pub(crate) fn add(&mut self, index: u64, bytes: u64) {
        assert!(!self.full(), "inflights add while full");
        debug_assert!(self.window.back().is_none_or(|&(i, _)| i < index));
        self.window.push_back((index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at most `to`.
    pub(crate) fn free_le(&mut self, to: u64) {
        while let Some(&(i, b)) = self.window.front() {
            if i > to {
                break;
            }
            self.bytes -= b;
            self.window.pop_front();
        }
    }

    /// Frees the oldest message: a heartbeat response proves the follower is reachable,
    /// so a window filled by lost appends must not stall replication forever.
    pub(crate) fn free_first_one(&mut self) {
        if let Some((_, b)) = self.window.pop_front() {
            self.bytes -= b;
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.window.len() >= self.cap || (self.max_bytes > 0 && self.bytes >= self.max_bytes)
    }

    pub(crate) fn count(&self) -> usize {
        self.window.len()
    }

    pub(crate) fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fills_and_frees() {
        let mut f = Inflights::new(3, 0);
        f.add(1, 10);
        f.add(2, 10);
        assert!(!f.full());
        f.add(5, 10);
        assert!(f.full());
        f.free_le(2);
        assert_eq!(f.count(), 1);
        f.free_le(2);
        assert_eq!(f.count(), 1);
        f.free_le(9);
        assert_eq!(f.count(), 0);
        let mut b = Inflights::new(100, 15);
        b.add(1, 10);
        assert!(!b.full());
        b.add(2, 10);
        assert!(b.full());
    }
}
