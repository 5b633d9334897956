//! Jump consistent hash (Lamping & Veach 2014): maps a key to a bucket in `0..n` with no
//! memory and O(log n) time. Buckets are numbered, so nodes are kept in join order: adding a
//! node and removing the *last* node move the minimum; removing another node moves the last
//! node into its bucket, which also moves the last bucket's keys (about twice the minimum).

use super::{Distributor, NodeId, mix64};

/// Jump consistent hash over an ordered node list; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct Jump {
    nodes: Vec<NodeId>,
}

/// The bucket of `key` among `buckets` (the published algorithm).
pub fn jump_bucket(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "no buckets");
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as u32
}

impl Jump {
    /// No nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The owner of `key` (lookup only).
    pub fn get(&self, key: u64) -> Option<NodeId> {
        if self.nodes.is_empty() {
            return None;
        }
        Some(self.nodes[jump_bucket(mix64(key), self.nodes.len() as u32) as usize])
    }
}

impl Distributor for Jump {
    fn name(&self) -> &'static str {
        "jump"
    }

    fn add(&mut self, node: NodeId) {
        if !self.nodes.contains(&node) {
            self.nodes.push(node);
        }
    }

    fn remove(&mut self, node: NodeId) {
        if let Some(index) = self.nodes.iter().position(|n| *n == node) {
            self.nodes.swap_remove(index);
        }
    }

    fn assign(&mut self, key: u64) -> Option<NodeId> {
        self.get(key)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.clone()
    }
}
