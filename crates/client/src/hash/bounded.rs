//! Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam 2018): a ring, but
//! a node already holding `ceil(c × (assigned + 1) / n)` keys is skipped and the key goes to the
//! next point clockwise. No node ever holds more than `c` times the mean, by construction.
//! Assignment is stateful: keys are counted against their node until [`Distributor::reset_load`].

use std::collections::HashMap;

use super::{Distributor, NodeId, Ring};

/// Bounded-load consistent hashing; see the module doc.
#[derive(Debug, Clone)]
pub struct BoundedLoad {
    ring: Ring,
    /// Load factor `c` (> 1): the bound on max ÷ mean.
    c: f64,
    loads: HashMap<NodeId, u64>,
    assigned: u64,
}

impl BoundedLoad {
    /// An empty ring with `vnodes` points per node and load factor `c`.
    ///
    /// # Panics
    /// Panics if `c` is not above 1.
    pub fn new(vnodes: u32, c: f64) -> Self {
        assert!(c > 1.0, "load factor must exceed 1");
        Self {
            ring: Ring::new(vnodes),
            c,
            loads: HashMap::new(),
            assigned: 0,
        }
    }

    /// The load factor.
    pub fn c(&self) -> f64 {
        self.c
    }

    /// Releases one key from `node` (when the key's work is done).
    pub fn release(&mut self, node: NodeId) {
        if let Some(load) = self.loads.get_mut(&node)
            && *load > 0
        {
            *load -= 1;
            self.assigned -= 1;
        }
    }
}

impl Distributor for BoundedLoad {
    fn name(&self) -> &'static str {
        "bounded-load"
    }

    fn add(&mut self, node: NodeId) {
        self.ring.add(node);
        self.loads.entry(node).or_insert(0);
    }

    fn remove(&mut self, node: NodeId) {
        self.ring.remove(node);
        if let Some(load) = self.loads.remove(&node) {
            self.assigned -= load;
        }
    }

    fn assign(&mut self, key: u64) -> Option<NodeId> {
        let points = self.ring.points();
        if points.is_empty() {
            return None;
        }
        let nodes = self.loads.len() as f64;
        let capacity = (self.c * (self.assigned + 1) as f64 / nodes).ceil() as u64;
        let start = self.ring.successor(key);
        for step in 0..points.len() {
            let node = points[(start + step) % points.len()].1;
            let load = self.loads.get_mut(&node).expect("ring nodes have loads");
            if *load < capacity {
                *load += 1;
                self.assigned += 1;
                assert!(*load as f64 <= self.c * self.assigned as f64 / nodes + 1.0);
                return Some(node);
            }
        }
        unreachable!("total capacity c·(m+1) exceeds the m assigned keys")
    }

    fn reset_load(&mut self) {
        for load in self.loads.values_mut() {
            *load = 0;
        }
        self.assigned = 0;
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.ring.nodes()
    }
}
