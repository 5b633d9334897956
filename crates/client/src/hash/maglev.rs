//! Maglev hashing (Eisenbud et al., NSDI 2016): each node has a permutation of a prime-sized
//! table (offset and skip from two hashes); nodes take turns claiming their next free slot
//! until the table is full. O(1) lookup, near-perfect balance, small but not minimal
//! disruption. The table is rebuilt on every membership change.

use super::{Distributor, NodeId, mix64};

/// Maglev's lookup table; see the module doc.
#[derive(Debug, Clone)]
pub struct Maglev {
    table_size: u64,
    nodes: Vec<NodeId>,
    table: Vec<NodeId>,
}

/// Default table size: a prime well above 100 × the nodes of a large cluster.
pub const MAGLEV_TABLE_SIZE: u64 = 65_537;

impl Maglev {
    /// An empty table of `table_size` slots, which must be prime.
    ///
    /// # Panics
    /// Panics if `table_size` is not prime.
    pub fn new(table_size: u64) -> Self {
        assert!(
            is_prime(table_size),
            "maglev table size must be prime: {table_size}"
        );
        Self {
            table_size,
            nodes: Vec::new(),
            table: Vec::new(),
        }
    }

    fn rebuild(&mut self) {
        self.table.clear();
        if self.nodes.is_empty() {
            return;
        }
        assert!(
            (self.nodes.len() as u64) < self.table_size,
            "more nodes than slots"
        );
        // Sorted so that the table depends on the set of nodes, not the order of joins.
        self.nodes.sort_unstable();
        let m = self.table_size;
        let permutations: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .map(|n| (mix64(*n ^ 0x1111) % m, mix64(*n ^ 0x2222) % (m - 1) + 1))
            .collect();
        let mut next = vec![0u64; self.nodes.len()];
        let mut slots: Vec<Option<NodeId>> = vec![None; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (i, (offset, skip)) in permutations.iter().enumerate() {
                let mut slot = (offset + next[i] * skip) % m;
                while slots[slot as usize].is_some() {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                slots[slot as usize] = Some(self.nodes[i]);
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        self.table = slots
            .into_iter()
            .map(|s| s.expect("every slot filled"))
            .collect();
    }

    /// The owner of `key` (lookup only).
    pub fn get(&self, key: u64) -> Option<NodeId> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(mix64(key) % self.table_size) as usize])
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

impl Distributor for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn add(&mut self, node: NodeId) {
        if !self.nodes.contains(&node) {
            self.nodes.push(node);
            self.rebuild();
        }
    }

    fn remove(&mut self, node: NodeId) {
        let before = self.nodes.len();
        self.nodes.retain(|n| *n != node);
        if self.nodes.len() != before {
            self.rebuild();
        }
    }

    fn assign(&mut self, key: u64) -> Option<NodeId> {
        self.get(key)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.clone()
    }
}
