//! Consistent hashing on a ring (Karger et al. 1997) with virtual nodes: each node owns
//! `vnodes` points; a key belongs to the first point clockwise from its hash.

use super::{Distributor, NodeId, mix64};

/// A hash ring; see the module doc.
#[derive(Debug, Clone)]
pub struct Ring {
    vnodes: u32,
    /// Points sorted by position.
    points: Vec<(u64, NodeId)>,
}

impl Ring {
    /// An empty ring with `vnodes` points per node.
    ///
    /// # Panics
    /// Panics if `vnodes` is 0.
    pub fn new(vnodes: u32) -> Self {
        assert!(vnodes > 0, "a node needs at least one point");
        Self {
            vnodes,
            points: Vec::new(),
        }
    }

    fn point(node: NodeId, replica: u32) -> u64 {
        mix64(mix64(node) ^ u64::from(replica).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// Index of the first point at or after `hash`, wrapping.
    pub(crate) fn successor(&self, hash: u64) -> usize {
        let index = self
            .points
            .partition_point(|(position, _)| *position < hash);
        if index == self.points.len() { 0 } else { index }
    }

    pub(crate) fn points(&self) -> &[(u64, NodeId)] {
        &self.points
    }

    /// The owner of `key` (lookup only).
    pub fn get(&self, key: u64) -> Option<NodeId> {
        if self.points.is_empty() {
            return None;
        }
        Some(self.points[self.successor(key)].1)
    }
}

impl Distributor for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn add(&mut self, node: NodeId) {
        if self.points.iter().any(|(_, n)| *n == node) {
            return;
        }
        self.points
            .extend((0..self.vnodes).map(|r| (Self::point(node, r), node)));
        self.points.sort_unstable();
    }

    fn remove(&mut self, node: NodeId) {
        self.points.retain(|(_, n)| *n != node);
    }

    fn assign(&mut self, key: u64) -> Option<NodeId> {
        self.get(key)
    }

    fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.points.iter().map(|(_, n)| *n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}
