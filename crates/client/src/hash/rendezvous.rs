//! Rendezvous hashing (highest random weight, Thaler & Ravishankar 1996): a key belongs to the
//! node with the highest `hash(node, key)`. O(n) per lookup, minimal disruption, no tables.

use super::{Distributor, NodeId, mix64};

/// Rendezvous hashing; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct Rendezvous {
    /// (node, pre-mixed seed).
    nodes: Vec<(NodeId, u64)>,
}

impl Rendezvous {
    /// No nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The owner of `key` (lookup only).
    pub fn get(&self, key: u64) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for (node, seed) in &self.nodes {
            let score = mix64(key ^ seed);
            if best.is_none_or(|(top, _)| score > top) {
                best = Some((score, *node));
            }
        }
        best.map(|(_, node)| node)
    }
}

impl Distributor for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    fn add(&mut self, node: NodeId) {
        if !self.nodes.iter().any(|(n, _)| *n == node) {
            self.nodes.push((node, mix64(node ^ 0x5851_f42d_4c95_7f2d)));
        }
    }

    fn remove(&mut self, node: NodeId) {
        self.nodes.retain(|(n, _)| *n != node);
    }

    fn assign(&mut self, key: u64) -> Option<NodeId> {
        self.get(key)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|(n, _)| *n).collect()
    }
}
